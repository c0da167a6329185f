"""FiftyOne dataset build (idempotent) and review corrections flowing back into the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Detection, Item, Job
from labelfleet.masks import decode_rle
from tests.test_review_support import W, make_job

runner = CliRunner()


def _rows(db_url: str) -> dict[int, Detection]:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        rows = {d.id: d for d in s.scalars(select(Detection))}
    engine.dispose()
    return rows


def _build(db_url: str, job: str, tmp_path: Path) -> Any:  # an fo.Dataset
    from orchestrator.review.dataset import sync_to_fiftyone

    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        ds = sync_to_fiftyone(s, s.scalar(select(Job).where(Job.name == job)), media_root=tmp_path)
    engine.dispose()
    return ds


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_build_is_idempotent_and_round_trips(tmp_path: Path, sqlite_url: str) -> None:
    job = make_job(sqlite_url, tmp_path / "imgs", images=3)
    ds = _build(sqlite_url, job, tmp_path)
    first = (len(ds), ds.count("detections.detections"), ds.count("ram_tags.classifications"))
    ds = _build(sqlite_url, job, tmp_path)
    assert (len(ds), ds.count("detections.detections"), ds.count("ram_tags.classifications")) == first
    rows = _rows(sqlite_url)
    assert first == (3, len(rows), 6)
    assert ds.info["labelfleet_job"] == job and ds.info["models"]["preset"] == "synthetic"
    assert "classes" in ds.info["config"]
    from orchestrator.review.convert import from_fo_detection

    worst = 0.0
    for sample in ds:
        assert Path(sample.filepath).is_file()
        for det in sample.detections.detections:
            back, row = from_fo_detection(det, (W, sample.metadata.height)), rows[det.lf_id]
            worst = max(worst, *(abs(back[k] - getattr(row, k)) for k in ("x0", "y0", "x1", "y1")))
            assert np.array_equal(decode_rle(back["mask"]), decode_rle(row.mask))
    assert worst < 1.0
    out = _cli("review", job, "--db", sqlite_url, "--sync", "--reviewer", "alice")
    assert "0 accepted, 0 rejected, 0 edited" in out  # nothing reviewed: nothing written
    assert all(r.review_status is None and r.reviewed_by is None for r in _rows(sqlite_url).values())


def test_reject_sync_then_export_leaves_them_out(tmp_path: Path, db_url: str) -> None:
    job = make_job(db_url, tmp_path / "imgs", images=3)
    ds = _build(db_url, job, tmp_path)
    samples = list(ds.sort_by("lf_item_id"))
    s0, s1, s2 = samples
    rejected = [d.lf_id for d in s0.detections.detections[:2]]
    edited = s0.detections.detections[2].lf_id
    # what the App does: tag labels / samples, edit a label (through the Python API)
    ds.select_labels(ids=[d.id for d in s0.detections.detections[:2]]).tag_labels("reject", "detections")
    s0.detections.detections[2].label = "person-edited"
    s0.detections.detections[2].bounding_box = [0.5, 0.5, 0.25, 0.25]
    s0.save()
    s1.tags.append("accept")
    s1.save()
    ds.select_labels(ids=[s1.detections.detections[0].id]).tag_labels("reject", "detections")
    untouched = {d.lf_id for d in s2.detections.detections}

    out = _cli("review", job, "--db", db_url, "--sync", "--reviewer", "alice")
    n1 = len(s1.detections.detections)
    assert f"{n1 - 1} accepted, 3 rejected, 1 edited" in out, out
    rows = _rows(db_url)
    assert all(rows[i].review_status == "rejected" and rows[i].reviewed_by == "alice" for i in rejected)
    assert rows[edited].review_status == "edited" and rows[edited].class_name == "person-edited"
    assert (rows[edited].x0, rows[edited].y0, rows[edited].x1, rows[edited].y1) == (32.0, 24.0, 48.0, 36.0)
    assert decode_rle(rows[edited].mask).shape == (48, 64) and rows[edited].reviewed_at is not None
    assert all(rows[i].review_status is None and rows[i].reviewed_at is None for i in untouched)
    out = _cli("review", job, "--db", db_url, "--sync", "--reviewer", "bob")  # idempotent
    assert "0 accepted, 0 rejected, 0 edited" in out
    assert not any(r.reviewed_by == "bob" for r in _rows(db_url).values())

    # rebuilding the dataset keeps the verdicts as label tags
    ds = _build(db_url, job, tmp_path)
    assert ds.count_label_tags("detections") == {"reject": 3, "accept": n1 - 1}

    import json

    _cli("export", job, "--db", db_url, "--format", "coco", "--out", str(tmp_path / "coco"))
    coco = json.loads((tmp_path / "coco" / "labels.json").read_text())
    assert len(coco["annotations"]) == len(rows) - 3
    _cli("export", job, "--db", db_url, "--format", "coco", "--out", str(tmp_path / "all"),
         "--include-rejected")
    assert len(json.loads((tmp_path / "all" / "labels.json").read_text())["annotations"]) == len(rows)


def test_keep_reviewed_on_relabel(tmp_path: Path, sqlite_url: str) -> None:
    from orchestrator.review.sync import keep_reviewed

    make_job(sqlite_url, tmp_path / "imgs", images=1)
    engine = make_engine(sqlite_url)
    with session_factory(engine)() as s:
        item_id = s.scalar(select(Item.id))
        dets = list(s.scalars(select(Detection).order_by(Detection.idx)))
        dets[1].review_status, dets[2].review_status = "rejected", "accepted"
        s.commit()
        kept_box = {"x0": dets[1].x0, "y0": dets[1].y0, "x1": dets[1].x1, "y1": dets[1].y1}
        new = [{**kept_box, "class_name": dets[1].class_name, "score": 0.9},  # duplicate of a rejected label
               {"x0": 1.0, "y0": 1.0, "x1": 9.0, "y1": 9.0, "class_name": "dog", "score": 0.8}]
        rows = keep_reviewed(s, item_id, new)
        assert [r["idx"] for r in rows] == [3] and rows[0]["class_name"] == "dog"
        assert {d.review_status for d in s.scalars(select(Detection))} == {"rejected", "accepted"}
        rows = keep_reviewed(s, item_id, new, overwrite_reviewed=True)
        assert [r["idx"] for r in rows] == [0, 1] and s.scalars(select(Detection)).all() == []
        s.rollback()
    engine.dispose()
