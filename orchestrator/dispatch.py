"""Submit jobs and (re-)enqueue their pending items in chunks. The database is the source of truth."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db.models import Item, ItemStatus, Job, JobState
from labelfleet.db.repository import rowcount, utcnow
from labelfleet.errors import ConfigError
from labelfleet.tasknames import MAX_CHUNK_ITEMS
from orchestrator.broker import enqueue_chunk, new_message_id

logger = logging.getLogger(__name__)


def enqueue_pending(factory: sessionmaker[Session], job_id: int, broker_url: str, *, chunk_size: int,
                    older_than_s: float | None = None, held: Collection[str] | None = None,
                    on_chunk: Callable[[int], None] | None = None) -> int:
    """Enqueue the job's pending items, ``chunk_size`` IDs per message; returns how many items.

    ``older_than_s=None`` enqueues only items never enqueued. A number also
    re-enqueues items last enqueued longer ago than that whose message is not
    in ``held`` (message ids the broker still holds, from
    :func:`orchestrator.broker.held_message_ids`; None = unknown, re-enqueue them all).
    Each chunk is claimed by ONE conditional ``UPDATE ... RETURNING`` that sets
    ``enqueued_at`` and ``message_id`` before the message is published, so two
    concurrent submits or sweepers never publish the same item twice; a crash
    in between only delays the chunk until the sweeper finds its message missing.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_ITEMS:
        raise ConfigError(f"chunk size must be between 1 and {MAX_CHUNK_ITEMS}, got {chunk_size}")
    with factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.state == JobState.CANCELLED or not job.queue:
            return 0
        queue = job.queue
    total = 0
    for chunk, message_id in _claimed_chunks(factory, job_id, chunk_size, older_than_s, held):
        enqueue_chunk(broker_url, queue, job_id, chunk, message_id)
        total += len(chunk)
        if on_chunk:
            on_chunk(len(chunk))
    return total


def _claimed_chunks(factory: sessionmaker[Session], job_id: int, chunk_size: int, older_than_s: float | None,
                    held: Collection[str] | None) -> Iterator[tuple[list[int], str]]:
    """Yield ``(item ids, message id)`` chunks, each already claimed (committed) for this publisher."""
    pending = (Item.job_id == job_id) & (Item.status == ItemStatus.PENDING)
    cutoff = utcnow() - timedelta(seconds=older_than_s or 0)  # before claiming: fresh claims are never stale
    while chunk := _claim(factory, pending & Item.enqueued_at.is_(None), chunk_size, message_id := new_message_id()):
        yield chunk, message_id
    if older_than_s is None:
        return
    stale = pending & (Item.enqueued_at < cutoff)
    with factory() as s:
        rows = s.execute(select(Item.id, Item.message_id).where(stale).order_by(Item.id)).all()
    lost = [i for i, m in rows if held is None or m not in held]
    for start in range(0, len(lost), chunk_size):
        if chunk := _claim(factory, stale & Item.id.in_(lost[start:start + chunk_size]), chunk_size,
                           message_id := new_message_id()):
            yield chunk, message_id


def _claim(factory: sessionmaker[Session], cond: Any, limit: int, message_id: str) -> list[int]:
    """Mark up to ``limit`` items matching ``cond`` enqueued as ``message_id``; returns their ids, sorted.

    PostgreSQL: the candidates are locked ``FOR UPDATE SKIP LOCKED``, which
    re-checks ``cond`` on the newest version of each locked row, so a concurrent
    claimer gets other items or none. SQLite serialises writers, which gives
    the same guarantee.
    """
    with factory() as s:
        sub = select(Item.id).where(cond).order_by(Item.id).limit(limit)
        if s.get_bind().dialect.name == "postgresql":
            sub = sub.with_for_update(skip_locked=True)
        # No second copy of ``cond`` out here: PostgreSQL would then re-run the LIMIT subquery per row.
        ids = s.scalars(update(Item).where(Item.id.in_(sub.scalar_subquery()))
                        .values(enqueued_at=utcnow(), message_id=message_id).returning(Item.id)
                        .execution_options(synchronize_session=False)).all()
        s.commit()
    return sorted(ids)


def set_state(factory: sessionmaker[Session], job_id: int, state: JobState) -> None:
    with factory() as s:
        s.execute(update(Job).where(Job.id == job_id).values(state=state))
        s.commit()


def retry_failed(factory: sessionmaker[Session], job_id: int, statuses: tuple[str, ...] = ("failed", "poison")) -> int:
    """Put failed/poison items back to pending with fresh attempts; returns how many."""
    with factory() as s:
        n = rowcount(s.execute(update(Item).where(Item.job_id == job_id, Item.status.in_(statuses)).values(
            status=ItemStatus.PENDING, attempts=0, error=None, enqueued_at=None, message_id=None,
            finished_at=None)))
        s.execute(update(Job).where(Job.id == job_id, Job.state == JobState.DONE).values(state=JobState.RUNNING))
        s.commit()
    return n
