"""An edit job on the cluster (issue 14): moto S3 + Redis + PostgreSQL + real `celery worker` subprocesses.

A worker is killed with SIGKILL mid-job; the job must still finish with every output written
exactly once. The output bucket is *versioned*, so any rewrite of a key would leave a second
version behind: one version per key proves nothing was written twice.
Edits come from tiny RANDOM weights and are meaningless.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import EditOutput, Item
from labelfleet.db.repository import get_job
from labelfleet.settings import Settings
from labelfleet.tasknames import edit_queue_for
from tests.test_distributed import RedisServer, _bucket
from tests.test_distributed import cluster_factory as cluster_factory
from tests.test_distributed import redis_server as redis_server

pytestmark = pytest.mark.slow


def _outputs(db: str, job: str) -> tuple[list[Any], dict[int, str], int]:
    engine = make_engine(db)
    with session_factory(engine)() as s:
        job_id = get_job(s, job).id
        rows = s.execute(select(EditOutput.item_id, EditOutput.output_key, EditOutput.output_uri)
                         .where(EditOutput.job_id == job_id)).all()
        status = dict(s.execute(select(Item.id, Item.status).where(Item.job_id == job_id)).tuples().all())
        retried = s.scalar(select(func.count()).where(Item.job_id == job_id, Item.attempts > 1)) or 0
    engine.dispose()
    return rows, status, int(retried)


def _wait_victim_busy(db: str, timeout: float = 180) -> None:
    """Until the victim holds a lease on some item (so the kill interrupts work in flight)."""
    engine = make_engine(db)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with session_factory(engine)() as s:
                if s.scalar(select(func.count()).where(Item.status == "running", Item.lease_owner.like("victim@%"))):
                    return
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError("the victim worker never leased an item")


def test_edit_job_survives_kill_9_and_writes_each_output_once(cluster_factory: Any, s3_endpoint: str,
                                                              redis_server: RedisServer, model_dir: Path) -> None:
    from workers.models import resolve_model

    resolve_model("sd_inpaint_tiny", "inpainter", Settings(model_dir=model_dir))  # before workers race for it
    _bucket(s3_endpoint, "edit-src", [f"photos/{i:03d}.jpg" for i in range(16)])
    s3 = _bucket(s3_endpoint, "edit-out", [])
    s3.put_bucket_versioning(Bucket="edit-out", VersioningConfiguration={"Status": "Enabled"})
    c = cluster_factory(redis_server.url, lease=30)
    out = c.cli("edit", "s3://edit-src/photos", "--target", "cat,dog", "--prompt", "a corgi", "--job", "ek9",
                "--out", "s3://edit-out/edits", "--models", "tiny-random", "--variants", "2", "--steps", "2",
                "--chunk-size", "2")
    queue = edit_queue_for("tiny-random")
    assert f"16 images enqueued on queue {queue}" in out
    workers = [c._spawn("worker", "-n", f"{n}@%h", "--loglevel", "WARNING", "--queues", queue)
               for n in ("victim", "survivor")]
    c.sweeper()
    _wait_victim_busy(c.db)
    os.killpg(workers[0].pid, signal.SIGKILL)
    summary = c.wait_done("ek9")
    assert summary["done"] + summary["skipped"] == 16 and summary["done"] >= 1, summary["failures"]
    rows, status, retried = _outputs(c.db, "ek9")
    print(f"\nedit job: {summary['done']} done, {summary['skipped']} skipped, {retried} items re-run after the kill")
    assert retried >= 1  # the kill interrupted leased work
    done = [i for i, st in status.items() if st == "done"]
    assert sorted({r.item_id for r in rows}) == sorted(done)
    assert len(rows) == 2 * len(done)  # union mode, 2 variants per done image
    versions: dict[str, int] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket="edit-out"):
        for v in page.get("Versions", []):
            versions[v["Key"]] = versions.get(v["Key"], 0) + 1
    assert sorted(versions) == sorted(f"edits/{r.output_key}" for r in rows)
    assert set(versions.values()) == {1}, {k: n for k, n in versions.items() if n > 1}
    assert all(r.output_uri == f"s3://edit-out/edits/{r.output_key}" for r in rows)
