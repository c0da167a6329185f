"""Fault containment in one worker process: run_chunk / ItemProcessor called directly on real databases.

Which errors charge the item and which do not (classification table), out-of-memory
halving, device faults and unloadable models (worker unhealthy, items given back
uncharged), Celery's soft time limit, lease heartbeat, and the ETag of the bytes read.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import migrate
from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Item, ItemStatus, Job
from labelfleet.errors import (
    BadImageError,
    DatabaseUnavailable,
    ItemSkipped,
    StorageError,
    WorkerUnhealthy,
)
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings
from labelfleet.storage import open_source
from orchestrator.jobs import prepare_job
from orchestrator.sweeper import expire_leases
from tests.imagegen import scene, write_scenes
from tests.waiting import wait_until
from workers.faults import ENV as FAULT_ENV
from workers.leases import LeaseKeeper
from workers.processing import classify_error, infrastructure_error, is_device_fault, is_out_of_memory
from workers.service import WorkerContext, run_chunk

CONFIG = {"preset": "tiny-random", "tagger": None, "detector": "gdino_tiny", "segmenter": "sam_tiny",
          **PipelineConfig(classes=("cat", "dog"), segment=False).to_json()}


def _db_error(cls: type[Exception]) -> Exception:
    return cls("SELECT 1", {}, Exception("connection to server at 127.0.0.1 failed: Connection refused"))


#: exception -> (kind, what the item gets). kind: item | infra-db | infra-worker | oom
CLASSIFY = [
    (BadImageError("not an image"), "item", (ItemStatus.FAILED, "not an image")),
    (ItemSkipped("object no longer exists: k"), "item", (ItemStatus.SKIPPED, "object no longer exists")),
    (StorageError("S3 temporarily failed"), "item", (ItemStatus.PENDING, "will retry (attempt 1 of 3)")),
    (ValueError("weird shape"), "item", (ItemStatus.FAILED, "internal error: ValueError: weird shape")),
    (_db_error(OperationalError), "infra-db", None),
    (_db_error(InterfaceError), "infra-db", None),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "infra-worker", None),
    (RuntimeError("CUDA error: device-side assert triggered"), "infra-worker", None),
    (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), "infra-worker", None),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom", None),
    (RuntimeError("CUDA error: out of memory"), "oom", None),
    (MemoryError(), "oom", None),
]


@pytest.mark.parametrize(("exc", "kind", "item"), CLASSIFY, ids=[f"{type(c[0]).__name__}-{c[1]}" for c in CLASSIFY])
def test_error_classification(exc: BaseException, kind: str, item: tuple[ItemStatus, str] | None) -> None:
    infra = infrastructure_error(exc)
    got = ("oom" if is_out_of_memory(exc) else "infra-worker" if is_device_fault(exc)
           else "infra-db" if infra is not None else "item")
    assert got == kind
    if kind == "infra-db":
        assert isinstance(infra, DatabaseUnavailable) and "database unavailable" in infra.message
    if kind == "infra-worker":
        assert isinstance(infra, WorkerUnhealthy) and infra.message == f"device fault: RuntimeError: {exc}"
    if item is not None:
        status, reason = classify_error(exc, 1, 3)
        assert (status, reason[:len(item[1])]) == item


@pytest.fixture
def job(tmp_path: Path, db_url: str, lf_env: Path) -> Iterator[tuple[sessionmaker[Session], int, Settings]]:
    write_scenes(tmp_path / "imgs", 6)
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    job_id, _ = prepare_job(factory, name="faults", source=open_source(str(tmp_path / "imgs")), config=CONFIG,
                            models={"random_weights": True}, queue="lf.tiny-random")
    yield factory, job_id, Settings(db_url=db_url, model_dir=lf_env, device="cpu", batch_size=4)
    engine.dispose()


def _items(factory: sessionmaker[Session]) -> list[Any]:
    with factory() as s:
        return list(s.execute(select(Item.id, Item.status, Item.attempts, Item.error, Item.lease_owner)
                              .order_by(Item.id)).all())


def test_out_of_memory_halves_the_batch_and_succeeds(job: Any, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    factory, job_id, settings = job
    monkeypatch.setenv(FAULT_ENV, "oom_over:1")  # torch.OutOfMemoryError for any batch of more than 1 image
    ctx = WorkerContext(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="workers.processing"):
            assert run_chunk(job_id, [1, 2, 3, 4, 5, 6], ctx=ctx) == {"done": 6}
    finally:
        ctx.close()
    assert [(r.status, r.attempts) for r in _items(factory)] == [(ItemStatus.DONE, 1)] * 6
    with factory() as s:  # provenance: the files this worker actually loaded, recorded on the job
        stages = s.get(Job, job_id).models["stages"]  # type: ignore[union-attr]
    detector = Path(stages["detector"]["checkpoint"])
    assert stages["tagger"] is None and stages["detector"]["key"] == "gdino_tiny"
    assert stages["detector"]["checkpoint_sha256"] == hashlib.sha256(detector.read_bytes()).hexdigest()
    halvings = [r.getMessage() for r in caplog.records if "out of memory on a batch" in r.getMessage()]
    assert halvings[:2] == ["out of memory on a batch of 4 images (OutOfMemoryError); retrying as batches of 2",
                            "out of memory on a batch of 2 images (OutOfMemoryError); retrying as batches of 1"]
    assert ctx.unhealthy is None


def test_device_fault_makes_the_worker_unhealthy_and_charges_nobody(job: Any, monkeypatch: pytest.MonkeyPatch
                                                                    ) -> None:
    factory, job_id, settings = job
    monkeypatch.setenv(FAULT_ENV, "device_fault")
    ctx = WorkerContext(settings)
    reported: list[str] = []
    ctx.on_unhealthy = reported.append
    try:
        with pytest.raises(WorkerUnhealthy, match="device fault: RuntimeError: CUDA error: an illegal memory"):
            run_chunk(job_id, [1, 2, 3], ctx=ctx)
        with pytest.raises(WorkerUnhealthy):  # an unhealthy worker takes nothing more
            run_chunk(job_id, [4, 5, 6], ctx=ctx)
    finally:
        ctx.close()
    rows = _items(factory)
    assert [(r.status, r.attempts, r.lease_owner) for r in rows] == [(ItemStatus.PENDING, 0, None)] * 6
    assert all(r.error.startswith("given back, attempt not counted: device fault") for r in rows[:3])
    assert len(reported) == 1 and reported[0].startswith("device fault")


def test_models_that_do_not_load_make_the_worker_unhealthy(job: Any, tmp_path: Path, lf_env: Path) -> None:
    factory, job_id, settings = job
    broken = tmp_path / "broken-models"
    shutil.copytree(lf_env / "tiny-random", broken / "tiny-random")
    ckpt = next((broken / "tiny-random" / "gdino_tiny").glob("*.pth"))
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # a truncated download
    ctx = WorkerContext(settings.model_copy(update={"model_dir": broken}))
    try:
        with pytest.raises(WorkerUnhealthy, match="cannot load models ram_plus_tiny/gdino_tiny/sam_tiny: "
                                                  "cannot read GroundingDINO checkpoint"):
            ctx.preload("tiny-random")
        with pytest.raises(WorkerUnhealthy, match="cannot load models"):
            run_chunk(job_id, [1, 2], ctx=ctx)
    finally:
        ctx.close()
    assert [(r.status, r.attempts) for r in _items(factory)] == [(ItemStatus.PENDING, 0)] * 6
    assert ctx.unhealthy is not None and "gdino_tiny" in ctx.unhealthy


def test_soft_time_limit_charges_only_the_item_in_progress(job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from billiard.pool import soft_timeout_sighandler

    factory, job_id, settings = job
    monkeypatch.setenv(FAULT_ENV, "slow:30")  # the first image takes "forever"
    ctx = WorkerContext(settings.model_copy(update={"batch_size": 1}))
    ctx.preload("tiny-random")  # outside the time limit, as a worker does at start
    old = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)  # what billiard installs in pool processes
    timer = threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGUSR1))  # Celery's soft time limit fires
    timer.start()
    try:
        assert run_chunk(job_id, [1, 2, 3], ctx=ctx) == {}
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old)
        ctx.close()
    rows = _items(factory)
    assert [(r.status, r.attempts) for r in rows[:3]] == [(ItemStatus.PENDING, 1), (ItemStatus.PENDING, 0),
                                                          (ItemStatus.PENDING, 0)]  # batch 1: not a failure
    assert "soft time limit" in rows[0].error and "while this item was being labelled" in rows[0].error
    assert "before this item was labelled" in rows[1].error


def test_lease_heartbeat_renews_only_own_running_items(job: Any) -> None:
    factory, job_id, _ = job
    with factory() as s:
        mine = repo.claim_items(s, job_id, "A", limit=3, lease_seconds=20)
        other = repo.claim_items(s, job_id, "B", limit=3, lease_seconds=20)

    def expiries() -> dict[int, Any]:
        with factory() as s:
            return dict(s.execute(select(Item.id, Item.lease_expires_at)).tuples().all())

    before = expiries()
    with LeaseKeeper(factory, mine + other, "A", lease_seconds=20, every_s=0.2) as keeper:
        wait_until(lambda: all(expiries()[i] > before[i] for i in mine), 30, "A's leases to be renewed")
        with factory() as s:  # A's lease on one item is taken over (A was presumed dead)
            s.execute(update(Item).where(Item.id == mine[0]).values(lease_owner="C"))
            s.commit()
        renewed_at = expiries()
        wait_until(lambda: keeper.renewals >= 3, 30, "more renewals")
    after = expiries()
    assert all(after[i] == before[i] for i in other)  # never touches another owner's lease
    assert after[mine[0]] == renewed_at[mine[0]]  # nor one taken over
    with factory() as s:  # an expired lease whose owner is alive is renewed by its heartbeat
        s.execute(update(Item).where(Item.id == mine[1]).values(lease_expires_at=repo.utcnow() - timedelta(seconds=5)))
        s.commit()
        assert repo.renew_leases(s, mine, "A", lease_seconds=20) == 2


def test_poison_after_lease_expiry_keeps_the_last_real_error(job: Any) -> None:
    factory, job_id, _ = job
    with factory() as s:
        (item_id,) = repo.claim_items(s, job_id, "W", limit=1, lease_seconds=60)
        s.execute(update(Item).where(Item.id == item_id).values(
            attempts=3, error="will retry (attempt 2 of 3): S3 temporarily failed on s3://b/k: SlowDown",
            lease_expires_at=repo.utcnow() - timedelta(seconds=1)))
        s.commit()
        assert expire_leases(s, job_id, max_attempts=3) == (0, 1)
        error = s.scalar(select(Item.error).where(Item.id == item_id))
    assert error == ("gave up after 3 attempts, the last one's worker died (its lease expired); last error: "
                     "will retry (attempt 2 of 3): S3 temporarily failed on s3://b/k: SlowDown")


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    scene(seed, 96, 72).save(buf, "JPEG")
    return buf.getvalue()


def test_object_overwritten_after_listing_records_the_bytes_labelled(pg_url: str, s3_endpoint: str,
                                                                     lf_env: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="overwritten")
    s3.put_object(Bucket="overwritten", Key="a.jpg", Body=_jpeg(1))
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    src = open_source("s3://overwritten", s3_endpoint_url=s3_endpoint)
    job_id, _ = prepare_job(factory, name="ow", source=src, config={**CONFIG, "s3_endpoint_url": s3_endpoint},
                            models={}, queue="lf.tiny-random")
    with factory() as s:
        listed = s.scalar(select(Item.etag))
    new = _jpeg(2)
    etag = s3.put_object(Bucket="overwritten", Key="a.jpg", Body=new)["ETag"].strip('"')
    ctx = WorkerContext(Settings(db_url=pg_url, model_dir=lf_env, device="cpu"))
    try:
        assert run_chunk(job_id, [1], ctx=ctx) == {"done": 1}
    finally:
        ctx.close()
    with factory() as s:
        row = s.execute(select(Item.etag, Item.sha256)).one()
    engine.dispose()
    assert listed != etag and (row.etag, row.sha256) == (etag, hashlib.sha256(new).hexdigest())


def test_database_outage_during_a_chunk_charges_no_item(tmp_path: Path, pg_url: str, pg_admin_engine: Any,
                                                        lf_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import text

    write_scenes(tmp_path / "imgs", 4)
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    job_id, _ = prepare_job(factory, name="outage", source=open_source(str(tmp_path / "imgs")), config=CONFIG,
                            models={}, queue="lf.tiny-random")
    db = pg_url.rsplit("/", 1)[1]
    monkeypatch.setenv(FAULT_ENV, "slow:4")  # the database goes away while the batch is in the models
    ctx = WorkerContext(Settings(db_url=pg_url, model_dir=lf_env, device="cpu", batch_size=4))
    ctx.preload("tiny-random")

    def outage(allow: bool) -> None:
        with pg_admin_engine.connect() as c:
            c.execute(text(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS {str(allow).lower()}'))
            if not allow:
                c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": db})

    down = threading.Timer(1.5, outage, (False,))
    back = threading.Timer(9.0, outage, (True,))
    down.start()
    back.start()
    try:
        with pytest.raises(DatabaseUnavailable, match="database unavailable: OperationalError"):
            run_chunk(job_id, [1, 2, 3, 4], ctx=ctx)
    finally:
        down.cancel()
        back.join()
        ctx.close()
    rows = _items(factory)
    engine.dispose()
    assert [(r.status, r.attempts, r.lease_owner) for r in rows] == [(ItemStatus.PENDING, 0, None)] * 4
    assert all(r.error.startswith("given back, attempt not counted: database unavailable") for r in rows)


def test_local_checkpoint_records_the_sha256_of_the_file_loaded(tmp_path: Path) -> None:
    from workers.models import resolve_model

    ckpt = tmp_path / "finetuned-sam.pth"
    ckpt.write_bytes(b"fine-tuned weights")
    res = resolve_model("sam_vit_b", "segmenter", Settings(model_dir=tmp_path / "cache"), checkpoint=ckpt,
                        allow_download=False)
    assert res.provenance() == {"key": "sam_vit_b", "origin": "local", "checkpoint": str(ckpt),
                                "checkpoint_sha256": hashlib.sha256(b"fine-tuned weights").hexdigest()}


SHA = "ab" * 32
BAD_CHECKPOINTS = [
    ("detector", "--checkpoint 'detector': expected STAGE=s3://bucket/key@SHA256 with STAGE one of tagger"),
    ("backbone=s3://b/k.pth@" + SHA, "expected STAGE=s3://bucket/key@SHA256 with STAGE one of"),
    ("detector=/local/k.pth@" + SHA, "the checkpoint must be an S3 object, s3://bucket/key@SHA256"),
    ("detector=s3://b/@" + SHA, "the checkpoint must be an S3 object"),
    ("detector=s3://b/k.pth", "the checkpoint must be an S3 object"),
    ("detector=s3://b/k.pth@abc123", "'abc123' is not a sha256 (64 hex digits)"),
]


@pytest.mark.parametrize(("value", "message"), BAD_CHECKPOINTS, ids=[v for v, _ in BAD_CHECKPOINTS])
def test_bad_checkpoint_options(value: str, message: str) -> None:
    from labelfleet.errors import ConfigError
    from labelfleet.models.finetuned import parse_checkpoint_option

    with pytest.raises(ConfigError) as info:
        parse_checkpoint_option(value)
    assert message in info.value.message
    assert parse_checkpoint_option(f"segmenter=s3://b/ft/sam.pth@{SHA.upper()}") == (
        "segmenter", {"uri": "s3://b/ft/sam.pth", "sha256": SHA})


@pytest.mark.parametrize("case", ["matches", "mismatch", "unloadable"])
def test_fine_tuned_s3_checkpoint_is_verified_before_loading(tmp_path: Path, pg_url: str, s3_endpoint: str,
                                                             lf_env: Path, case: str) -> None:
    import boto3

    from workers.models import resolve_model

    weights = resolve_model("gdino_tiny", "detector", Settings(model_dir=lf_env)).files["checkpoint"].read_bytes()
    if case == "unloadable":
        weights = b"not a checkpoint at all"
    matches = case != "mismatch"
    bucket = f"finetuned-{case}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="ft/gdino-ft.pth", Body=weights)
    sha = hashlib.sha256(weights).hexdigest() if matches else "0" * 64
    write_scenes(tmp_path / "imgs", 2)
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    uri = f"s3://{bucket}/ft/gdino-ft.pth"
    config = {**CONFIG, "s3_endpoint_url": s3_endpoint, "checkpoints": {"detector": {"uri": uri, "sha256": sha}}}
    job_id, _ = prepare_job(factory, name="ft", source=open_source(str(tmp_path / "imgs")), config=config,
                            models={}, queue="lf.tiny-random")
    cache = tmp_path / "worker-cache"
    shutil.copytree(lf_env / "tiny-random", cache / "tiny-random")
    ctx = WorkerContext(Settings(db_url=pg_url, model_dir=cache, device="cpu"))
    try:
        counts = run_chunk(job_id, [1, 2], ctx=ctx)
    finally:
        ctx.close()
    rows = _items(factory)
    with factory() as s:
        stages = s.get(Job, job_id).models.get("stages")  # type: ignore[union-attr]
    engine.dispose()
    if case == "unloadable":  # verified, but not loadable: the job's fault, the worker stays healthy
        assert counts == {"failed": 2} and ctx.unhealthy is None
        assert rows[0].error.startswith("cannot load the job's fine-tuned checkpoints for gdino_tiny/sam_tiny: ")
    elif matches:
        assert counts == {"done": 2}
        assert {k: stages["detector"][k] for k in ("origin", "checkpoint_uri", "checkpoint_sha256")} == {
            "origin": "local", "checkpoint_uri": uri, "checkpoint_sha256": sha}
        assert (cache / "checkpoints" / sha / "gdino-ft.pth").read_bytes() == weights
    else:
        assert counts == {"failed": 2} and stages is None
        assert list((cache / "checkpoints" / sha).iterdir()) == []  # nothing unverified is kept
        assert rows[0].error == (f"checkpoint {uri} has sha256 {hashlib.sha256(weights).hexdigest()}, but the job "
                                 f"names {sha}: refusing to load it")
        assert ctx.unhealthy is None  # the job's fault, not the worker's


def test_submit_records_fine_tuned_checkpoints_on_the_job(tmp_path: Path, sqlite_url: str) -> None:
    import redis
    from typer.testing import CliRunner

    from labelfleet.cli import app
    from labelfleet.errors import ConfigError
    from tests.conftest import REDIS_URL, service_missing

    broker = REDIS_URL.rsplit("/", 1)[0] + "/9"
    try:
        redis.Redis.from_url(broker).ping()
    except Exception as exc:
        service_missing("Redis at " + broker, exc)
    write_scenes(tmp_path / "imgs", 2)
    args = ["submit", str(tmp_path / "imgs"), "--db", sqlite_url, "--broker", broker, "--job", "ft-cli",
            "--models", "tiny-random", "--classes", "cat"]
    bad = CliRunner().invoke(app, [*args, "--checkpoint", "detector=s3://b/k.pth@nothex"])
    assert isinstance(bad.exception, ConfigError) and "is not a sha256" in bad.exception.message
    ok = CliRunner().invoke(app, [*args, "--checkpoint", f"detector=s3://b/ft/gdino.pth@{SHA}"],
                            catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    engine = make_engine(sqlite_url)
    with session_factory(engine)() as s:
        config = repo.get_job(s, "ft-cli").config
    engine.dispose()
    assert config["checkpoints"] == {"detector": {"uri": "s3://b/ft/gdino.pth", "sha256": SHA}}
