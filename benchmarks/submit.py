"""Submit throughput: S3 listing, item inserts and enqueue, each alone and end to end (issue 13).

    python -m benchmarks.submit --keys 20000 [--chunk-size 32] [--json OUT] [--profile DIR]

Real services, as the tests use them: an S3 API (moto in server mode, in its own process so its
CPU is not this process's; its bucket is filled through moto's backend, not 20,000 PUTs), PostgreSQL
(``--db``, default the test server's ``test`` database: a fresh database is created per run and
dropped afterwards) and a private ``redis-server`` on a free port. Phases, each on a fresh job:

* ``listing``: iterate :class:`~labelfleet.storage.s3.S3Source` (list_objects_v2, 1,000 keys a page);
* ``insert``: :func:`labelfleet.db.repository.add_items` of the pre-listed refs;
* ``enqueue``: :func:`orchestrator.dispatch.enqueue_pending` (claims + publishes) of those items;
* ``end_to_end``: what ``labelfleet submit`` runs, :func:`orchestrator.submit.list_and_enqueue`
  (the listing, with the enqueue of committed items overlapping it), into an empty queue; the queue
  is then read back and must hold every item exactly once.

Figures are keys (items) per second of wall time. ``--profile DIR`` writes a cProfile per phase.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PG_ADMIN_URL = os.environ.get("LABELFLEET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BUCKET = "bench-submit"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on port {port}")


def serve_s3(port: int, keys: int) -> None:
    """Child mode: a moto S3 server with ``keys`` small objects in ``BUCKET``; runs until stdin closes."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(BUCKET, "us-east-1")
    for i in range(keys):  # 3 levels like a real dataset; a few non-images are skipped by the listing
        key = f"photos/{i // 4000:02d}/{i // 100 % 40:02d}/img_{i:07d}.jpg" if i % 500 else f"photos/notes_{i}.txt"
        backend.put_object(BUCKET, key, b"\xff\xd8\xff" + i.to_bytes(4, "big"))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    sys.stdin.read()
    server.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def s3_server(keys: int) -> Iterator[tuple[str, int]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.submit", "--serve-s3", str(port), "--keys", str(keys)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", "moto server failed"
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def redis_server() -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            _wait_port(port, "redis-server")
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait()


@contextmanager
def pg_database(admin_url: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (dropped afterwards)."""
    from sqlalchemy import create_engine, text

    from labelfleet.db import migrate

    name = f"lf_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        from labelfleet.db.engine import make_engine

        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _timed(name: str, fn: Callable[[], int], profile_dir: Path | None, s3_pid: int) -> dict[str, Any]:
    """Run one phase: keys/s of wall time, and how busy the S3 server's process was meanwhile
    (``s3_server_cpu``: its CPU seconds over the phase's wall seconds; 1.0 = one core saturated)."""
    prof = cProfile.Profile() if profile_dir else None
    cpu0 = cpu_seconds(s3_pid)
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    n = fn()
    if prof:
        prof.disable()
    dt = time.perf_counter() - t0
    s3_cpu = (cpu_seconds(s3_pid) - cpu0) / dt if dt else 0.0
    if prof and profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(profile_dir / f"{name}.prof"))
    out = {"keys": n, "seconds": round(dt, 3), "keys_per_s": round(n / dt, 1) if dt else None,
           "s3_server_cpu": round(s3_cpu, 3)}
    print(f"{name:>11}: {n:>7} keys in {dt:7.3f} s = {out['keys_per_s']:>9} keys/s   "
          f"(S3 server busy {s3_cpu:.2f} cores)", flush=True)
    return out


def queued_items(broker_url: str, queue: str) -> tuple[int, Counter[int]]:
    """``(messages, item id -> times published)`` of everything waiting in ``queue``."""
    import redis

    client = redis.Redis.from_url(broker_url)
    raws = client.lrange(queue, 0, -1)
    client.close()
    seen: Counter[int] = Counter()
    for raw in raws:
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        seen.update(body[1]["item_ids"])
    return len(raws), seen


def _new_job(factory: Any, name: str, queue: str) -> Any:
    from labelfleet.db import repository as repo

    with factory() as s:
        job, _ = repo.get_or_create_job(s, name, f"s3://{BUCKET}/photos/", {}, {}, queue=queue)
        s.commit()
        return job


def run(args: argparse.Namespace) -> dict[str, Any]:
    from labelfleet.db import repository as repo
    from labelfleet.db.engine import make_engine, session_factory
    from labelfleet.storage.s3 import S3Source
    from orchestrator.dispatch import enqueue_pending
    try:
        from orchestrator.submit import list_and_enqueue
    except ImportError:  # code from before issue 13's overlap (for before/after figures): list, then enqueue
        from orchestrator.jobs import list_job

        def list_and_enqueue(factory: Any, broker: str, *, chunk_size: int, **kw: Any) -> tuple[Any, int]:
            out = list_job(factory, **kw)
            return out, enqueue_pending(factory, out.job_id, broker, chunk_size=chunk_size)

    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    prof = Path(args.profile) if args.profile else None
    phases: dict[str, Any] = {}
    with s3_server(args.keys) as (endpoint, s3_pid), redis_server() as broker, pg_database(args.db) as db:
        uri = f"s3://{BUCKET}/photos/"
        refs: list[Any] = []
        phases["listing"] = _timed("listing", lambda: len(refs.extend(S3Source(uri, endpoint_url=endpoint).list())
                                                          or refs), prof, s3_pid)
        engine = make_engine(db)
        factory = session_factory(engine)
        job = _new_job(factory, "bench-insert", "lf.bench-phases")

        def insert() -> int:
            with factory() as s:
                return repo.add_items(s, s.merge(job), iter(refs))

        phases["insert"] = _timed("insert", insert, prof, s3_pid)
        phases["enqueue"] = _timed("enqueue", lambda: enqueue_pending(factory, job.id, broker,
                                                                      chunk_size=args.chunk_size), prof, s3_pid)
        queue = "lf.bench-e2e"

        def end_to_end() -> int:  # what `labelfleet submit` runs
            return list_and_enqueue(factory, broker, chunk_size=args.chunk_size, name="bench-e2e", config={},
                                    source=S3Source(uri, endpoint_url=endpoint), models={}, queue=queue)[1]

        phases["end_to_end"] = _timed("end_to_end", end_to_end, prof, s3_pid)
        messages, seen = queued_items(broker, queue)
        engine.dispose()
    exact = len(seen) == len(refs) and max(seen.values(), default=1) == 1
    print(f"queue check: {messages} messages, {len(seen)} distinct items, each once: {exact}")
    if not exact:
        raise SystemExit("the queue does not hold every item exactly once")
    return {"benchmark": "submit", "keys_in_bucket": args.keys, "image_keys": len(refs), "chunk_size": args.chunk_size,
            "phases": phases, "messages": messages, "exactly_once": exact,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=20000, help="objects in the bucket (every 500th is not an image)")
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--db", default=PG_ADMIN_URL, help="PostgreSQL admin URL; a fresh database is created on it")
    ap.add_argument("--json", help="write the record here")
    ap.add_argument("--profile", help="write one cProfile file per phase into this folder")
    ap.add_argument("--serve-s3", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_s3:
        serve_s3(args.serve_s3, args.keys)
        return
    record = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
