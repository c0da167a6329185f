"""End to end: `labelfleet label` on a generated folder with tiny random models, SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Detection, Item, ItemTag
from tests.imagegen import bad_inputs, write_scenes

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

# bad input -> (status, start of the recorded reason); images not listed here must end "done"
BAD_OUTCOMES = {
    "zero_byte.jpg": ("failed", "empty file (0 bytes)"),
    "not_an_image.jpg": ("failed", "not an image"),
    "truncated.jpg": ("failed", "truncated or corrupt image data"),
    "bomb.png": ("failed", "image too large: 400,000,000 pixels exceeds the limit"),
}


def _cli(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _status(db: str, job: str) -> dict:
    out = _cli("status", job, "--db", db, "--json")
    return json.loads(out.strip().splitlines()[-1])


def _label_counts(db: str) -> tuple[int, int]:
    engine = make_engine(db)
    with session_factory(engine)() as s:
        counts = (s.scalar(select(func.count()).select_from(Detection)) or 0,
                  s.scalar(select(func.count()).select_from(ItemTag)) or 0)
    engine.dispose()
    return counts


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    write_scenes(root, 16)
    write_scenes(root / "nested", 4, start=100, fmt="png")
    bad = root / "bad"
    bad.mkdir()
    for name, data in bad_inputs().items():
        (bad / name).write_bytes(data)
    (root / "notes.txt").write_text("not listed: not an image extension")
    return root


def test_label_fixed_classes_then_rerun_is_idempotent(folder: Path, db_url: str, lf_env: Path) -> None:
    args = ["label", str(folder), "--db", db_url, "--job", "photos", "--models", "tiny-random",
            "--classes", "cat,dog,person,car"]
    _cli(*args)
    st = _status(db_url, "photos")
    assert st["total"] == 20 + len(bad_inputs())
    assert st["done"] + st["failed"] == st["total"], st
    assert st["failed"] == len(BAD_OUTCOMES) and st["state"] == "done" and st["random_weights"]
    assert st["detections"] > 0 and st["tags"] == 0
    engine = make_engine(db_url)
    with session_factory(engine)() as s:
        rows = {k.rsplit("/", 1)[-1]: (st_, err, t) for k, st_, err, t in
                s.execute(select(Item.key, Item.status, Item.error, Item.timings))}
        classes = set(s.scalars(select(Detection.class_name)).all())
        masks = s.scalars(select(Detection.mask)).all()
    engine.dispose()
    for name, (status, reason) in BAD_OUTCOMES.items():
        assert rows[name][0] == status and rows[name][1].startswith(reason), rows[name]
    for name in set(bad_inputs()) - set(BAD_OUTCOMES):
        assert rows[name][0] == "done", (name, rows[name])
    assert classes <= {"cat", "dog", "person", "car"}
    assert all(m and set(m) == {"size", "counts", "offset", "frame"} for m in masks)  # box-cropped records
    assert {"read_decode", "detect", "segment", "write"} <= set(rows["img_0000.jpg"][2])
    before = _label_counts(db_url)
    out = _cli(*args)  # re-run: nothing to do, nothing duplicated
    assert _status(db_url, "photos")["done"] == st["done"] and _label_counts(db_url) == before
    assert "labels are MEANINGLESS" in out or "meaningless" in out.lower()


def test_label_automatic_mode_stores_tags(tmp_path: Path, sqlite_url: str, lf_env: Path) -> None:
    write_scenes(tmp_path / "auto", 6)
    _cli("label", str(tmp_path / "auto"), "--db", sqlite_url, "--models", "tiny-random", "--max-tags", "5")
    st = _status(sqlite_url, "auto")
    assert st["done"] == 6 and st["tags"] > 0, st
    engine = make_engine(sqlite_url)
    with session_factory(engine)() as s:
        pairs = s.execute(select(Detection.class_name, Detection.tag)).all()
    engine.dispose()
    assert pairs and all(tag is not None and tag.lower() == cls for cls, tag in pairs)


def test_rerun_with_other_settings_is_refused(tmp_path: Path, sqlite_url: str, lf_env: Path) -> None:
    write_scenes(tmp_path / "x", 2)
    _cli("label", str(tmp_path / "x"), "--db", sqlite_url, "--models", "tiny-random", "--classes", "cat")
    result = runner.invoke(app, ["label", str(tmp_path / "x"), "--db", sqlite_url, "--models", "tiny-random",
                                 "--classes", "dog"])
    assert result.exit_code != 0
    assert "already exists with different settings (classes)" in str(result.exception)


def test_ctrl_c_leaves_a_resumable_job(tmp_path: Path, db_url: str, lf_env: Path) -> None:
    folder = tmp_path / "many"
    write_scenes(folder, 40)
    cmd = [sys.executable, "-m", "labelfleet", "label", str(folder), "--db", db_url, "--job", "many",
           "--models", "tiny-random", "--classes", "cat,dog", "--batch-size", "2"]
    env = {**os.environ, "LABELFLEET_MODEL_DIR": str(lf_env), "LABELFLEET_DEVICE": "cpu"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait until some, not all, items are done
        time.sleep(0.3)
        try:
            with factory() as s:
                done = s.scalar(select(func.count()).select_from(Item).where(Item.status == "done")) or 0
        except Exception:
            done = 0
        if done >= 3 or proc.poll() is not None:
            break
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command again to continue" in out
    st = _status(db_url, "many")
    assert st["running"] == 0 and 3 <= st["done"] < 40 and st["done"] + st["pending"] == 40, st
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    st = _status(db_url, "many")
    assert st["done"] == 40 and st["state"] == "done"
    with factory() as s:
        per_item = s.execute(select(Detection.item_id, Detection.idx, func.count()).group_by(
            Detection.item_id, Detection.idx).having(func.count() > 1)).all()
    engine.dispose()
    assert per_item == []


def test_relabel_keeps_reviewed_labels_unless_overwritten(tmp_path: Path, sqlite_url: str, lf_env: Path) -> None:
    from labelfleet.db.labels import current_labels
    from labelfleet.db.models import ReviewDecision
    from labelfleet.db.repository import utcnow

    write_scenes(tmp_path / "rv", 3)
    args = ["label", str(tmp_path / "rv"), "--db", sqlite_url, "--models", "tiny-random", "--classes", "cat,dog"]
    _cli(*args)
    engine = make_engine(sqlite_url)
    factory = session_factory(engine)
    with factory() as s:
        det = s.scalars(select(Detection).order_by(Detection.id)).first()
        assert det is not None
        s.add(ReviewDecision(item_id=det.item_id, prediction_id=det.id, run_id=det.run_id, action="reject",
                             reviewer="alice", decided_at=utcnow(), x0=det.x0, y0=det.y0, x1=det.x1, y1=det.y1,
                             class_name=det.class_name, score=det.score))
        s.commit()
        shown_before = len(current_labels(s, [det.item_id])[det.item_id])
    _cli(*args, "--relabel")
    with factory() as s:
        kept = s.scalars(select(ReviewDecision)).all()
        assert [(d.prediction_id, d.action, d.reviewer) for d in kept] == [(det.id, "reject", "alice")]
        # the same model finds the same box again: hidden, it overlaps the region alice rejected
        view = current_labels(s, [det.item_id], include_rejected=True)[det.item_id]
        assert all(lab["review_status"] is None or lab["decision_id"] == kept[0].id for lab in view)
        assert len([lab for lab in view if lab["review_status"] is None]) <= shown_before
        idx = s.scalars(select(Detection.idx).where(Detection.item_id == det.item_id)).all()
    assert len(idx) == len(set(idx))
    assert _status(sqlite_url, "rv")["done"] == 3
    _cli(*args, "--relabel", "--overwrite-reviewed")
    with factory() as s:
        assert s.get(Detection, det.id) is None
        assert s.scalar(select(func.count()).select_from(ReviewDecision)) == 0
    engine.dispose()


BAD_LABEL_ARGS = [
    (["--classes", " , "], "--classes is empty; give class names like 'cat,dog' or leave it out for automatic tags"),
    (["--models", "nope"], "unknown model preset 'nope'; choose one of: default, fast, quality, tiny-random"),
    (["--tagger", "clip"], "unknown tagger model 'clip_tiny'; choose one of: ram, ram_plus, ram_tiny, ram_plus_tiny"),
]


@pytest.mark.parametrize(("args", "message"), BAD_LABEL_ARGS, ids=[m[:25] for _, m in BAD_LABEL_ARGS])
def test_bad_label_arguments(tmp_path: Path, sqlite_url: str, lf_env: Path, args: list[str], message: str) -> None:
    write_scenes(tmp_path / "b", 1)
    extra = [] if "--models" in args else ["--models", "tiny-random"]
    result = runner.invoke(app, ["label", str(tmp_path / "b"), "--db", sqlite_url, *extra, *args])
    assert result.exit_code != 0 and getattr(result.exception, "message", None) == message


def test_missing_folder_and_bad_device(tmp_path: Path, sqlite_url: str) -> None:
    result = runner.invoke(app, ["label", str(tmp_path / "nope"), "--db", sqlite_url, "--models", "tiny-random"])
    assert "does not exist or is not a folder" in getattr(result.exception, "message", "")
    proc = subprocess.run([sys.executable, "-m", "labelfleet", "label", str(tmp_path), "--db", sqlite_url,
                           "--device", "gpu"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "setting device (env LABELFLEET_DEVICE): device must be auto, cpu, cuda or cuda:N, got 'gpu'" in (
        " ".join(proc.stderr.split()))
