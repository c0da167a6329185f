"""The plain function behind the Celery task, called directly; error classification table."""

from __future__ import annotations

from pathlib import Path

import pytest

from labelfleet.db import migrate
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import ItemStatus, JobState
from labelfleet.db.queries import job_summary
from labelfleet.db.repository import get_job
from labelfleet.errors import BadImageError, ItemSkipped, RetryableError, StorageError
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings
from labelfleet.storage import open_source
from orchestrator.dispatch import set_state
from orchestrator.jobs import prepare_job
from tests.imagegen import write_scenes
from workers.processing import classify_error
from workers.service import WorkerContext, run_chunk

CASES = [
    (ItemSkipped("object no longer exists: k"), 1, ItemStatus.SKIPPED, "object no longer exists: k"),
    (BadImageError("empty file (0 bytes)"), 1, ItemStatus.FAILED, "empty file (0 bytes)"),
    (StorageError("S3 temporarily failed"), 1, ItemStatus.PENDING, "will retry (attempt 1 of 3): S3 temporarily"),
    (RetryableError("db down"), 3, ItemStatus.POISON, "gave up after 3 attempts: db down"),
    (ZeroDivisionError("boom"), 1, ItemStatus.FAILED, "internal error: ZeroDivisionError: boom"),
]


@pytest.mark.parametrize(("exc", "attempts", "status", "reason"), CASES, ids=[c[3][:20] for c in CASES])
def test_classify_error(exc: BaseException, attempts: int, status: ItemStatus, reason: str) -> None:
    got_status, got_reason = classify_error(exc, attempts, 3)
    assert got_status == status and got_reason.startswith(reason)


def test_run_chunk_directly(tmp_path: Path, db_url: str, lf_env: Path) -> None:
    write_scenes(tmp_path / "imgs", 5)
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    config = {"preset": "tiny-random", "tagger": None, "detector": "gdino_tiny", "segmenter": "sam_tiny",
              **PipelineConfig(classes=("cat", "dog")).to_json()}
    job_id, _ = prepare_job(factory, name="direct", source=open_source(str(tmp_path / "imgs")), config=config,
                            models={"random_weights": True}, queue="lf.tiny-random")
    ctx = WorkerContext(Settings(db_url=db_url, model_dir=lf_env, device="cpu"))
    try:
        assert run_chunk(job_id, [1, 2, 3], ctx=ctx) == {"done": 3}
        assert run_chunk(job_id, [1, 2, 3], ctx=ctx) == {}  # already done: nothing claimable, nothing rewritten
        set_state(factory, job_id, JobState.CANCELLED)
        assert run_chunk(job_id, [4, 5], ctx=ctx) == {}
        with factory() as s:
            summary = job_summary(s, get_job(s, "direct"))
        assert (summary["done"], summary["pending"], summary["state"]) == (3, 2, "cancelled")
    finally:
        ctx.close()
        engine.dispose()


def test_jobs_share_loaded_models_and_keep_their_own_thresholds(lf_env: Path, sqlite_url: str) -> None:
    ctx = WorkerContext(Settings(db_url=sqlite_url, model_dir=lf_env, device="cpu"))
    base = {"preset": "tiny-random", "tagger": None, "detector": "gdino_tiny", "segmenter": "sam_tiny"}
    try:
        a = ctx.pipeline_for({**base, **PipelineConfig(classes=("cat",), box_threshold=0.3).to_json()})
        b = ctx.pipeline_for({**base, **PipelineConfig(classes=("dog",), box_threshold=0.6).to_json()})
        assert a.detector.model is b.detector.model and a.segmenter is b.segmenter  # type: ignore[attr-defined]
        assert (a.detector.box_threshold, b.detector.box_threshold) == (0.3, 0.6)  # type: ignore[attr-defined]
    finally:
        ctx.close()


def test_unreadable_source_fails_the_claimed_items_with_the_reason(tmp_path: Path, sqlite_url: str,
                                                                   lf_env: Path) -> None:
    import shutil

    write_scenes(tmp_path / "gone", 2)
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    config = {"preset": "tiny-random", "tagger": None, "detector": "gdino_tiny", "segmenter": "sam_tiny",
              **PipelineConfig(classes=("cat",)).to_json()}
    job_id, _ = prepare_job(factory, name="gone", source=open_source(str(tmp_path / "gone")), config=config,
                            models={}, queue="lf.tiny-random")
    shutil.rmtree(tmp_path / "gone")  # e.g. a folder this worker does not have mounted
    ctx = WorkerContext(Settings(db_url=sqlite_url, model_dir=lf_env, device="cpu"))
    try:
        assert run_chunk(job_id, [1, 2], ctx=ctx) == {"failed": 2}
        with factory() as s:
            summary = job_summary(s, get_job(s, "gone"))
        assert summary["failures"][0]["reason"].startswith("source folder") and summary["running"] == 0
    finally:
        ctx.close()
        engine.dispose()
