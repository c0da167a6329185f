"""FiftyOne dataset build (idempotent) and review corrections flowing back into the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.labels import current_labels
from labelfleet.db.models import Detection, Item, Job, ReviewDecision
from labelfleet.masks import mask_record_full
from tests.test_review_support import W, det_row, make_job

runner = CliRunner()


def _rows(db_url: str) -> dict[int, Detection]:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        rows = {d.id: d for d in s.scalars(select(Detection))}
    engine.dispose()
    return rows


def _decisions(db_url: str) -> list[ReviewDecision]:
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        rows = list(s.scalars(select(ReviewDecision).order_by(ReviewDecision.id)))
    engine.dispose()
    return rows


def _current(db_url: str) -> dict[int, dict[str, Any]]:
    """The current view (rejected included), keyed by prediction id (added labels: -decision id)."""
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        ids = list(s.scalars(select(Item.id)))
        view = current_labels(s, ids, include_rejected=True)
    engine.dispose()
    return {lab["prediction_id"] if lab["prediction_id"] is not None else -lab["decision_id"]: lab
            for v in view.values() for lab in v}


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
            assert np.array_equal(mask_record_full(back["mask"]), mask_record_full(row.mask))
    assert worst < 1.0
    out = _cli("review", job, "--db", sqlite_url, "--sync", "--reviewer", "alice")
    assert "(0 decisions written" in out  # nothing reviewed: nothing written
    assert _decisions(sqlite_url) == []
    schema = ds.get_field_schema(flat=True)
    assert {"detections.detections.review_status", "detections.detections.phrase",
            "detections.detections.tag"} <= set(schema)
    assert set(ds.list_saved_views()) >= {"lowest confidence first", "unreviewed"}
    assert len(ds.load_saved_view("unreviewed").distinct("detections.detections.review_status")) == 1
    colors = ds.app_config.color_scheme.fields[0]["valueColors"]
    assert [c["value"] for c in colors] == ["cat", "dog", "person"] and len({c["color"] for c in colors}) == 3


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
    assert f"{n1 - 1} accepted, 3 rejected, 1 edited, 0 added, 0 deleted" in out, out
    view = _current(db_url)
    assert all(view[i]["review_status"] == "rejected" and view[i]["reviewed_by"] == "alice" for i in rejected)
    assert view[edited]["review_status"] == "edited" and view[edited]["class_name"] == "person-edited"
    assert (view[edited]["x0"], view[edited]["y0"], view[edited]["x1"], view[edited]["y1"]) == (32.0, 24.0, 48.0, 36.0)
    assert view[edited]["mask"] is None and view[edited]["mask_stale"]  # no segmenter for this job: never stretched
    assert all(view[i]["review_status"] is None and view[i]["reviewed_at"] is None for i in untouched)
    rows = _rows(db_url)
    assert rows[edited].class_name != "person-edited"  # the prediction itself is never changed
    out = _cli("review", job, "--db", db_url, "--sync", "--reviewer", "bob")  # idempotent
    assert "(0 decisions written" in out
    assert {d.reviewer for d in _decisions(db_url)} == {"alice"}

    # rebuilding the dataset keeps the verdicts as label tags (edited = accepted)
    ds = _build(db_url, job, tmp_path)
    assert ds.count_label_tags("detections") == {"reject": 3, "accept": n1}

    import json

    _cli("export", job, "--db", db_url, "--format", "coco", "--out", str(tmp_path / "coco"))
    coco = json.loads((tmp_path / "coco" / "labels.json").read_text())
    assert len(coco["annotations"]) == len(rows) - 3
    _cli("export", job, "--db", db_url, "--format", "coco", "--out", str(tmp_path / "all"),
         "--include-rejected")
    assert len(json.loads((tmp_path / "all" / "labels.json").read_text())["annotations"]) == len(rows)


def test_edit_with_accept_tag_is_not_rewritten_by_later_syncs(tmp_path: Path, db_url: str) -> None:
    """The reported bug: a second sync turned alice's edits into bob's accepts."""
    job = make_job(db_url, tmp_path / "imgs", images=1)
    ds = _build(db_url, job, tmp_path)
    sample = ds.first()
    for det in sample.detections.detections[1:3]:
        det.label = "person-edited"
        det.tags = ["accept"]
    sample.save()
    assert "0 accepted, 0 rejected, 2 edited" in _cli("review", job, "--db", db_url, "--sync", "--reviewer", "alice")
    for _ in range(2):  # sync again, and rebuild (review start) then sync (review stop)
        assert "(0 decisions written" in _cli("review", job, "--db", db_url, "--sync", "--reviewer", "bob")
        ds = _build(db_url, job, tmp_path)
    assert [(d.action, d.reviewer) for d in _decisions(db_url)] == [("edit", "alice"), ("edit", "alice")]


def test_sample_tag_never_applies_to_labels_of_a_later_run(tmp_path: Path, sqlite_url: str) -> None:
    job = make_job(sqlite_url, tmp_path / "imgs", images=1, dets_per_image=2)
    ds = _build(sqlite_url, job, tmp_path)
    sample = ds.first()
    sample.tags.append("accept")
    sample.save()
    assert "2 accepted" in _cli("review", job, "--db", sqlite_url, "--sync", "--reviewer", "alice")
    engine = make_engine(sqlite_url)
    with session_factory(engine)() as s:  # relabel: a new run finds a new object elsewhere
        job_id = s.scalar(select(Job.id).where(Job.name == job))
        repo.reset_for_relabel(s, job_id)
        (item_id,) = repo.claim_items(s, job_id, "W", limit=1, lease_seconds=60)
        new = det_row((40.0, 30.0, 60.0, 46.0), "dog", 0.9, seed=9)
        assert repo.finish_item(s, item_id, "W", repo.LabelRows(detections=[new]), facts={})
    engine.dispose()
    ds = _build(sqlite_url, job, tmp_path)
    assert "accept" in ds.first().tags  # the reviewer's tag stays, it belongs to the run they saw
    assert "(0 decisions written" in _cli("review", job, "--db", sqlite_url, "--sync", "--reviewer", "bob")
    fresh = [lab for lab in _current(sqlite_url).values() if lab["class_name"] == "dog" and lab["x0"] == 40.0]
    assert len(fresh) == 1 and fresh[0]["review_status"] is None and fresh[0]["run_id"] == 2


def test_added_and_deleted_labels_become_decisions(tmp_path: Path, db_url: str) -> None:
    import fiftyone as fo

    job = make_job(db_url, tmp_path / "imgs", images=2, dets_per_image=3)
    ds = _build(db_url, job, tmp_path)
    s0 = ds.sort_by("lf_item_id").first()
    gone = s0.detections.detections.pop(1).lf_id
    s0.detections.detections.append(fo.Detection(label="person", bounding_box=[0.1, 0.1, 0.2, 0.3]))
    s0.save()
    out = _cli("review", job, "--db", db_url, "--sync", "--reviewer", "alice", "--no-resegment")
    assert "1 added, 1 deleted (2 decisions written; 0 new masks, 1 stale)" in out, out
    assert "(0 decisions written" in _cli("review", job, "--db", db_url, "--sync", "--reviewer", "alice")
    view = _current(db_url)
    assert gone not in view  # deleted: never shown, never exported
    added = [lab for lab in view.values() if lab["review_status"] == "added"]
    assert len(added) == 1 and added[0]["class_name"] == "person" and added[0]["score"] is None
    assert abs(added[0]["x0"] - 0.1 * W) < 1e-6
    ds = _build(db_url, job, tmp_path)  # the added label comes back from the database, once
    assert ds.count("detections.detections") == 6  # 2 x 3 predictions - 1 deleted + 1 added
    assert "(0 decisions written" in _cli("review", job, "--db", db_url, "--sync", "--reviewer", "bob")


def test_relabel_hides_new_predictions_over_decided_regions_any_class(tmp_path: Path, db_url: str) -> None:
    """Reject a 'dog', move a box, change a class; a relabel finding them again (any class) stays hidden."""
    job = make_job(db_url, tmp_path / "imgs", images=1, dets_per_image=4)
    ds = _build(db_url, job, tmp_path)
    sample = ds.first()
    d = sample.detections.detections
    d[0].tags = ["reject"]
    d[1].label = "person-edited"
    x, y, w, h = d[2].bounding_box
    d[2].bounding_box = [x + 0.05, y + 0.05, w, h]
    sample.save()
    assert "(3 decisions written" in _cli("review", job, "--db", db_url, "--sync", "--reviewer", "alice")
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        job_id = s.scalar(select(Job.id).where(Job.name == job))
        old = {p.idx: p for p in s.scalars(select(Detection).order_by(Detection.idx))}
        repo.reset_for_relabel(s, job_id)
        (item_id,) = repo.claim_items(s, job_id, "W", limit=1, lease_seconds=60)
        again = [{**{k: getattr(old[i], k) for k in ("x0", "y0", "x1", "y1", "score", "phrase", "tag", "mask",
                                                      "area")}, "class_name": "other"} for i in range(4)]
        assert repo.finish_item(s, item_id, "W", repo.LabelRows(detections=again), facts={})
    engine.dispose()
    view = _current(db_url)
    fresh = [lab for lab in view.values() if lab["run_id"] == 2 and lab["review_status"] is None]
    assert [lab["x0"] for lab in fresh] == [old[3].x0]  # only the undecided object comes back (as "other")
    assert sorted(str(lab["review_status"]) for lab in view.values()) == ["None", "edited", "edited", "rejected"]
    out = _cli("export", job, "--db", db_url, "--format", "coco", "--out", str(tmp_path / "c"), "--keep-overlapping")
    assert "exported 6 labels" in out  # 2 edited + 4 new predictions, asked for explicitly
