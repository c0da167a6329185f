"""Distributed jobs on real services: S3 (moto server), Redis, PostgreSQL, `celery worker` subprocesses.

Every scenario checks the same invariant: done + failed + skipped + poison == total,
with no duplicated label rows, after faults (kill -9, broker loss, database restart,
a worker with broken models, a paused worker, a slow worker). Waits are deadlines on
conditions, scaled by ``LABELFLEET_TEST_SLOWDOWN`` (tests/waiting.py).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Detection, Item
from labelfleet.db.queries import job_summary
from labelfleet.db.repository import get_job
from tests.conftest import CI, REPO, service_missing
from tests.imagegen import scene
from tests.waiting import scaled, wait_until

runner = CliRunner()
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server (no persistence) that a test may kill and restart empty."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            service_missing("redis-server binary", FileNotFoundError("redis-server"))
        self.proc = subprocess.Popen([str(exe), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.tmp)], stdout=subprocess.DEVNULL)
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    scene(seed, 96, 72).save(buf, "JPEG")
    return buf.getvalue()


def _bucket(endpoint: str, name: str, keys: list[str], extra: dict[str, bytes] | None = None) -> Any:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=name)
    for i, key in enumerate(keys):
        s3.put_object(Bucket=name, Key=key, Body=_jpeg(i))
    for key, body in (extra or {}).items():
        s3.put_object(Bucket=name, Key=key, Body=body)
    return s3


class Cluster:
    """Workers and a sweeper as subprocesses, sharing one environment."""

    def __init__(self, db: str, broker: str, s3: str, model_dir: Path, tmp: Path, lease: int | None = 60,
                 chunk_size: int | None = 4) -> None:
        """``lease``/``chunk_size`` None: the defaults of labelfleet.settings (as deployed)."""
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LABELFLEET_")}
        self.env.update({"LABELFLEET_DB_URL": db, "LABELFLEET_BROKER_URL": broker,
                         "LABELFLEET_S3_ENDPOINT_URL": s3, "LABELFLEET_MODEL_DIR": str(model_dir),
                         "LABELFLEET_DEVICE": "cpu", "LABELFLEET_MODELS": "tiny-random",
                         "LABELFLEET_BATCH_SIZE": "4", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
        if lease is not None:
            self.env["LABELFLEET_LEASE_SECONDS"] = str(lease)
        if chunk_size is not None:
            self.env["LABELFLEET_CHUNK_SIZE"] = str(chunk_size)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.db = db
        self.tmp = tmp

    def _spawn(self, *args: str, env: dict[str, str] | None = None, log: Path | None = None
               ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed when the test ends)
        proc = subprocess.Popen([sys.executable, "-m", "labelfleet", *args], cwd=REPO, env={**self.env, **(env or {})},
                                stdout=out, stderr=out, start_new_session=True)
        self.procs.append(proc)
        return proc

    def health_dir(self, name: str) -> Path:
        return self.tmp / f"health-{name}"

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def worker(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """A worker node ``name@host`` with its own health folder and log file (extra env vars on top)."""
        env = {"LABELFLEET_HEALTH_DIR": str(self.health_dir(name)), **env}
        return self._spawn("worker", "-n", f"{name}@%h", "--loglevel", "WARNING", env=env,
                           log=self.tmp / f"{name}.log")

    def sweeper(self, every: str = "1") -> subprocess.Popen[bytes]:
        return self._spawn("sweep", "--every", every, "--requeue-after", "3", log=self.tmp / "sweeper.log")

    def items(self) -> list[Any]:
        engine = make_engine(self.db)
        try:
            with session_factory(engine)() as s:
                return list(s.execute(select(Item.id, Item.status, Item.attempts, Item.worker, Item.lease_owner,
                                             Item.error).order_by(Item.id)).all())
        finally:
            engine.dispose()

    def cli(self, *args: str) -> str:
        result = runner.invoke(app, list(args), env=self.env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    def summary(self, job: str) -> dict[str, Any]:
        engine = make_engine(self.db)
        try:
            with session_factory(engine)() as s:
                return job_summary(s, get_job(s, job))
        finally:
            engine.dispose()

    def wait_done(self, job: str, timeout: float = 300) -> dict[str, Any]:
        return wait_until(lambda: (lambda s: s if s["state"] == "done" else None)(self.summary(job)), timeout,
                          f"job {job} to finish", interval=1, ignore=(Exception,))

    def wait_progress(self, job: str, at_least: int, timeout: float = 180) -> None:
        wait_until(lambda: self.summary(job)["done"] >= at_least, timeout, f"{at_least} items of {job} done",
                   interval=0.3, ignore=(Exception,))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture
def cluster_factory(pg_url: str, s3_endpoint: str, model_dir: Path, tmp_path: Path) -> Iterator[Any]:
    from labelfleet.settings import Settings
    from workers.models import resolve_model

    settings = Settings(model_dir=model_dir)  # generate tiny models once, before workers race for them
    for key, stage in (("gdino_tiny", "detector"), ("sam_tiny", "segmenter"), ("ram_plus_tiny", "tagger")):
        resolve_model(key, stage, settings)
    made: list[Cluster] = []

    def make(broker: str, lease: int | None = 60, chunk_size: int | None = 4) -> Cluster:
        c = Cluster(pg_url, broker, s3_endpoint, model_dir, tmp_path, lease, chunk_size)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def assert_invariant(cluster: Cluster, summary: dict[str, Any]) -> None:
    assert summary["done"] + summary["failed"] + summary["skipped"] + summary["poison"] == summary["total"], summary
    engine = make_engine(cluster.db)
    with session_factory(engine)() as s:
        dup = s.execute(select(Detection.item_id, Detection.idx).group_by(Detection.item_id, Detection.idx)
                        .having(func.count() > 1)).all()
        keys = s.execute(select(Item.key).group_by(Item.job_id, Item.key).having(func.count() > 1)).all()
    engine.dispose()
    assert dup == [] and keys == []


def test_bucket_job_with_two_workers(cluster_factory: Any, s3_endpoint: str, redis_server: RedisServer) -> None:
    keys = [f"photos/img {i:03d} é.jpg" if i % 50 == 0 else f"photos/img_{i:03d}.jpg" for i in range(300)]
    s3 = _bucket(s3_endpoint, "big", keys, {"photos/corrupt.jpg": b"\xff\xd8\xff broken", "photos/gone.jpg": _jpeg(1),
                                           "photos/readme.txt": b"not an image"})
    c = cluster_factory(redis_server.url)
    t0 = time.monotonic()
    c.cli("submit", "s3://big/photos", "--job", "big", "--classes", "cat,dog")
    t_submit = time.monotonic() - t0
    c.cli("submit", "s3://big/photos", "--job", "big", "--classes", "cat,dog")  # double submit adds nothing
    s3.delete_object(Bucket="big", Key="photos/gone.jpg")  # deleted between listing and fetch
    t0 = time.monotonic()
    c.worker("w1")
    c.worker("w2")
    c.sweeper()
    summary = c.wait_done("big", timeout=600)
    elapsed = time.monotonic() - t0
    assert summary["total"] == 302 and summary["failed"] == 1 and summary["skipped"] == 1, summary
    assert {f["status"] for f in summary["failures"]} == {"failed", "skipped"}
    assert any("object no longer exists" in f["reason"] for f in summary["failures"])
    assert_invariant(c, summary)
    print(f"\nsubmit: 302 keys listed+enqueued in {t_submit:.2f}s ({302 / t_submit:.0f} keys/s); "
          f"2 workers labelled {summary['done']} images in {elapsed:.1f}s ({summary['done'] / elapsed:.2f} img/s)")


def test_listing_over_1000_keys_resumes_and_is_idempotent(cluster_factory: Any, s3_endpoint: str,
                                                          redis_server: RedisServer) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="wide")
    body = _jpeg(0)
    for i in range(1100):
        s3.put_object(Bucket="wide", Key=f"k/{i:05d}.jpg", Body=body)
    c = cluster_factory(redis_server.url)
    t0 = time.monotonic()
    c.cli("submit", "s3://wide/k/", "--job", "wide", "--classes", "cat")
    took = time.monotonic() - t0
    c.cli("submit", "s3://wide/k/", "--job", "wide", "--classes", "cat")
    print(f"\nsubmit: 1100 keys (2 S3 pages) listed+enqueued in {took:.2f}s ({1100 / took:.0f} keys/s)")
    summary = c.summary("wide")
    assert summary["total"] == 1100 and summary["pending"] == 1100


def test_kill_9_worker_mid_job(cluster_factory: Any, s3_endpoint: str, redis_server: RedisServer) -> None:
    _bucket(s3_endpoint, "kill-nine", [f"{i:03d}.jpg" for i in range(60)])
    c = cluster_factory(redis_server.url, lease=20)
    c.cli("submit", "s3://kill-nine", "--job", "k9", "--classes", "cat,dog", "--no-masks")
    victim = c.worker("victim")
    c.worker("survivor")
    c.sweeper()
    c.wait_progress("k9", 5)
    os.killpg(victim.pid, signal.SIGKILL)
    summary = c.wait_done("k9")
    assert summary["done"] == 60
    assert_invariant(c, summary)


def test_redis_restart_loses_queue_job_still_finishes(cluster_factory: Any, s3_endpoint: str,
                                                      redis_server: RedisServer) -> None:
    _bucket(s3_endpoint, "redis-restart", [f"{i:03d}.jpg" for i in range(60)])
    c = cluster_factory(redis_server.url, lease=20)
    c.cli("submit", "s3://redis-restart", "--job", "rr", "--classes", "cat,dog", "--no-masks")
    c.worker("w1")
    c.sweeper()
    c.wait_progress("rr", 5)
    redis_server.stop()  # every queued message is lost
    time.sleep(2)
    redis_server.start()
    summary = c.wait_done("rr")
    assert summary["done"] == 60
    assert_invariant(c, summary)


def test_postgres_restart_mid_job(cluster_factory: Any, s3_endpoint: str, redis_server: RedisServer) -> None:
    if not CI and os.environ.get("LABELFLEET_TEST_RESTART_PG") != "1":
        pytest.skip("restarts the machine's PostgreSQL: runs in CI or with LABELFLEET_TEST_RESTART_PG=1")
    _bucket(s3_endpoint, "pg-restart", [f"{i:03d}.jpg" for i in range(60)])
    c = cluster_factory(redis_server.url, lease=20)
    c.cli("submit", "s3://pg-restart", "--job", "pg", "--classes", "cat,dog", "--no-masks")
    c.worker("w1")
    c.sweeper()
    c.wait_progress("pg", 5)
    cluster = os.listdir("/etc/postgresql")[0]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"], check=True,
                   timeout=120)
    summary = c.wait_done("pg")
    assert summary["done"] == 60
    assert_invariant(c, summary)


def test_cancel_then_resume(cluster_factory: Any, s3_endpoint: str, redis_server: RedisServer) -> None:
    _bucket(s3_endpoint, "cancel-resume", [f"{i:03d}.jpg" for i in range(40)])
    c = cluster_factory(redis_server.url)
    c.cli("submit", "s3://cancel-resume", "--job", "cr", "--classes", "cat", "--no-masks")
    c.cli("cancel", "cr")
    c.worker("w1")
    import redis

    r = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: r.llen("lf.tiny-random") == 0 and r.hlen("unacked") == 0, 180,
               "the worker to drain the queue, dropping the cancelled job's chunks")
    summary = c.summary("cr")
    assert summary["state"] == "cancelled" and summary["done"] == 0 and summary["pending"] == 40
    c.cli("resume", "cr")
    summary = c.wait_done("cr")
    assert summary["done"] == 40
    assert_invariant(c, summary)


def _truncated_model_dir(model_dir: Path, dest: Path) -> Path:
    """A copy of the model cache whose GroundingDINO checkpoint is cut short (a broken download or disk)."""
    shutil.copytree(model_dir / "tiny-random", dest / "tiny-random")
    ckpt = next((dest / "tiny-random" / "gdino_tiny").glob("*.pth"))
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    return dest


@pytest.mark.parametrize("sickness", ["broken-models", "device-fault"])
def test_sick_worker_exits_and_the_healthy_one_does_the_job_uncharged(
        cluster_factory: Any, s3_endpoint: str, redis_server: RedisServer, model_dir: Path, tmp_path: Path,
        sickness: str) -> None:
    """A worker whose models do not load (at start) or whose device faults (mid-task) exits non-zero."""
    bucket = f"sick-{sickness}"
    _bucket(s3_endpoint, bucket, [f"{i:03d}.jpg" for i in range(40)])
    c = cluster_factory(redis_server.url)
    c.cli("submit", f"s3://{bucket}", "--job", "sick", "--classes", "cat,dog", "--no-masks")
    if sickness == "broken-models":
        sick = c.worker("sick", LABELFLEET_MODEL_DIR=str(_truncated_model_dir(model_dir, tmp_path / "broken")))
        reason = "cannot load models ram_plus_tiny/gdino_tiny/sam_tiny: cannot read GroundingDINO checkpoint"
    else:
        sick = c.worker("sick", LABELFLEET_TEST_FAULT="device_fault")  # RuntimeError("CUDA error: ...") in a task
        reason = "device fault: RuntimeError: CUDA error: an illegal memory access was encountered"
        wait_until(lambda: (c.health_dir("sick") / "ready").exists() or sick.poll() is not None, 300,
                   "the sick worker to start first")
    c.worker("healthy")
    c.sweeper()
    code = wait_until(lambda: sick.poll() is not None and [sick.returncode], 300, "the sick worker to exit")
    assert code == [1], c.log("sick")
    assert (c.health_dir("sick") / "unhealthy").read_text().startswith(reason)
    assert not (c.health_dir("sick") / "ready").exists() and f"worker unhealthy, it takes no more work and exits: " \
        f"{reason}" in c.log("sick")
    summary = c.wait_done("sick")
    items = c.items()
    assert summary["done"] == 40 and (c.health_dir("healthy") / "ready").exists()
    assert {i.worker.split("@")[0] for i in items} == {"healthy"}
    assert {i.attempts for i in items} == {1}, [(i.id, i.attempts, i.error) for i in items if i.attempts != 1]
    unhealthy = json.loads(c.cli("status", "sick", "--json"))["unhealthy_workers"]  # the sick one, and why
    assert [w["worker"].split("@")[0] for w in unhealthy] == ["sick"] and unhealthy[0]["reason"].startswith(reason)
    assert_invariant(c, summary)


def test_out_of_memory_halves_the_batch_in_a_worker(cluster_factory: Any, s3_endpoint: str,
                                                    redis_server: RedisServer) -> None:
    _bucket(s3_endpoint, "oom", [f"{i:03d}.jpg" for i in range(12)])
    c = cluster_factory(redis_server.url)
    c.cli("submit", "s3://oom", "--job", "oom", "--classes", "cat,dog", "--no-masks")
    c.worker("small-gpu", LABELFLEET_TEST_FAULT="oom_over:1")  # torch.OutOfMemoryError above 1 image per batch
    c.sweeper()
    summary = c.wait_done("oom")
    assert summary["done"] == 12 and {i.attempts for i in c.items()} == {1}
    log = c.log("small-gpu")
    assert "out of memory on a batch of 4 images (OutOfMemoryError); retrying as batches of 2" in log
    assert "out of memory on a batch of 2 images (OutOfMemoryError); retrying as batches of 1" in log
    assert_invariant(c, summary)


def test_paused_worker_loses_its_items_and_a_slow_one_keeps_them(cluster_factory: Any, s3_endpoint: str,
                                                                 redis_server: RedisServer) -> None:
    lease = 10
    _bucket(s3_endpoint, "pause-slow", [f"{i:03d}.jpg" for i in range(12)])
    c = cluster_factory(redis_server.url, lease=lease)  # chunks of 4 = batches of 4
    c.cli("submit", "s3://pause-slow", "--job", "ps", "--classes", "cat,dog", "--no-masks")
    slow = c.worker("slow", LABELFLEET_TEST_FAULT=f"slow:{2 * lease}")  # every batch takes 2 lease TTLs
    c.sweeper()
    wait_until(lambda: any((i.lease_owner or "").startswith("slow@") for i in c.items()), 180,
               "the slow worker to take a chunk")
    paused = c.worker("paused", LABELFLEET_TEST_FAULT="slow:5")
    held = wait_until(lambda: [i.id for i in c.items() if (i.lease_owner or "").startswith("paused@")], 180,
                      "the paused worker to take a chunk")
    os.killpg(paused.pid, signal.SIGSTOP)
    time.sleep(3 * lease)  # the scenario: paused for 3 lease TTLs (no heartbeat while stopped)
    wait_until(lambda: not any((i.lease_owner or "").startswith("paused@") for i in c.items() if i.id in held),
               60, "the paused worker's leases to be taken away")
    os.killpg(paused.pid, signal.SIGCONT)
    wait_until(lambda: "lease lost before its labels were written" in c.log("paused"), 120,
               "the paused worker's late writes to be refused")
    os.killpg(paused.pid, signal.SIGKILL)
    summary = c.wait_done("ps", timeout=600)
    items = {i.id: i for i in c.items()}
    assert summary["done"] == 12
    assert all(not items[i].worker.startswith("paused@") and items[i].attempts >= 2 for i in held)
    kept = [i for i in items.values() if i.id not in held and i.worker.startswith("slow@") and i.attempts == 1]
    assert len(kept) >= 4, list(items.values())  # its first chunk: batches longer than the lease, never lost
    assert slow.poll() is None
    assert_invariant(c, summary)


def test_kill_9_with_default_lease_items_worked_on_again_within_2_minutes(
        cluster_factory: Any, s3_endpoint: str, redis_server: RedisServer) -> None:
    _bucket(s3_endpoint, "kill-default", [f"{i:03d}.jpg" for i in range(40)])
    c = cluster_factory(redis_server.url, lease=None, chunk_size=None)  # default lease TTL and chunk size
    c.cli("submit", "s3://kill-default", "--job", "kd", "--classes", "cat,dog", "--no-masks")
    victim = c.worker("victim", LABELFLEET_TEST_FAULT="slow:6")  # slow enough to be killed mid-chunk
    c.sweeper(every="30")  # the deployed sweeper interval (<= 30 s, see deploy/CONFIG.md)
    wait_until(lambda: sum(i.status == "done" for i in c.items()) >= 4, 300, "the victim to label 4 items")
    c.worker("survivor")
    wait_until(lambda: (c.health_dir("survivor") / "ready").exists(), 300, "the survivor to load its models")
    held = [i.id for i in c.items() if (i.lease_owner or "").startswith("victim@")]
    assert held, "the victim finished its chunk before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    t_kill = time.monotonic()

    def taken_over() -> bool:
        items = {i.id: i for i in c.items()}
        return all((items[i].status == "done" and not items[i].worker.startswith("victim@"))
                   or (items[i].lease_owner or "").startswith("survivor@") for i in held)

    wait_until(taken_over, 120, f"another worker to take the {len(held)} items of the killed one")
    print(f"\nkill -9 with default settings: {len(held)} items worked on again after "
          f"{time.monotonic() - t_kill:.0f}s (limit {scaled(120):.0f}s)")
    summary = c.wait_done("kd")
    assert summary["done"] == 40
    assert_invariant(c, summary)
