"""Incremental jobs on a real bucket (moto S3) and database: new keys, changed ETags, stored job state, img/s."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from labelfleet.db import migrate
from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Item, ItemStatus, Job
from labelfleet.db.queries import job_summary, worker_throughput
from labelfleet.storage.base import open_source
from orchestrator.jobs import list_job


@pytest.fixture
def factory(db_url: str) -> Iterator[object]:
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


def _finish_all(factory: object, job_id: int) -> None:
    with factory() as s:  # type: ignore[operator]
        s.execute(update(Item).where(Item.job_id == job_id).values(status=ItemStatus.DONE, finished_at=repo.utcnow()))
        s.commit()
        assert repo.mark_job_finished(s, job_id)


def test_bucket_relisting_adds_new_keys_and_relabels_changed_etags(factory, s3_endpoint: str) -> None:  # type: ignore[no-untyped-def]
    import uuid

    import boto3

    bucket = f"lf-incremental-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=bucket)
    for i in range(3):
        client.put_object(Bucket=bucket, Key=f"p/{i}.jpg", Body=f"v1-{i}".encode())
    src = open_source(f"s3://{bucket}/p", s3_endpoint_url=s3_endpoint)
    first = list_job(factory, name="b", source=src, config={}, models={}, queue="lf.x")
    assert first.created and first.added == 3
    _finish_all(factory, first.job_id)
    with factory() as s:
        job = s.get(Job, first.job_id)
        assert job.state == "done" and job.finished_at is not None

    client.put_object(Bucket=bucket, Key="p/3.jpg", Body=b"new")
    client.put_object(Bucket=bucket, Key="p/1.jpg", Body=b"overwritten, other etag")
    plain = list_job(factory, name="b", source=src, config={}, models={}, queue="lf.x")
    assert (plain.added, plain.changed, plain.relabelled) == (1, 1, 0)
    with factory() as s:
        statuses = dict(s.execute(select(Item.key, Item.status).where(Item.job_id == first.job_id)).all())
        assert statuses == {"0.jpg": "done", "1.jpg": "done", "2.jpg": "done", "3.jpg": "pending"}
        assert s.get(Job, first.job_id).state == "running"  # new work: the job is no longer done

    changed = list_job(factory, name="b", source=src, config={}, models={}, queue="lf.x", changed=True)
    assert (changed.added, changed.changed, changed.relabelled) == (0, 1, 1)
    with factory() as s:
        row = s.execute(select(Item.status, Item.etag, Item.attempts).where(
            Item.job_id == first.job_id, Item.key == "1.jpg")).one()
        summary = job_summary(s, s.get(Job, first.job_id))
    etag = client.head_object(Bucket=bucket, Key="p/1.jpg")["ETag"].strip('"')
    assert row == ("pending", etag, 0)
    assert summary["last_listing"]["relabelled"] == 1 and summary["last_listing"]["images"] == 4

    again = list_job(factory, name="b", source=src, config={}, models={}, queue="lf.x", changed=True)
    assert (again.added, again.changed) == (0, 0)  # the new ETag was stored: changed once, not forever


def test_worker_rate_is_over_its_active_time_not_five_minutes(factory) -> None:  # type: ignore[no-untyped-def]
    from labelfleet.types import ImageRef

    with factory() as s:
        job, _ = repo.get_or_create_job(s, "rate", "/x", {}, {})
        repo.add_items(s, job, [ImageRef("/x", f"{i}.jpg") for i in range(11)])
        end = repo.utcnow()
        for i, item in enumerate(s.scalars(select(Item).where(Item.job_id == job.id).order_by(Item.id))):
            item.status, item.worker = ItemStatus.DONE, "local:h:1:abc"
            item.finished_at = end - timedelta(seconds=10 - i)  # one every second, over 10 s
            item.timings = {"read_decode": 5.0, "detect": 0.5, "segment": 0.5}  # 1 s of model time per image
        s.commit()
        (w,) = worker_throughput(s, job.id)
    assert w["done"] == 11 and w["active_s"] == pytest.approx(11.0, abs=0.01)
    assert w["images_per_s"] == pytest.approx(1.0, abs=0.01)  # not 11 / 300
