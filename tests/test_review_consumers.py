"""Exports read back by independent consumers: pycocotools, supervision, Ultralytics, FiftyOne, Pillow.

The ``check_*`` helpers are also used by the full-cycle test (tests/test_review_cycle.py).
Mask checks compare what the consumer decodes with the stored mask record decoded to the
full frame, limited to the label's box: every decoded pixel must be a stored pixel inside
the box (rounded to whole pixels), and every stored pixel well inside the box must be there.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.labels import current_labels
from labelfleet.db.models import Item, Job
from labelfleet.masks import mask_record_full
from tests.test_review_support import CLASSES, H, W, make_job

runner = CliRunner()


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def offline_ultralytics(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings for the Ultralytics subprocess: offline mode and its own config dir."""
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp / "ultralytics-config"))


#: Runs in a fresh interpreter: Ultralytics patches PIL.Image.open process-wide on import. Sockets are
#: disabled, so any download attempt (fonts, assets, pip installs) fails the check instead of going out.
_ULTRALYTICS = """
import json, socket, sys
def _no_network(*a, **k):
    raise OSError("network disabled in this test")
socket.socket.connect = _no_network
socket.create_connection = _no_network
import ultralytics.data.utils as du
from ultralytics.utils import SETTINGS
SETTINGS.update({"sync": False})
du.check_font = lambda *a, **k: None  # only used for plot labels
from ultralytics.data import YOLODataset
from ultralytics.data.utils import check_det_dataset
yaml, seg = sys.argv[1], sys.argv[2] == "1"
data = check_det_dataset(yaml, autodownload=False)
parts = {}
for part in sorted({data["train"], data["val"]}):
    ds = YOLODataset(img_path=part, data=data, task="segment" if seg else "detect", augment=False)
    parts[part] = {"labels": sum(len(lb["cls"]) for lb in ds.labels),
                   "segments_ok": not seg or all(len(lb["segments"]) == len(lb["cls"]) for lb in ds.labels)}
print(json.dumps({"nc": data["nc"], "names": {str(k): v for k, v in data["names"].items()}, "parts": parts}))
"""


def ultralytics_check(yaml: Path, *, seg: bool) -> dict[str, Any]:
    """Ultralytics' ``check_det_dataset`` + ``YOLODataset`` on an export, offline, in a subprocess."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _ULTRALYTICS, str(yaml), "1" if seg else "0"], capture_output=True,
                         text=True, env={**os.environ, "YOLO_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def view_of(db_url: str, job: str, **kw: Any) -> dict[str, list[dict[str, Any]]]:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        items = s.execute(select(Item.id, Item.key).join(Job).where(Job.name == job)).all()
        labels = current_labels(s, [i for i, _ in items], **kw)
    engine.dispose()
    return {key: labels[i] for i, key in items}


def _by_key(view: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {lab["key"]: lab for labels in view.values() for lab in labels}


def _check_mask(decoded: np.ndarray, lab: dict[str, Any]) -> None:
    """``decoded`` (H, W) from a consumer vs the stored record of ``lab`` (see module docs)."""
    stored = mask_record_full(lab["mask"])
    assert decoded.shape == stored.shape
    ys, xs = np.nonzero(decoded)
    assert (decoded & ~stored).sum() == 0, lab["key"]
    if xs.size:
        # the box rounded to whole pixels, at least one pixel wide (sub-pixel boxes keep one pixel)
        assert xs.min() >= np.floor(lab["x0"] + 0.5) - 1 and xs.max() + 1 <= max(np.ceil(lab["x1"] - 0.5) + 1,
                                                                                   xs.min() + 1), lab["key"]
        assert ys.min() >= np.floor(lab["y0"] + 0.5) - 1 and ys.max() + 1 <= max(np.ceil(lab["y1"] - 0.5) + 1,
                                                                                   ys.min() + 1), lab["key"]
        assert xs.max() - xs.min() + 1 <= max(lab["x1"] - lab["x0"] + 1, 1) + 0.5, lab["key"]
    inner = np.zeros_like(stored)
    inner[int(np.ceil(lab["y0"] + 0.5)):int(np.floor(lab["y1"] - 0.5)),
          int(np.ceil(lab["x0"] + 0.5)):int(np.floor(lab["x1"] - 0.5))] = True
    assert (stored & inner & ~decoded).sum() == 0, lab["key"]


def check_coco(path: Path, view: dict[str, list[dict[str, Any]]], classes: list[str], *, exact: bool,
               random_weights: bool) -> None:
    """pycocotools and supervision load the COCO export; counts, classes, statuses and masks match."""
    import supervision as sv
    from pycocotools.coco import COCO

    coco = COCO(str(path))
    labels = _by_key(view)
    assert len(coco.getImgIds()) == len(view) and len(coco.getAnnIds()) == len(labels)
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == \
        [(i + 1, c) for i, c in enumerate(classes)]
    assert coco.dataset["info"]["random_weights"] is random_weights
    assert ("meaningless" in coco.dataset["info"]["description"]) is random_weights
    for ann in coco.loadAnns(coco.getAnnIds()):
        lab = labels[ann["lf_label"]]
        assert classes[ann["category_id"] - 1] == lab["class_name"]
        assert ann["review_status"] == (lab["review_status"] or "unreviewed") == ann["attributes"]["review_status"]
        assert np.allclose(ann["bbox"], [lab["x0"], lab["y0"], lab["x1"] - lab["x0"], lab["y1"] - lab["y0"]])
        if not lab["mask"]:
            assert ann["segmentation"] == []
            continue
        decoded = coco.annToMask(ann).astype(bool)
        if exact:
            assert int(ann["area"]) == int(decoded.sum())
            _check_mask(decoded, lab)
        else:  # polygons: inside the box, close to the mask
            for poly in ann["segmentation"] if isinstance(ann["segmentation"], list) else []:
                xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
                assert xs.min() >= lab["x0"] and xs.max() <= lab["x1"] and ys.min() >= lab["y0"]
                assert ys.max() <= lab["y1"]
            assert 0 < ann["area"] <= (lab["x1"] - lab["x0"] + 1) * (lab["y1"] - lab["y0"] + 1)
    ds = sv.DetectionDataset.from_coco(images_directory_path=str(path.parent / "data"),
                                       annotations_path=str(path), force_masks=True)
    assert len(ds) == len(view) and sum(len(d) for _, _, d in ds) == len(labels)
    assert ds.classes == classes
    if exact:  # supervision decodes the same RLE masks
        names = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
        for img_path, _img, dets in ds:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[names[Path(img_path).name]]))
            want = sorted(int(coco.annToMask(a).sum()) if a["segmentation"] else 0 for a in anns)
            assert sorted(int(m.sum()) for m in (dets.mask if dets.mask is not None else [])) == want


def check_yolo(root: Path, view: dict[str, list[dict[str, Any]]], classes: list[str], *, seg: bool) -> None:
    """Ultralytics' dataset checker and YOLODataset, and supervision, load the YOLO export."""
    import supervision as sv

    text = (root / "dataset.yaml").read_text()
    ultra = ultralytics_check(root / "dataset.yaml", seg=seg)
    assert ultra["nc"] == len(classes) and ultra["names"] == {str(i): c for i, c in enumerate(classes)}
    files: Counter[int] = Counter()
    for part, got in ultra["parts"].items():
        lines = {Path(f).stem: Path(f).read_text().splitlines()
                 for f in Path(part.replace("images", "labels")).glob("*.txt")}
        files.update(int(ln.split()[0]) for v in lines.values() for ln in v)
        # Ultralytics drops exact duplicate lines (two labels with the same class and polygon)
        assert got["labels"] == sum(len(set(v)) for v in lines.values()) and got["segments_ok"]
        sv_ds = sv.DetectionDataset.from_yolo(images_directory_path=part,
                                              annotations_directory_path=part.replace("images", "labels"),
                                              data_yaml_path=str(root / "dataset.yaml"), force_masks=seg)
        assert sum(len(d) for _, _, d in sv_ds) == sum(len(v) for v in lines.values())
        assert sv_ds.classes == classes
    assert files == Counter(classes.index(lab["class_name"]) for lab in _by_key(view).values())
    assert f"labelfleet_random_weights: {'true' if '# WARNING: random weights' in text else 'false'}" in text


def check_masks(root: Path, view: dict[str, list[dict[str, Any]]], classes: list[str]) -> None:
    """Pillow reads the semantic and instance PNGs the manifest lists; values and masks match."""
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["class_values"] == {"0": "background", **{str(i + 1): c for i, c in enumerate(classes)}}
    labels = list(_by_key(view).values())
    assert sum(len(e["instances"]) for e in manifest["images"]) == len(labels)
    assert {e["image"] for e in manifest["images"]} == set(view)
    for entry in manifest["images"]:
        sem = np.asarray(Image.open(root / entry["semantic"]))
        assert sem.dtype == np.dtype(manifest["semantic_dtype"]) and sem.shape == (entry["height"], entry["width"])
        assert set(np.unique(sem).tolist()) <= set(range(len(classes) + 1))
        shown = {(inst["class"], tuple(inst["bbox_xyxy"])) for inst in entry["instances"]}
        for lab in view[entry["image"]]:
            assert (lab["class_name"], (lab["x0"], lab["y0"], lab["x1"], lab["y1"])) in shown
        for inst, lab in zip(entry["instances"], view[entry["image"]], strict=True):
            assert inst["review_status"] == (lab["review_status"] or "unreviewed")
            if lab["mask"]:
                _check_mask(np.asarray(Image.open(root / inst["file"])) > 0, lab)
                assert (sem[np.asarray(Image.open(root / inst["file"])) > 0] > 0).all()


def check_fiftyone(root: Path, view: dict[str, list[dict[str, Any]]]) -> None:
    """FiftyOne imports the FiftyOneDataset export with every label and its review status."""
    import fiftyone as fo

    ds = fo.Dataset.from_dir(dataset_dir=str(root), dataset_type=fo.types.FiftyOneDataset)
    try:
        assert len(ds) == len(view) and ds.count("detections.detections") == len(_by_key(view))
        got = Counter(ds.values("detections.detections.review_status", unwind=True))
        assert got == Counter((lab["review_status"] or "unreviewed") for lab in _by_key(view).values())
    finally:
        ds.delete()


@pytest.mark.parametrize("shape", ["full-frame", "box-cropped"])
def test_exports_read_both_mask_record_shapes(tmp_path: Path, sqlite_url: str, shape: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    offline_ultralytics(tmp_path, monkeypatch)
    job = make_job(sqlite_url, tmp_path / "imgs", images=3, cropped=shape == "box-cropped", noisy_masks=False)
    view = view_of(sqlite_url, job)
    for fmt, extra in (("coco", []), ("coco", ["--coco-segmentation", "polygon"]), ("yolo-seg", []),
                       ("masks", [])):
        _cli("export", job, "--db", sqlite_url, "--format", fmt, "--out", str(tmp_path / f"{fmt}{len(extra)}"),
             *extra)
    check_coco(tmp_path / "coco0" / "labels.json", view, list(CLASSES), exact=True, random_weights=False)
    check_coco(tmp_path / "coco2" / "labels.json", view, list(CLASSES), exact=False, random_weights=False)
    check_yolo(tmp_path / "yolo-seg0", view, list(CLASSES), seg=True)
    check_masks(tmp_path / "masks0", view, list(CLASSES))


def test_masks_export_is_uint16_beyond_255_classes(tmp_path: Path, sqlite_url: str) -> None:
    many = [f"thing{i:03d}" for i in range(300)]
    job = make_job(sqlite_url, tmp_path / "imgs", images=2, classes=many, dets_per_image=4)
    _cli("export", job, "--db", sqlite_url, "--format", "masks", "--out", str(tmp_path / "m"))
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["semantic_dtype"] == "uint16"
    check_masks(tmp_path / "m", view_of(sqlite_url, job), many)
    values = {int(v) for e in manifest["images"]
              for v in np.unique(np.asarray(Image.open(tmp_path / "m" / e["semantic"])))}
    assert max(values) > 255  # classes beyond uint8 kept their own value


def test_class_ids_are_stable_per_job_whatever_the_filters(tmp_path: Path, sqlite_url: str) -> None:
    job = make_job(sqlite_url, tmp_path / "imgs", images=3, classes=None)  # automatic mode: sorted
    cats = []
    for extra in ([], ["--min-score", "0.8"], ["--reviewed-only"]):
        out = tmp_path / f"c{len(extra)}"
        _cli("export", job, "--db", sqlite_url, "--format", "coco", "--out", str(out), *extra)
        cats.append(json.loads((out / "labels.json").read_text())["categories"])
    assert cats[0] == cats[1] == cats[2] and [c["name"] for c in cats[0]] == sorted(CLASSES)
    _cli("export", job, "--db", sqlite_url, "--format", "yolo", "--out", str(tmp_path / "y"), "--min-score", "0.8")
    assert "names:\n  0: \"cat\"\n  1: \"dog\"\n  2: \"person\"" in (tmp_path / "y" / "dataset.yaml").read_text()


def test_every_export_says_random_weights(tmp_path: Path, sqlite_url: str) -> None:
    job = make_job(sqlite_url, tmp_path / "imgs", images=2, random_weights=True)
    for fmt in ("coco", "yolo", "masks"):
        _cli("export", job, "--db", sqlite_url, "--format", fmt, "--out", str(tmp_path / fmt))
    info = json.loads((tmp_path / "coco" / "labels.json").read_text())["info"]
    assert info["random_weights"] is True and "meaningless" in info["warning"]
    text = (tmp_path / "yolo" / "dataset.yaml").read_text()
    assert "labelfleet_random_weights: true" in text and "# WARNING: random weights" in text
    assert json.loads((tmp_path / "masks" / "manifest.json").read_text())["random_weights"] is True


def test_review_and_export_of_an_s3_job_use_its_endpoint(tmp_path: Path, sqlite_url: str, s3_endpoint: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    from orchestrator.review.dataset import sync_to_fiftyone

    bucket = f"lf-{os.getpid()}-{tmp_path.name[-6:].lower().replace('_', '-')}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    job = make_job(sqlite_url, tmp_path / "imgs", images=2)
    for p in sorted((tmp_path / "imgs").iterdir()):
        s3.upload_file(str(p), bucket, f"photos/{p.name}")
    engine = make_engine(sqlite_url)
    with session_factory(engine)() as s:  # the same job, now reading from MinIO-like S3 with its endpoint
        j = s.scalar(select(Job).where(Job.name == job))
        j.source, j.config = f"s3://{bucket}/photos", {**j.config, "s3_endpoint_url": s3_endpoint}
        s.commit()
        monkeypatch.delenv("LABELFLEET_S3_ENDPOINT_URL", raising=False)
        ds = sync_to_fiftyone(s, j, media_root=tmp_path / "media")
        assert len(ds) == 2 and all(Path(p).is_file() and "media" in p for p in ds.values("filepath"))
    engine.dispose()
    _cli("export", job, "--db", sqlite_url, "--format", "coco", "--out", str(tmp_path / "coco"),
         "--media-dir", str(tmp_path / "media2"))
    doc = json.loads((tmp_path / "coco" / "labels.json").read_text())
    assert len(doc["images"]) == 2 and all((tmp_path / "coco" / "data" / i["file_name"]).is_file()
                                           for i in doc["images"])
    assert Image.open(tmp_path / "coco" / "data" / doc["images"][0]["file_name"]).size == (W, H)
    _cli("preview", job, "--db", sqlite_url, "--out", str(tmp_path / "p.png"), "--thumb", "32")
    assert (tmp_path / "p.png").is_file()
