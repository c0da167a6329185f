"""Stage overlap (issue 13): a batch is segmented in a second thread while the next batch is detected.

Real tiny models, a real database, ``run_chunk`` as a Celery worker calls it;
the segmenter is wrapped only to watch it or to make one image's batch fail.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import migrate
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Detection, Item, ItemStatus
from labelfleet.errors import WorkerUnhealthy
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings
from labelfleet.storage import open_source
from orchestrator.jobs import prepare_job
from tests.imagegen import scene, write_scenes
from tests.waiting import scaled, wait_until
from workers.service import WorkerContext, run_chunk
from workers.stages.grounding_dino import GroundingDinoDetector
from workers.stages.sam_segmenter import SamSegmenter

CONFIG = {"preset": "tiny-random", "tagger": None, "detector": "gdino_tiny", "segmenter": "sam_tiny",
          **PipelineConfig(classes=("cat", "dog", "person"), box_threshold=0.3).to_json()}
N = 8


@pytest.fixture
def jobs(tmp_path: Path, sqlite_url: str, lf_env: Path) -> Iterator[tuple[sessionmaker[Session], Settings, Any]]:
    write_scenes(tmp_path / "imgs", N)
    engine = make_engine(sqlite_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)

    def new_job(name: str) -> tuple[int, list[int]]:
        job_id, _ = prepare_job(factory, name=name, source=open_source(str(tmp_path / "imgs")), config=CONFIG,
                                models={"random_weights": True}, queue="lf.tiny-random")
        with factory() as s:
            return job_id, list(s.scalars(select(Item.id).where(Item.job_id == job_id).order_by(Item.id)))

    yield factory, Settings(db_url=sqlite_url, model_dir=lf_env, device="cpu", batch_size=2), new_job
    engine.dispose()


def _run(settings: Settings, job_id: int, ids: list[int]) -> dict[str, int]:
    ctx = WorkerContext(settings)
    try:
        return run_chunk(job_id, ids, ctx=ctx)
    finally:
        ctx.close()


def _labels(factory: sessionmaker[Session], job_id: int) -> dict[str, list[tuple[Any, ...]]]:
    with factory() as s:
        rows = s.execute(select(Item.key, Detection.x0, Detection.y0, Detection.x1, Detection.y1, Detection.score,
                                Detection.class_name, Detection.mask, Detection.area)
                         .join(Detection, Detection.item_id == Item.id).where(Item.job_id == job_id)
                         .order_by(Item.key, Detection.id))
        out: dict[str, list[tuple[Any, ...]]] = {}
        for key, *rest in rows:
            out.setdefault(key, []).append(tuple(rest))
        return out


def _statuses(factory: sessionmaker[Session], job_id: int) -> list[tuple[str, int, str | None]]:
    with factory() as s:
        return list(s.execute(select(Item.status, Item.attempts, Item.error).where(Item.job_id == job_id)
                              .order_by(Item.id)).tuples())


def test_next_batch_is_detected_while_a_batch_is_segmented_with_the_same_labels(
        jobs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    factory, settings, new_job = jobs
    detect, segment = GroundingDinoDetector.detect, SamSegmenter.segment_boxes
    second_detect = threading.Event()
    calls = {"detect": 0, "segment": 0}
    overlapped: list[bool] = []

    def watched_detect(self: Any, *args: Any) -> Any:
        calls["detect"] += 1
        if calls["detect"] == 2:
            second_detect.set()
        return detect(self, *args)

    def watched_segment(self: Any, *args: Any) -> Any:
        calls["segment"] += 1
        if calls["segment"] == 1:  # batch 1 is segmented: batch 2's detection must be able to start meanwhile
            overlapped.append(second_detect.wait(scaled(60)))
        return segment(self, *args)

    monkeypatch.setattr(GroundingDinoDetector, "detect", watched_detect)
    monkeypatch.setattr(SamSegmenter, "segment_boxes", watched_segment)
    job_a, ids_a = new_job("overlap")
    assert _run(settings, job_a, ids_a) == {"done": N}
    assert overlapped == [True]
    assert calls == {"detect": N // 2, "segment": N // 2}  # every batch once: nothing ran twice

    monkeypatch.setattr(GroundingDinoDetector, "detect", detect)
    monkeypatch.setattr(SamSegmenter, "segment_boxes", segment)
    job_b, ids_b = new_job("one-thread")
    assert _run(settings.model_copy(update={"overlap_stages": False}), job_b, ids_b) == {"done": N}
    a, b = _labels(factory, job_a), _labels(factory, job_b)
    assert sum(map(len, a.values())) > N  # masks and boxes were really made
    assert all(rec[6] is not None for rows in a.values() for rec in rows)
    assert a == b  # same boxes, scores, classes, mask records and areas as the stages one after another


BAD_SIZE = (250, 330)  # (H, W) of the one hostile image; the others are 240 x 320


def test_a_batch_failing_while_segmented_charges_only_its_bad_image(jobs: Any, monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    factory, settings, new_job = jobs
    bad_key = "img_0005.jpg"
    scene(5, width=BAD_SIZE[1], height=BAD_SIZE[0]).save(tmp_path / "imgs" / bad_key)
    segment = SamSegmenter.segment_boxes

    def hostile(self: Any, images: Any, boxes: Any) -> Any:
        if any(im.shape[:2] == BAD_SIZE for im in images):
            raise ValueError("mask decoder rejected this image")
        return segment(self, images, boxes)

    monkeypatch.setattr(SamSegmenter, "segment_boxes", hostile)
    job_id, ids = new_job("hostile")
    assert _run(settings, job_id, ids) == {"done": N - 1, "failed": 1}
    with factory() as s:
        keys = list(s.scalars(select(Item.key).where(Item.job_id == job_id).order_by(Item.id)))
    statuses = dict(zip(keys, _statuses(factory, job_id), strict=True))
    assert statuses[bad_key] == (ItemStatus.FAILED, 1, "model error: ValueError: mask decoder rejected this image")
    assert all(st == (ItemStatus.DONE, 1, None) for k, st in statuses.items() if k != bad_key)
    assert bad_key not in _labels(factory, job_id)


def test_device_fault_while_segmenting_charges_nobody(jobs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    factory, settings, new_job = jobs
    segment = SamSegmenter.segment_boxes
    calls = {"n": 0}

    def faulting(self: Any, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the second batch, segmented while the third is detected
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return segment(self, *args)

    monkeypatch.setattr(SamSegmenter, "segment_boxes", faulting)
    job_id, ids = new_job("sick")
    with pytest.raises(WorkerUnhealthy, match="device fault: RuntimeError: CUDA error: an illegal memory"):
        _run(settings, job_id, ids)
    rows = _statuses(factory, job_id)
    assert [r[:2] for r in rows[:2]] == [(ItemStatus.DONE, 1)] * 2  # batch 1 was stored before the fault
    assert [r[:2] for r in rows[2:]] == [(ItemStatus.PENDING, 0)] * (N - 2)  # nobody charged
    assert all(r[2].startswith("given back, attempt not counted: device fault") for r in rows[2:6])


def _main_thread_waits_for_segmenting() -> bool:
    """True while the main thread is blocked in ``_finish_back`` waiting for the segmenting thread."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return "_finish_back" in names and "result" in names


def test_soft_time_limit_while_segmenting_charges_the_segmented_batch_not_the_waiting_one(
        jobs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from billiard.pool import soft_timeout_sighandler

    factory, settings, new_job = jobs
    segment = SamSegmenter.segment_boxes
    calls = {"n": 0}

    def stuck(self: Any, *args: Any) -> Any:  # batch 1's masks take "forever": Celery's soft limit fires
        calls["n"] += 1
        if calls["n"] == 1:
            wait_until(_main_thread_waits_for_segmenting, 60, "the main thread to wait for batch 1's masks",
                       interval=0.05)
            os.kill(os.getpid(), signal.SIGUSR1)
        return segment(self, *args)

    monkeypatch.setattr(SamSegmenter, "segment_boxes", stuck)
    job_id, ids = new_job("time-limit")
    ctx = WorkerContext(settings.model_copy(update={"batch_size": 1}))
    ctx.preload("tiny-random")  # outside the time limit, as a worker does at start
    old = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)  # what billiard installs in pool processes
    try:
        assert run_chunk(job_id, ids[:3], ctx=ctx) == {}
    finally:
        signal.signal(signal.SIGUSR1, old)
        ctx.close()
    rows = _statuses(factory, job_id)
    assert [r[:2] for r in rows[:3]] == [(ItemStatus.PENDING, 1), (ItemStatus.PENDING, 0), (ItemStatus.PENDING, 0)]
    assert "while this item was being labelled" in str(rows[0][2])
    assert "before this item was labelled" in str(rows[1][2])  # detected, waiting: not charged
