"""The whole label lifecycle on SQLite and PostgreSQL, checked by independent readers.

label (tiny-random: labels MEANINGLESS, random weights) -> review edits through the FiftyOne
Python API (accept, reject, sample reject, class change, box move, add, delete) -> sync ->
sync again (0 writes) -> relabel with the same models (nothing a human decided comes back,
no new label is marked reviewed) -> every export format -> pycocotools, supervision,
Ultralytics and FiftyOne load them with matching counts and masks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.labels import box_iou
from labelfleet.db.models import Detection, Item, Job, ReviewDecision
from labelfleet.masks import mask_record_full
from tests.imagegen import scene, write_scenes
from tests.test_review_consumers import view_of
from tests.test_review_support import unique_job

runner = CliRunner()
CLASSES = ["cat", "dog", "car"]


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _view(db_url: str, job: str, **kw: Any) -> dict[str, list[dict[str, Any]]]:
    """Current labels per item key (the view the exports read)."""
    return view_of(db_url, job, **kw)


def _decisions(db_url: str) -> list[tuple]:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        rows = [(d.id, d.prediction_id, d.action, d.reviewer, d.x0, d.y0, d.x1, d.y1, d.class_name, d.item_id)
                for d in s.scalars(select(ReviewDecision).order_by(ReviewDecision.id))]
    engine.dispose()
    return rows


def _dataset(db_url: str, job: str, media: Path) -> Any:
    from orchestrator.review.dataset import sync_to_fiftyone

    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        ds = sync_to_fiftyone(s, s.scalar(select(Job).where(Job.name == job)), media_root=media)
    engine.dispose()
    return ds


def _review_in_app(ds: Any) -> dict[str, Any]:
    """What a reviewer does in the App, through the FiftyOne Python API; returns what was done."""
    import fiftyone as fo

    s0, s1, s2 = list(ds.sort_by("lf_item_id"))[:3]
    d0 = s0.detections.detections
    done = {"accepted": d0[0].lf_id, "rejected": d0[1].lf_id, "reclassed": d0[2].lf_id, "moved": d0[3].lf_id}
    ds.select_labels(ids=[d0[0].id]).tag_labels("accept", "detections")
    ds.select_labels(ids=[d0[1].id]).tag_labels("reject", "detections")
    s0.reload()
    d0 = s0.detections.detections
    d0[2].label = "dog" if d0[2].label != "dog" else "car"
    done["new_class"] = d0[2].label
    x, y, w, h = d0[3].bounding_box
    d0[3].bounding_box = [min(x + 0.2, 1 - w), min(y + 0.2, 1 - h), w, h]
    s0.save()
    s1.tags.append("reject")
    s1.save()
    done["sample_rejected"] = len(s1.detections.detections)
    d2 = s2.detections.detections
    done["deleted"] = d2[0].lf_id
    d2.pop(0)
    d2.append(fo.Detection(label="cat", bounding_box=[0.05, 0.05, 0.1, 0.1]))
    s2.save()
    return done


def _exif_rotated(folder: Path) -> None:
    """One more image stored sideways (240 x 320 pixels) with EXIF orientation 6: upright it is 320 x 240."""
    img = scene(77).rotate(90, expand=True)  # what a phone stores; readers rotate it back
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(folder / "img_rotated.jpg", exif=exif)


@pytest.mark.slow
def test_label_review_sync_relabel_export_cycle(tmp_path: Path, db_url: str, lf_env: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    write_scenes(folder, 4)
    _exif_rotated(folder)
    job = unique_job("cycle")
    label = ["label", str(folder), "--db", db_url, "--models", "tiny-random", "--classes", ",".join(CLASSES),
             "--job", job]
    _cli(*label)
    ds = _dataset(db_url, job, tmp_path)
    done = _review_in_app(ds)

    out = _cli("review", job, "--db", db_url, "--sync", "--reviewer", "alice")
    rej = 1 + done["sample_rejected"]
    assert f"1 accepted, {rej} rejected, 2 edited, 1 added, 1 deleted ({4 + rej + 1} decisions written" in out
    assert "2 new masks" in out  # the moved box and the added one were segmented by the job's SAM
    first = _decisions(db_url)
    assert len(first) == 5 + rej and {d[3] for d in first} == {"alice"}
    by_pred = {d[1]: d for d in first}
    assert by_pred[done["accepted"]][2] == "accept" and by_pred[done["rejected"]][2] == "reject"
    assert by_pred[done["reclassed"]][2] == "edit" and by_pred[done["reclassed"]][8] == done["new_class"]
    assert by_pred[done["moved"]][2] == "edit" and by_pred[done["deleted"]][2] == "delete"
    assert by_pred[None][2] == "add"

    out = _cli("review", job, "--db", db_url, "--sync", "--reviewer", "bob")
    assert "(0 decisions written" in out
    ds = _dataset(db_url, job, tmp_path)  # what `review` does on start; then the App closes unchanged
    assert "(0 decisions written" in _cli("review", job, "--db", db_url, "--sync", "--reviewer", "bob")
    assert _decisions(db_url) == first
    before = _view(db_url, job)

    _cli(*label, "--relabel")
    ds = _dataset(db_url, job, tmp_path)
    assert "(0 decisions written" in _cli("review", job, "--db", db_url, "--sync", "--reviewer", "carol")
    assert _decisions(db_url) == first  # decisions untouched by the relabel and by the stale sample tag
    _assert_no_resurrection(db_url, job, first, before)
    _check_exports(db_url, job, tmp_path, monkeypatch)


def _assert_no_resurrection(db_url: str, job: str, decisions: list[tuple], before: dict) -> None:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        preds = {d.id: d for d in s.scalars(select(Detection))}
        runs = s.execute(select(Detection.run_id, func.count()).group_by(Detection.run_id)).all()
        keys = dict(s.execute(select(Item.id, Item.key)).all())
    engine.dispose()
    assert len(runs) == 2  # the relabel added a run; predictions of run 1 are kept
    regions: dict[str, list[tuple]] = {}
    for d in decisions:  # every region a human decided on: the decision's box and its prediction's box
        regions.setdefault(keys[d[9]], []).append((d[4], d[5], d[6], d[7]))
        if d[1] is not None:
            p = preds[d[1]]
            regions[keys[d[9]]].append((p.x0, p.y0, p.x1, p.y1))
    latest = max(r for r, _ in runs)
    after = _view(db_url, job, include_rejected=True)
    for key, labels in after.items():
        for lab in labels:
            if lab["review_status"] is None:
                assert lab["run_id"] == latest
                box = (lab["x0"], lab["y0"], lab["x1"], lab["y1"])
                assert all(box_iou(r, box) < 0.5 for r in regions.get(key, [])), lab
        shown = sorted((lab["review_status"] or "") for lab in labels if lab["decision_id"] is not None)
        want = sorted((lab["review_status"] or "") for lab in before[key] if lab["decision_id"] is not None)
        assert [s for s in shown if s != "rejected"] == want, key
    statuses = [lab["review_status"] for v in after.values() for lab in v]
    assert statuses.count("accepted") == 1 and statuses.count("edited") == 2 and statuses.count("added") == 1
    assert statuses.count("rejected") == sum(d[2] == "reject" for d in decisions)
    assert all(lab["review_status"] is None or lab["decision_id"] is not None for v in after.values() for lab in v)


def _check_exports(db_url: str, job: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_review_consumers import (
        check_coco,
        check_fiftyone,
        check_masks,
        check_yolo,
        offline_ultralytics,
    )

    offline_ultralytics(tmp, monkeypatch)
    view = _view(db_url, job)
    n = sum(len(v) for v in view.values())
    for fmt, extra in (("coco", []), ("coco", ["--coco-segmentation", "polygon"]), ("yolo", ["--split", "0.5"]),
                       ("yolo-seg", []), ("masks", []), ("fiftyone", [])):
        out_dir = tmp / f"export-{fmt}-{len(extra)}"
        out = _cli("export", job, "--db", db_url, "--format", fmt, "--out", str(out_dir), *extra)
        assert f"exported {n} labels of {len(view)} images" in out
    classes = CLASSES  # fixed classes, the user's order
    check_coco(tmp / "export-coco-0" / "labels.json", view, classes, exact=True, random_weights=True)
    check_coco(tmp / "export-coco-2" / "labels.json", view, classes, exact=False, random_weights=True)
    check_yolo(tmp / "export-yolo-2", view, classes, seg=False)
    check_yolo(tmp / "export-yolo-seg-0", view, classes, seg=True)
    check_masks(tmp / "export-masks-0", view, classes)
    check_fiftyone(tmp / "export-fiftyone-0", view)
    rotated = json.loads((tmp / "export-coco-0" / "labels.json").read_text())
    img = next(i for i in rotated["images"] if i["lf_key"] == "img_rotated.jpg")
    with Image.open(tmp / "export-coco-0" / "data" / img["file_name"]) as im:
        assert im.size == (img["width"], img["height"]) == (320, 240)  # upright without EXIF handling
        assert im.getexif().get(0x0112, 1) == 1
    # the same class ids whatever the filters
    for extra in (["--min-score", "0.99"], ["--reviewed-only"]):
        out_dir = tmp / f"filtered-{extra[0]}"
        _cli("export", job, "--db", db_url, "--format", "coco", "--out", str(out_dir), *extra)
        doc = json.loads((out_dir / "labels.json").read_text())
        assert [(c["id"], c["name"]) for c in doc["categories"]] == [(i + 1, c) for i, c in enumerate(classes)]
        if extra[0] == "--reviewed-only":
            assert len(doc["annotations"]) == 4
            assert {a["review_status"] for a in doc["annotations"]} == {"accepted", "edited", "added"}
    assert np.asarray(mask_record_full(next(lab["mask"] for v in view.values() for lab in v if lab["mask"]))).any()
