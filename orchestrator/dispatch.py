"""Submit jobs and (re-)enqueue their pending items in chunks. The database is the source of truth."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import String, cast, func, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db.models import Item, ItemStatus, Job, JobState
from labelfleet.db.repository import rowcount, utcnow
from labelfleet.errors import ConfigError
from labelfleet.tasknames import MAX_CHUNK_ITEMS
from orchestrator.broker import chunk_publisher, new_message_id

logger = logging.getLogger(__name__)


#: Items claimed per statement: ``CLAIM_ITEMS // chunk_size`` chunks (at least one) get their message ids at once.
CLAIM_ITEMS = 1024


def enqueue_pending(factory: sessionmaker[Session], job_id: int, broker_url: str, *, chunk_size: int,
                    older_than_s: float | None = None, held: Collection[str] | None = None,
                    on_chunk: Callable[[int], None] | None = None, whole_chunks: bool = False) -> int:
    """Enqueue the job's pending items, ``chunk_size`` IDs per message; returns how many items.

    ``whole_chunks`` (while a listing still adds items) leaves a last, partial chunk of
    never-enqueued items for a later call.

    ``older_than_s=None`` enqueues only items never enqueued. A number also
    re-enqueues items last enqueued longer ago than that whose message is not
    in ``held`` (message ids the broker still holds, from
    :func:`orchestrator.broker.held_message_ids`; None = unknown, re-enqueue them all).
    Chunks are claimed by ONE conditional ``UPDATE ... RETURNING`` per ``CLAIM_ITEMS``
    items that sets ``enqueued_at`` and each chunk's own ``message_id`` before any of
    those messages is published (through one broker connection), so two concurrent
    submits or sweepers never publish the same item twice; a crash in between only
    delays those chunks until the sweeper finds their messages missing.
    """
    if not 1 <= chunk_size <= MAX_CHUNK_ITEMS:
        raise ConfigError(f"chunk size must be between 1 and {MAX_CHUNK_ITEMS}, got {chunk_size}")
    with factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.state == JobState.CANCELLED or not job.queue:
            return 0
        queue = job.queue
    total = 0
    with chunk_publisher(broker_url) as publish:
        for chunks in _claimed_batches(factory, job_id, chunk_size, older_than_s, held, whole_chunks):
            for chunk, message_id in chunks:
                publish(queue, job_id, chunk, message_id)
                total += len(chunk)
                if on_chunk:
                    on_chunk(len(chunk))
    return total


def _claimed_batches(factory: sessionmaker[Session], job_id: int, chunk_size: int, older_than_s: float | None,
                     held: Collection[str] | None, whole_chunks: bool = False
                     ) -> Iterator[list[tuple[list[int], str]]]:
    """Yield lists of ``(item ids, message id)`` chunks, each list claimed (committed) for this publisher."""
    pending = (Item.job_id == job_id) & (Item.status == ItemStatus.PENDING)
    cutoff = utcnow() - timedelta(seconds=older_than_s or 0)  # before claiming: fresh claims are never stale
    per_claim = max(1, CLAIM_ITEMS // chunk_size) * chunk_size
    new = pending & Item.enqueued_at.is_(None)
    while limit := (_whole(factory, new, chunk_size, per_claim) if whole_chunks else per_claim):
        if not (chunks := _claim(factory, new, chunk_size, limit)):
            break
        yield chunks
    if older_than_s is None:
        return
    stale = pending & (Item.enqueued_at < cutoff)
    with factory() as s:
        rows = s.execute(select(Item.id, Item.message_id).where(stale).order_by(Item.id)).all()
    lost = [i for i, m in rows if held is None or m not in held]
    for start in range(0, len(lost), per_claim):
        if chunks := _claim(factory, stale & Item.id.in_(lost[start:start + per_claim]), chunk_size, per_claim):
            yield chunks


def _whole(factory: sessionmaker[Session], cond: Any, chunk_size: int, limit: int) -> int:
    """Items to claim so that every chunk is full: a multiple of ``chunk_size``, at most ``limit``."""
    with factory() as s:
        n = int(s.scalar(select(func.count()).select_from(select(Item.id).where(cond).limit(limit).subquery())) or 0)
    return n // chunk_size * chunk_size


def _claim(factory: sessionmaker[Session], cond: Any, chunk_size: int, limit: int) -> list[tuple[list[int], str]]:
    """Mark up to ``limit`` items matching ``cond`` enqueued, ``chunk_size`` consecutive ones per message id
    (``<uuid4>-<n>``); returns ``(sorted ids, message id)`` per chunk, in id order. One statement.

    PostgreSQL: the candidates are locked ``FOR UPDATE SKIP LOCKED``, which
    re-checks ``cond`` on the newest version of each locked row, so a concurrent
    claimer gets other items or none. SQLite serialises writers, which gives
    the same guarantee.
    """
    with factory() as s:
        sub = select(Item.id).where(cond).order_by(Item.id).limit(limit)
        if s.get_bind().dialect.name == "postgresql":
            sub = sub.with_for_update(skip_locked=True)
        picked = sub.subquery()  # the window function sits outside: PostgreSQL forbids it next to FOR UPDATE
        nth = (func.row_number().over(order_by=picked.c.id) - 1) // chunk_size
        numbered = select(picked.c.id, (literal(f"{new_message_id()}-") + cast(nth, String)).label("mid")).subquery()
        # No second copy of ``cond`` out here: PostgreSQL would then re-run the LIMIT subquery per row.
        rows = s.execute(update(Item).where(Item.id == numbered.c.id)
                         .values(enqueued_at=utcnow(), message_id=numbered.c.mid).returning(Item.id, Item.message_id)
                         .execution_options(synchronize_session=False)).all()
        s.commit()
    chunks: dict[str, list[int]] = {}
    for item_id, message_id in rows:
        chunks.setdefault(str(message_id), []).append(item_id)
    return sorted(((sorted(ids), m) for m, ids in chunks.items()), key=lambda c: c[0][0])


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
