"""Exactly-once enqueue bookkeeping (issue 10) on real PostgreSQL/SQLite and Redis.

Assertions are on the messages actually sitting in the Redis queue (their
item IDs), not on a database constraint: no item is published twice by racing
submits, and the sweeper never republishes an item whose message still waits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from labelfleet.db import migrate
from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Item
from labelfleet.types import ImageRef
from orchestrator.dispatch import enqueue_pending
from orchestrator.sweeper import sweep
from tests.conftest import REPO
from tests.test_distributed import RedisServer, redis_server  # noqa: F401  (fixture)


def _queued(client: Any, queue: str) -> list[tuple[str, list[int]]]:
    """``(message id, item ids)`` of every message waiting in ``queue``, oldest first."""
    import base64

    out = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        env = json.loads(raw)
        body = json.loads(base64.b64decode(env["body"]))
        out.append((env["headers"]["id"], body[1]["item_ids"]))
    return out


def _job(db_url: str, n: int, queue: str) -> tuple[Any, Any, int]:
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    with factory() as s:
        job, _ = repo.get_or_create_job(s, "eq", "/src", {}, {}, queue=queue)
        s.commit()
        repo.add_items(s, job, (ImageRef("/src", f"{i}.jpg") for i in range(n)))
        return engine, factory, job.id


def test_racing_enqueuers_publish_each_item_once(db_url: str, redis_server: RedisServer) -> None:  # noqa: F811
    import redis

    queue = f"lf.race-{uuid.uuid4().hex[:6]}"
    engine, factory, job_id = _job(db_url, 120, queue)
    counts: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            counts.append(enqueue_pending(factory, job_id, redis_server.url, chunk_size=1))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def sweeper() -> None:  # sweeps racing a submit that is still enqueueing
        try:
            for _ in range(3):
                counts.append(sweep(factory, redis_server.url, max_attempts=3, chunk_size=1,
                                    requeue_after_s=30).requeued)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)] + [threading.Thread(target=sweeper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    published = Counter(i for _, ids in _queued(redis.Redis.from_url(redis_server.url), queue) for i in ids)
    with factory() as s:
        all_ids = set(s.scalars(select(Item.id).where(Item.job_id == job_id)).all())
    assert set(published) == all_ids and max(published.values()) == 1 and sum(counts) == 120
    engine.dispose()


def test_sweeper_republishes_only_lost_messages(db_url: str, redis_server: RedisServer) -> None:  # noqa: F811
    import redis

    client = redis.Redis.from_url(redis_server.url)
    queue = f"lf.sweep-{uuid.uuid4().hex[:6]}"
    engine, factory, job_id = _job(db_url, 10, queue)
    assert enqueue_pending(factory, job_id, redis_server.url, chunk_size=4) == 10
    first = _queued(client, queue)
    assert [len(ids) for _, ids in first] == [4, 4, 2]
    with factory() as s:  # the queue is long: these messages have waited for two hours
        s.execute(update(Item).values(enqueued_at=repo.utcnow() - timedelta(hours=2)))
        s.commit()
    for _ in range(3):
        report = sweep(factory, redis_server.url, max_attempts=3, chunk_size=4, requeue_after_s=0)
        assert report.requeued == 0
    assert _queued(client, queue) == first
    # One message is delivered to a worker (unacked), one is lost (broker restart, dead-lettered...).
    delivered = client.rpop(queue)
    client.hset("unacked", "tag-1", json.dumps([json.loads(delivered), "", queue]))
    lost_id, lost_items = _queued(client, queue)[0]
    client.rpop(queue)
    report = sweep(factory, redis_server.url, max_attempts=3, chunk_size=4, requeue_after_s=0)
    assert report.requeued == len(lost_items) == 4
    after = _queued(client, queue)
    assert [ids for _, ids in after] == [first[2][1], lost_items] and after[1][0] != lost_id
    with factory() as s:
        ids = {i: m for i, m in s.execute(select(Item.id, Item.message_id).where(Item.id.in_(lost_items)))}
    assert set(ids.values()) == {after[1][0]}  # the items now point at their new message
    assert sweep(factory, redis_server.url, max_attempts=3, chunk_size=4, requeue_after_s=0).requeued == 0
    engine.dispose()


def test_parallel_submit_cli_no_traceback_no_duplicates(tmp_path: Path, pg_url: str,
                                                        redis_server: RedisServer) -> None:  # noqa: F811
    import redis

    from tests.imagegen import write_scenes

    write_scenes(tmp_path / "imgs", 40)
    env = {**os.environ, "LABELFLEET_DB_URL": pg_url, "LABELFLEET_BROKER_URL": redis_server.url,
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "labelfleet", "submit", str(tmp_path / "imgs"), "--job", "par", "--classes", "cat",
           "--models", "tiny-random", "--chunk-size", "2"]
    subprocess.run([sys.executable, "-m", "labelfleet", "db", "upgrade"], env=env, cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0 and "Traceback" not in out + err and "IntegrityError" not in out + err, (rc, out, err)
    enqueued = sum(int(re.search(r"^job par (?:created|continued): (\d+) items enqueued", out, re.M)[1])  # type: ignore[index]
                   for _, out, _ in results)
    published = Counter(i for _, ids in _queued(redis.Redis.from_url(redis_server.url), "lf.tiny-random")
                        for i in ids)
    assert len(published) == 40 and max(published.values()) == 1 and enqueued == 40, (published, results)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--chunk-size", "5000"], {}, "Invalid value for '--chunk-size': Input should be less than or equal to 1000"),
    ([], {"LABELFLEET_CHUNK_SIZE": "5000"}, "setting chunk_size (env LABELFLEET_CHUNK_SIZE): Input should be less "
                                            "than or equal to 1000"),
])
def test_chunk_size_is_bounded(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "labelfleet", "submit", str(tmp_path), "--db",
                          f"sqlite:///{tmp_path / 'x.db'}", *args], env={**os.environ, **env}, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    text = " ".join(out.stderr.split())
    assert out.returncode == 2 and message in text and "Traceback" not in text, out.stderr


def test_parallel_conflicting_submits_one_wins_other_exits_2(tmp_path: Path, pg_url: str,
                                                             redis_server: RedisServer) -> None:  # noqa: F811
    """Same job name, different settings, at the same time: one creates the job, the other gets one line, exit 2."""
    from tests.imagegen import write_scenes

    write_scenes(tmp_path / "imgs", 6)
    env = {**os.environ, "LABELFLEET_DB_URL": pg_url, "LABELFLEET_BROKER_URL": redis_server.url}
    subprocess.run([sys.executable, "-m", "labelfleet", "db", "upgrade"], env=env, cwd=REPO, check=True,
                   capture_output=True, timeout=300)
    procs = [subprocess.Popen([sys.executable, "-m", "labelfleet", "submit", str(tmp_path / "imgs"), "--job", "cf",
                               "--classes", classes, "--models", "tiny-random"], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for classes in ("cat", "dog")]
    results = sorted((p.wait(timeout=600), *p.communicate()) for p in procs)
    (ok, ok_out, _), (bad, _, bad_err) = results
    assert (ok, bad) == (0, 2) and "6 items enqueued" in ok_out, results
    text = " ".join(bad_err.split())  # rich wraps at the terminal width; a progress bar may come first
    assert text.count("error:") == 1 and "Traceback" not in bad_err
    assert text.endswith("error: job 'cf' already exists with different settings (classes); re-run with the same "
                         "options or pick another --job name")


def test_racing_prepare_job_creates_one_job(tmp_path: Path, pg_url: str) -> None:
    """Threads released together by a barrier create the same job: one creates it, the others continue it."""
    from labelfleet.storage import open_source
    from orchestrator.jobs import prepare_job
    from tests.imagegen import write_scenes

    write_scenes(tmp_path / "imgs", 3)
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    barrier = threading.Barrier(6)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def run() -> None:
        src = open_source(str(tmp_path / "imgs"))
        barrier.wait()
        try:
            results.append(prepare_job(factory, name="race", source=src, config={}, models={}, queue="lf.x"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len({job_id for job_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 5 + [True]
    engine.dispose()


def test_submit_enqueues_while_listing_each_item_once_in_whole_chunks(tmp_path: Path, pg_url: str,
                                                                     redis_server: RedisServer) -> None:  # noqa: F811
    """``submit``'s enqueue overlaps its listing (issue 13): still every item once, and every message
    full except the last; a second submit of the unchanged source enqueues nothing."""
    import redis

    from labelfleet.storage import open_source
    from orchestrator.submit import list_and_enqueue

    for i in range(2345):  # three listing batches of 1,000 and a partial one
        (tmp_path / f"{i:05d}.jpg").write_bytes(b"\xff\xd8\xff")
    engine = make_engine(pg_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    queue = f"lf.overlap-{uuid.uuid4().hex[:6]}"
    for expected in (2345, 0):
        listing, n = list_and_enqueue(factory, redis_server.url, chunk_size=8, name="ov",
                                      source=open_source(str(tmp_path)), config={}, models={}, queue=queue)
        assert n == expected
    messages = _queued(redis.Redis.from_url(redis_server.url), queue)
    published = Counter(i for _, ids in messages for i in ids)
    with factory() as s:
        all_ids = set(s.scalars(select(Item.id).where(Item.job_id == listing.job_id)).all())
    assert set(published) == all_ids and max(published.values()) == 1 and len(all_ids) == 2345
    sizes = sorted((len(ids) for _, ids in messages), reverse=True)
    assert sizes[:-1] == [8] * (len(sizes) - 1) and sizes[-1] == 2345 % 8 == 1
    engine.dispose()
