"""The sweeper against real Redis and PostgreSQL/SQLite: enqueue, expire leases, finish jobs."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from labelfleet.db import migrate
from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Item, ItemStatus, Job
from labelfleet.types import ImageRef
from orchestrator.sweeper import mark_done_if_finished, sweep
from tests.conftest import redis_database


@pytest.fixture
def broker() -> str:
    return redis_database(9)[0]


def test_sweep_enqueues_expires_and_finishes(db_url: str, broker: str) -> None:
    import redis

    engine = make_engine(db_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    queue = f"lf.test-{uuid.uuid4().hex[:6]}"
    with factory() as s:
        job, _ = repo.get_or_create_job(s, "sw", "/src", {}, {}, queue=queue)
        s.commit()
        repo.add_items(s, job, (ImageRef("/src", f"{i}.jpg") for i in range(10)))
        job_id = job.id
    report = sweep(factory, broker, max_attempts=3, chunk_size=4)
    assert report.requeued == 10 and redis.Redis.from_url(broker).llen(queue) == 3  # chunks of 4, 4, 2
    with factory() as s:  # a worker takes 4 items and dies; its lease expires
        ids = repo.claim_items(s, job_id, "dead", limit=4, lease_seconds=60)
        s.execute(update(Item).where(Item.id.in_(ids)).values(lease_expires_at=repo.utcnow() - timedelta(seconds=1)))
        s.commit()
    report = sweep(factory, broker, max_attempts=3, chunk_size=4)
    assert report.expired == 4 and report.requeued == 4 and not report.finished
    with factory() as s:
        s.execute(update(Item).values(status=ItemStatus.DONE))
        s.commit()
        s.execute(update(Item).where(Item.id == ids[0]).values(status=ItemStatus.PENDING))  # a concurrent retry
        s.commit()
    assert not mark_done_if_finished(factory, job_id)
    with factory() as s:
        s.execute(update(Item).values(status=ItemStatus.DONE))
        s.commit()
    assert sweep(factory, broker, max_attempts=3, chunk_size=4).finished == ["sw"]
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == "done" and job.finished_at is not None
    engine.dispose()


def test_resume_finishes_an_interrupted_listing(tmp_path, db_url: str, broker: str) -> None:  # type: ignore[no-untyped-def]
    import redis
    from typer.testing import CliRunner

    from labelfleet.cli import app
    from labelfleet.storage import open_source
    from tests.imagegen import write_scenes

    write_scenes(tmp_path / "imgs", 6)
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    queue = f"lf.test-{uuid.uuid4().hex[:6]}"
    src = open_source(str(tmp_path / "imgs"))
    with factory() as s:  # a submit that died after listing three keys
        job, _ = repo.get_or_create_job(s, "half", src.uri, {"include": [], "exclude": []}, {}, queue=queue)
        s.commit()
        refs = list(src.list())[:3]
        repo.add_items(s, job, iter(refs))
        job.listing_done = False
        s.commit()
    result = CliRunner().invoke(app, ["resume", "half", "--db", db_url, "--broker", broker])
    assert result.exit_code == 0, result.output
    assert "listing of" in result.output and "6 items enqueued" in result.output
    with factory() as s:
        job = repo.get_job(s, "half")
        assert job.listing_done and len(s.scalars(select(Item.id).where(Item.job_id == job.id)).all()) == 6
    assert redis.Redis.from_url(broker).llen(queue) >= 1
    engine.dispose()
