"""Submit jobs and (re-)enqueue their pending items in chunks. The database is the source of truth."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db.models import Item, ItemStatus, Job, JobState
from labelfleet.db.repository import rowcount, utcnow
from orchestrator.broker import enqueue_chunk

logger = logging.getLogger(__name__)


def enqueue_pending(factory: sessionmaker[Session], job_id: int, broker_url: str, *, chunk_size: int,
                    older_than_s: float | None = None, on_chunk: Callable[[int], None] | None = None) -> int:
    """Enqueue the job's pending items, ``chunk_size`` IDs per message; returns how many items.

    ``older_than_s=None`` enqueues only items never enqueued; a number also
    re-enqueues items whose last enqueue is older than that (lost messages).
    Items are marked ``enqueued_at`` before their message is published, so a
    crash in between only delays them until the sweeper's next pass.
    """
    with factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.state == JobState.CANCELLED or not job.queue:
            return 0
        queue = job.queue
        cond: Any = Item.enqueued_at.is_(None)
        if older_than_s is not None:
            cond = or_(cond, Item.enqueued_at < utcnow() - timedelta(seconds=older_than_s))
        ids = s.scalars(select(Item.id).where(Item.job_id == job_id, Item.status == ItemStatus.PENDING, cond)
                        .order_by(Item.id)).all()
    total = 0
    for start in range(0, len(ids), chunk_size):
        chunk = list(ids[start:start + chunk_size])
        with factory() as s:
            s.execute(update(Item).where(Item.id.in_(chunk)).values(enqueued_at=utcnow()))
            s.commit()
        enqueue_chunk(broker_url, queue, job_id, chunk)
        total += len(chunk)
        if on_chunk:
            on_chunk(len(chunk))
    return total


def set_state(factory: sessionmaker[Session], job_id: int, state: JobState) -> None:
    with factory() as s:
        s.execute(update(Job).where(Job.id == job_id).values(state=state))
        s.commit()


def retry_failed(factory: sessionmaker[Session], job_id: int, statuses: tuple[str, ...] = ("failed", "poison")) -> int:
    """Put failed/poison items back to pending with fresh attempts; returns how many."""
    with factory() as s:
        n = rowcount(s.execute(update(Item).where(Item.job_id == job_id, Item.status.in_(statuses)).values(
            status=ItemStatus.PENDING, attempts=0, error=None, enqueued_at=None, finished_at=None)))
        s.execute(update(Job).where(Job.id == job_id, Job.state == JobState.DONE).values(state=JobState.RUNNING))
        s.commit()
    return n
