"""Exports (COCO re-import, YOLOv5 and masks files), 1,000-label timings and the preview sheet."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Detection
from tests.test_review_support import H, W, make_job

runner = CliRunner()


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _db_rows(db_url: str) -> list[Detection]:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        rows = list(s.scalars(select(Detection)))
    engine.dispose()
    return rows


def test_coco_export_reimports_with_same_counts_and_boxes(tmp_path: Path, sqlite_url: str) -> None:
    from pycocotools.coco import COCO

    job = make_job(sqlite_url, tmp_path / "imgs", images=3)
    _cli("export", job, "--db", sqlite_url, "--format", "coco", "--out", str(tmp_path / "coco"))
    coco = COCO(str(tmp_path / "coco" / "labels.json"))
    rows = _db_rows(sqlite_url)
    assert len(coco.getImgIds()) == 3 and len(coco.getAnnIds()) == len(rows)
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {r.class_name for r in rows}
    got = sorted(tuple(round(v, 3) for v in a["bbox"]) for a in coco.loadAnns(coco.getAnnIds()))
    want = sorted(tuple(round(v, 3) for v in (r.x0, r.y0, r.x1 - r.x0, r.y1 - r.y0)) for r in rows)
    pairs = [(g, w) for gb, wb in zip(got, want, strict=True) for g, w in zip(gb, wb, strict=True)]
    assert max(abs(g - w) for g, w in pairs) < 1.0
    assert sum(1 for a in coco.loadAnns(coco.getAnnIds()) if a.get("segmentation")) > 0

    import fiftyone as fo

    ds = fo.Dataset.from_dir(dataset_dir=str(tmp_path / "coco"), dataset_type=fo.types.COCODetectionDataset,
                             label_types="segmentations", label_field="gt", progress=False)
    assert len(ds) == 3 and ds.count("gt.detections") == len(rows)
    assert all(d.mask is not None for s in ds for d in s.gt.detections)
    ds.delete()


def test_yolo_and_masks_exports_produce_expected_files(tmp_path: Path, sqlite_url: str) -> None:
    job = make_job(sqlite_url, tmp_path / "imgs", images=2)
    rows = _db_rows(sqlite_url)
    _cli("export", job, "--db", sqlite_url, "--format", "yolo", "--out", str(tmp_path / "yolo"),
         "--min-score", "0.3")
    kept = [r for r in rows if r.score >= 0.3]
    text = (tmp_path / "yolo" / "dataset.yaml").read_text()
    assert "names:" in text and "train: images/train" in text and "val: images/train" in text
    assert len(list((tmp_path / "yolo" / "images" / "train").iterdir())) == 2
    lines = [ln.split() for f in (tmp_path / "yolo" / "labels" / "train").glob("*.txt")
             for ln in f.read_text().splitlines()]
    assert len(lines) == len(kept) and all(len(ln) == 5 and 0 <= float(ln[1]) <= 1 for ln in lines)

    _cli("export", job, "--db", sqlite_url, "--format", "masks", "--out", str(tmp_path / "masks"))
    classes = json.loads((tmp_path / "masks" / "classes.json").read_text())
    assert classes["0"] == "background"
    assert set(classes.values()) == {"background", *{r.class_name for r in rows}}
    assert len(list((tmp_path / "masks" / "instances").glob("*.png"))) == len(rows)
    sem = sorted((tmp_path / "masks" / "semantic").glob("*.png"))
    assert len(sem) == 2
    arr = np.asarray(Image.open(sem[0]))
    assert arr.shape == (H, W) and arr.dtype == np.uint8 and set(np.unique(arr)) <= {int(k) for k in classes}


def test_export_timings_for_1000_labels(tmp_path: Path, sqlite_url: str) -> None:
    job = make_job(sqlite_url, tmp_path / "imgs", images=100, dets_per_image=10, noisy_masks=False)
    timings = {}
    for fmt in ("coco", "yolo", "yolo-seg", "masks", "fiftyone"):
        t0 = time.perf_counter()
        out = _cli("export", job, "--db", sqlite_url, "--format", fmt, "--out", str(tmp_path / fmt))
        timings[fmt] = time.perf_counter() - t0
        assert "exported 1000 labels of 100 images" in out
    print("export timings, 1000 labels / 100 images (s): "
          + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    assert max(timings.values()) < 60


def test_preview_has_random_weights_banner(tmp_path: Path, sqlite_url: str) -> None:
    job = make_job(sqlite_url, tmp_path / "imgs", images=4, random_weights=True)
    out = _cli("preview", job, "--db", sqlite_url, "--out", str(tmp_path / "grid.png"), "--thumb", "64")
    assert "meaningless" in out.lower()
    img = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert img.shape == (2 * 64 + 28, 2 * 64, 3)
    assert (img[2, :, 0] > 150).mean() > 0.5  # the red banner row
