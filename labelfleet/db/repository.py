"""Repository functions: every read and write of jobs, items and labels.

All writes are idempotent: items are inserted with ON CONFLICT DO NOTHING,
an item's predictions for the current labelling run are written in the same
transaction that marks the item done, and that transaction only commits while
the caller still holds the item's lease. Predictions are never updated; human
review decisions (:class:`~labelfleet.db.models.ReviewDecision`) are never
touched by labelling (see :mod:`labelfleet.db.labels` for the current view).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from labelfleet.db.bulk import copy_items
from labelfleet.db.models import (
    FINAL_STATUSES,
    Detection,
    Item,
    ItemStatus,
    ItemTag,
    Job,
    JobState,
    LabelRun,
    ReviewDecision,
)
from labelfleet.errors import ConfigError
from labelfleet.types import ImageRef

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def rowcount(result: Any) -> int:
    """Rows matched by an UPDATE/DELETE result (0 when the driver cannot tell)."""
    return int(getattr(result, "rowcount", 0) or 0)


def get_job(session: Session, name: str) -> Job:
    """The job called ``name``; :class:`ConfigError` listing known jobs if absent."""
    job = session.scalar(select(Job).where(Job.name == name))
    if job is None:
        names = session.scalars(select(Job.name).order_by(Job.id.desc()).limit(10)).all()
        hint = f"; known jobs: {', '.join(names)}" if names else "; the database has no jobs yet"
        raise ConfigError(f"no job named {name!r}{hint}")
    return job


def get_or_create_job(session: Session, name: str, source: str, config: dict[str, Any],
                      models: dict[str, Any], queue: str | None = None) -> tuple[Job, bool]:
    """Return ``(job, created)``. An existing job must have the same source and config."""
    job = session.scalar(select(Job).where(Job.name == name))
    if job is None:
        job = Job(name=name, source=source, config=config, models=models, queue=queue, state=JobState.PENDING)
        session.add(job)
        session.flush()
        session.add(LabelRun(job_id=job.id, number=1, models=models, config=config))
        session.flush()
        return job, True
    if job.source != source:
        raise ConfigError(f"job {name!r} already exists for source {job.source!r}, not {source!r}; "
                          "pick another --job name")
    if job.queue != queue:
        kind = "a local job (labelfleet label)" if job.queue is None else f"a cluster job (queue {job.queue})"
        raise ConfigError(f"job {name!r} is {kind}; continue it the same way or pick another --job name")
    if job.config != config:
        diff = sorted(k for k in set(job.config) | set(config) if job.config.get(k) != config.get(k))
        raise ConfigError(f"job {name!r} already exists with different settings ({', '.join(diff)}); "
                          "re-run with the same options or pick another --job name")
    return job, False


def _insert_ignore(session: Session, table: Any = Item) -> Any:
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)


def add_items(session: Session, job: Job, refs: Iterable[ImageRef], *, batch_size: int = 1000) -> int:
    """Insert items for ``refs`` (duplicates ignored), advancing ``job.listing_cursor``.

    Commits after each batch so an interrupted listing resumes at the cursor.
    Returns how many new rows were inserted.
    """
    added = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal added
        if not batch:
            return
        if session.get_bind().dialect.name == "postgresql":
            added += copy_items(session, job.id, batch)
        else:  # executemany: the statement compiles once and the driver batches the rows
            stmt = _insert_ignore(session).on_conflict_do_nothing(index_elements=["job_id", "key"]).returning(Item.id)
            added += len(session.connection().execute(stmt, batch).all())
        job.listing_cursor = batch[-1]["key"]
        session.commit()
        batch.clear()

    for ref in refs:
        batch.append({"job_id": job.id, "key": ref.key, "size": ref.size, "etag": ref.etag,
                      "status": ItemStatus.PENDING, "attempts": 0})
        if len(batch) >= batch_size:
            flush()
    flush()
    job.listing_done = True
    session.commit()
    return added


def _claimable(job_id: int, now: datetime) -> Any:
    return and_(
        Item.job_id == job_id,
        or_(Item.status == ItemStatus.PENDING,
            and_(Item.status == ItemStatus.RUNNING, Item.lease_expires_at < now)),
    )


def claim_items(session: Session, job_id: int, owner: str, *, limit: int, lease_seconds: int,
                item_ids: Sequence[int] | None = None) -> list[int]:
    """Lease up to ``limit`` claimable items (pending, or running with an expired lease).

    Uses ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING id``
    on PostgreSQL so concurrent workers never claim the same item. Commits.
    Returns the claimed item ids in id order.
    """
    now = utcnow()
    sub: Select[Any] = select(Item.id).where(_claimable(job_id, now)).order_by(Item.id).limit(limit)
    if item_ids is not None:
        sub = sub.where(Item.id.in_(list(item_ids)))
    if session.get_bind().dialect.name == "postgresql":
        sub = sub.with_for_update(skip_locked=True)
    stmt = (
        update(Item)
        .where(Item.id.in_(sub.scalar_subquery()))
        .values(status=ItemStatus.RUNNING, lease_owner=owner, worker=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds), attempts=Item.attempts + 1)
        .returning(Item.id)
        .execution_options(synchronize_session=False)
    )
    ids = sorted(session.scalars(stmt).all())
    session.commit()
    return ids


@dataclass
class LabelRows:
    """Labels of one image, ready to be written (see :func:`finish_item`)."""

    tags: list[tuple[str, float]] = field(default_factory=list)
    detections: list[dict[str, Any]] = field(default_factory=list)  # Detection column -> value, without ids


def current_run_id(session: Session, job_id: int) -> int:
    """Id of the job's newest labelling run (run 1 is created for jobs that predate runs)."""
    run_id = session.scalar(select(func.max(LabelRun.id)).where(LabelRun.job_id == job_id))
    if run_id is not None:
        return int(run_id)
    job = session.get(Job, job_id)
    if job is None:
        raise ConfigError(f"no job with id {job_id}")
    stmt = (_insert_ignore(session, LabelRun).values(job_id=job_id, number=1, models=job.models, config=job.config)
            .on_conflict_do_nothing(index_elements=["job_id", "number"]))
    session.execute(stmt)
    return int(session.scalar(select(func.max(LabelRun.id)).where(LabelRun.job_id == job_id)) or 0)


def start_run(session: Session, job_id: int) -> int:
    """Add the job's next labelling run (models and config as the job has them now); returns its id."""
    job = session.get(Job, job_id)
    if job is None:
        raise ConfigError(f"no job with id {job_id}")
    number = session.scalar(select(func.max(LabelRun.number)).where(LabelRun.job_id == job_id)) or 0
    run = LabelRun(job_id=job_id, number=int(number) + 1, models=job.models, config=job.config)
    session.add(run)
    session.flush()
    return int(run.id)


def _decided(item_id: int) -> Any:
    """Predictions of ``item_id`` that some review decision refers to (these are never deleted)."""
    return select(ReviewDecision.prediction_id).where(ReviewDecision.item_id == item_id,
                                                      ReviewDecision.prediction_id.is_not(None))


def prediction_rows(session: Session, item_id: int, run_id: int, detections: list[dict[str, Any]], *,
                    overwrite_reviewed: bool = False) -> list[dict[str, Any]]:
    """Prepare writing ``detections`` as the item's predictions of run ``run_id``; returns rows to insert.

    Earlier predictions of the same run that no decision refers to are deleted (a retried
    item); predictions of earlier runs stay (immutable; the view only shows the newest
    run's). ``overwrite_reviewed`` (``label --relabel --overwrite-reviewed``) deletes the
    item's review decisions and all its earlier predictions first: the user asked to
    discard the reviews. New rows get ``item_id``, ``run_id`` and ``idx`` numbered after
    the item's remaining rows. Does not commit.
    """
    if overwrite_reviewed:
        session.execute(delete(ReviewDecision).where(ReviewDecision.item_id == item_id))
        session.execute(delete(Detection).where(Detection.item_id == item_id))
    else:
        session.execute(delete(Detection).where(Detection.item_id == item_id, Detection.run_id == run_id,
                                                Detection.id.not_in(_decided(item_id))))
    start = (session.scalar(select(func.max(Detection.idx)).where(Detection.item_id == item_id)) or -1) + 1
    return [{**d, "item_id": item_id, "run_id": run_id, "idx": start + i} for i, d in enumerate(detections)]


@dataclass(frozen=True)
class FinishedItem:
    """One labelled item to write: its tags and predictions and the facts of the bytes labelled."""

    item_id: int
    labels: LabelRows
    facts: dict[str, Any]


def finish_item(session: Session, item_id: int, owner: str, labels: LabelRows, *,
                facts: dict[str, Any], overwrite_reviewed: bool = False) -> bool:
    """Write one item's tags and predictions and mark it done (see :func:`finish_items`)."""
    return finish_items(session, owner, [FinishedItem(item_id, labels, facts)],
                        overwrite_reviewed=overwrite_reviewed)[0]


def finish_items(session: Session, owner: str, done: Sequence[FinishedItem], *,
                 overwrite_reviewed: bool = False) -> list[bool]:
    """Write the items' tags and predictions (current run) and mark them done, in one transaction.

    One ``UPDATE`` per item (its facts differ), then one delete of the old tags and one
    insert each of all tags and all predictions. Review decisions are never touched unless
    ``overwrite_reviewed`` (see :func:`prediction_rows`). An item is written only while
    ``owner`` still holds its lease; returns per item whether it was written (False: the
    lease was lost and nothing of that item was written). If no item was written the
    transaction is rolled back, including what the caller added to it.
    """
    ok: list[bool] = []
    tags: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    runs: dict[int, int] = {}
    floor: int | None = None  # SQLite: the largest prediction id before this batch deletes any
    for f in done:
        stmt = (
            update(Item)
            .where(Item.id == f.item_id, Item.lease_owner == owner, Item.status == ItemStatus.RUNNING)
            .values(status=ItemStatus.DONE, error=None, lease_owner=None, lease_expires_at=None,
                    finished_at=utcnow(), **f.facts)
            .returning(Item.job_id)
        )
        job_id = session.scalar(stmt)
        ok.append(job_id is not None)
        if job_id is None:
            logger.warning("item %s: lease lost before its labels were written; another worker owns it", f.item_id)
            continue
        if floor is None and session.get_bind().dialect.name == "sqlite":  # we hold the write lock now
            floor = int(session.scalar(select(func.max(Detection.id))) or 0)
        run_id = runs[job_id] = runs.get(job_id) or current_run_id(session, job_id)
        rows += prediction_rows(session, f.item_id, run_id, f.labels.detections,
                                overwrite_reviewed=overwrite_reviewed)
        tags += [{"item_id": f.item_id, "name": n, "score": sc} for n, sc in f.labels.tags]
    written = [f.item_id for f, w in zip(done, ok, strict=True) if w]
    if not written:  # every lease lost: nothing of ours to keep (nor what the caller added to this transaction)
        session.rollback()
        return ok
    session.execute(delete(ItemTag).where(ItemTag.item_id.in_(written)))
    if tags:
        session.execute(insert(ItemTag), tags)
    if rows:
        if floor is not None:  # SQLite would reuse the ids of the rows just deleted; ids only grow
            rows = [{**r, "id": floor + i} for i, r in enumerate(rows, start=1)]
        session.execute(insert(Detection), rows)
    session.commit()
    return ok


def end_item(session: Session, item_id: int, owner: str, status: ItemStatus, error: str,
             facts: dict[str, Any] | None = None) -> bool:
    """Record a final non-done status (failed/skipped/poison) with its reason, or put it back to pending.

    A final failure also removes the item's earlier predictions (a re-label
    of an image that is now unreadable must not leave stale labels behind),
    except those a review decision refers to; decisions stay.
    """
    values: dict[str, Any] = {"status": status, "error": error[:4000], "lease_owner": None,
                              "lease_expires_at": None, **(facts or {})}
    if status in FINAL_STATUSES:
        values["finished_at"] = utcnow()
    else:  # back to pending: the sweeper enqueues it again
        values["enqueued_at"] = None
    stmt = update(Item).where(Item.id == item_id, Item.lease_owner == owner).values(**values)
    ok = rowcount(session.execute(stmt)) == 1
    if ok and status in FINAL_STATUSES:
        session.execute(delete(ItemTag).where(ItemTag.item_id == item_id))
        session.execute(delete(Detection).where(Detection.item_id == item_id, Detection.id.not_in(_decided(item_id))))
    session.commit()
    return ok


def release_items(session: Session, item_ids: Sequence[int], owner: str, *, refund: bool = True,
                  max_attempts: int | None = None, reason: str = "interrupted") -> int:
    """Give leased, unfinished items back: running -> pending, to be enqueued again.

    ``refund=True`` (Ctrl-C, warm shutdown) does not count the attempt. With
    ``refund=False`` (a crash, a time limit) the attempt counts, and items that
    reached ``max_attempts`` become poison with ``reason``, so an image that
    always crashes its worker cannot loop forever.
    """
    if not item_ids:
        return 0
    mine = (Item.id.in_(list(item_ids)), Item.lease_owner == owner, Item.status == ItemStatus.RUNNING)
    free = {"lease_owner": None, "lease_expires_at": None, "enqueued_at": None}
    n = 0
    if refund:
        lower = (func.max if session.get_bind().dialect.name == "sqlite" else func.greatest)(Item.attempts - 1, 0)
        n += rowcount(session.execute(update(Item).where(*mine).values(status=ItemStatus.PENDING, attempts=lower,
                                                                        error=reason[:4000], **free)))
    else:
        if max_attempts is not None:
            n += rowcount(session.execute(update(Item).where(*mine, Item.attempts >= max_attempts).values(
                status=ItemStatus.POISON, finished_at=utcnow(), error=f"gave up after {max_attempts} attempts: "
                f"{reason}"[:4000], **free)))
        n += rowcount(session.execute(update(Item).where(*mine).values(status=ItemStatus.PENDING,
                                                                        error=reason[:4000], **free)))
    session.commit()
    return n


def renew_leases(session: Session, item_ids: Sequence[int], owner: str, *, lease_seconds: int) -> int:
    """Extend the leases ``owner`` still holds on ``item_ids`` to now + ``lease_seconds`` (the heartbeat).

    Conditional on ``lease_owner`` and ``status = running``: items finished,
    released or taken over by another worker are left alone. An expired lease
    that nobody took over yet is renewed too (its owner is alive after all).
    Returns how many leases were extended. Commits.
    """
    if not item_ids:
        return 0
    stmt = (update(Item).where(Item.id.in_(list(item_ids)), Item.lease_owner == owner,
                               Item.status == ItemStatus.RUNNING)
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False))
    n = rowcount(session.execute(stmt))
    session.commit()
    return n


def reset_for_relabel(session: Session, job_id: int) -> int:
    """Start the job's next labelling run and put every finished item back to pending (fresh attempts).

    Review decisions are untouched; the new run's predictions join the view next to them.
    """
    start_run(session, job_id)
    stmt = (update(Item).where(Item.job_id == job_id, Item.status.in_(list(FINAL_STATUSES)))
            .values(status=ItemStatus.PENDING, attempts=0, error=None, enqueued_at=None, finished_at=None))
    n = rowcount(session.execute(stmt))
    session.execute(update(Job).where(Job.id == job_id).values(state=JobState.RUNNING, finished_at=None))
    session.commit()
    return n


def release_dead_owners(session: Session, job_id: int, is_dead: Any, max_attempts: int) -> int:
    """Release running items whose lease owner ``is_dead(owner)`` says is gone (the attempt counts)."""
    owners = session.scalars(select(Item.lease_owner).where(
        Item.job_id == job_id, Item.status == ItemStatus.RUNNING).distinct()).all()
    return sum(release_items(session, session.scalars(select(Item.id).where(
        Item.job_id == job_id, Item.lease_owner == o)).all(), o, refund=False, max_attempts=max_attempts,
        reason="the process labelling it died") for o in owners if o and is_dead(o))


# --- issue 11: incremental re-listing -------------------------------------------------------------------------
def _is_changed(stored_size: int | None, stored_etag: str | None, ref: ImageRef) -> bool:
    """Whether a listed object differs from the item: ETag (S3, or ``size-mtime`` locally) else size."""
    if stored_etag is not None and ref.etag is not None:
        return stored_etag != ref.etag
    return stored_size is not None and ref.size is not None and stored_size != ref.size


def sync_items(session: Session, job: Job, refs: Iterable[ImageRef], *, relabel_changed: bool = False,
               batch_size: int = 1000) -> tuple[int, int, int]:
    """Merge a full re-listing into a listed job: insert new keys, find changed ones.

    A key is *changed* when its ETag (or, without one, its size) differs from the item's.
    With ``relabel_changed`` a changed, not running item goes back to pending with fresh
    attempts and takes the new size/ETag (its labels are replaced when it is done again;
    reviewed labels stay, see :func:`finish_item`). Items that had no ETag get the listed one.
    Commits per batch. Returns ``(added, changed, relabelled)``.
    """
    added = changed = relabelled = 0
    batch: list[ImageRef] = []

    def flush() -> None:
        nonlocal added, changed, relabelled
        keys = [r.key for r in batch]
        have = {k: (i, size, etag, st) for i, k, size, etag, st in session.execute(
            select(Item.id, Item.key, Item.size, Item.etag, Item.status)
            .where(Item.job_id == job.id, Item.key.in_(keys)))}
        new = [{"job_id": job.id, "key": r.key, "size": r.size, "etag": r.etag, "status": ItemStatus.PENDING,
                "attempts": 0} for r in batch if r.key not in have]
        if new:
            stmt = (_insert_ignore(session).values(new)
                    .on_conflict_do_nothing(index_elements=["job_id", "key"]).returning(Item.id))
            added += len(session.scalars(stmt).all())
        updates: list[dict[str, Any]] = []
        for r in batch:
            if r.key not in have:
                continue
            item_id, size, etag, status = have[r.key]
            if _is_changed(size, etag, r):
                changed += 1
                if relabel_changed and status != ItemStatus.RUNNING:
                    relabelled += 1
                    updates.append({"id": item_id, "size": r.size, "etag": r.etag, "status": ItemStatus.PENDING,
                                    "attempts": 0, "error": None, "enqueued_at": None, "finished_at": None})
            elif etag is None and r.etag is not None:
                updates.append({"id": item_id, "etag": r.etag})
        for values in updates:  # rows differ in their columns: one UPDATE each (changed items are few)
            item_id = values.pop("id")
            session.execute(update(Item).where(Item.id == item_id).values(**values))
        session.commit()
        batch.clear()

    for ref in refs:
        batch.append(ref)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    if added or relabelled:
        session.execute(update(Job).where(Job.id == job.id, Job.state == JobState.DONE)
                        .values(state=JobState.RUNNING, finished_at=None))
        session.commit()
    return added, changed, relabelled


def mark_job_finished(session: Session, job_id: int) -> bool:
    """Store ``state=done`` and ``finished_at`` once every item of a fully listed job is final. Commits."""
    unfinished = select(Item.id).where(Item.job_id == job_id, Item.status.notin_(list(FINAL_STATUSES)))
    n = rowcount(session.execute(
        update(Job).where(Job.id == job_id, Job.listing_done.is_(True),
                          Job.state.notin_([JobState.DONE, JobState.CANCELLED]), ~unfinished.exists())
        .values(state=JobState.DONE, finished_at=utcnow())))
    session.commit()
    return n == 1
# --- end issue 11
