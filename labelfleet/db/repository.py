"""Repository functions: every read and write of jobs, items and labels.

All writes are idempotent: items are inserted with ON CONFLICT DO NOTHING,
labels of an item are replaced (delete + insert) in the same transaction
that marks the item done, and that transaction only commits while the
caller still holds the item's lease.
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

from labelfleet.db.models import FINAL_STATUSES, Detection, Item, ItemStatus, ItemTag, Job, JobState
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


def _insert_ignore(session: Session) -> Any:
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(Item)


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
        # executemany: the statement compiles once and the driver batches the rows ("insertmanyvalues"),
        # instead of compiling a 1,000-row VALUES clause per batch
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


#: On re-label, a new detection overlapping a reviewed one of the same class this much is a duplicate.
DUPLICATE_IOU = 0.5


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two absolute px xyxy boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def keep_reviewed(session: Session, item_id: int, detections: list[dict[str, Any]], *,
                  overwrite_reviewed: bool = False) -> list[dict[str, Any]]:
    """Replace an item's unreviewed detections, keeping reviewed ones (for ``finish_item`` on re-label).

    Deletes the item's detections with ``review_status IS NULL`` (all of them when
    ``overwrite_reviewed``) and returns the rows to insert: the new ``detections``
    (column dicts, absolute px xyxy) minus those duplicating a kept reviewed label
    (same class, IoU >= :data:`DUPLICATE_IOU`; a rejected label thus stays rejected),
    with ``item_id`` and ``idx`` numbered after the kept rows. Does not commit.
    """
    cond = Detection.item_id == item_id
    if not overwrite_reviewed:
        cond = cond & Detection.review_status.is_(None)
    session.execute(delete(Detection).where(cond))
    kept = session.execute(select(Detection.idx, Detection.class_name, Detection.x0, Detection.y0,
                                  Detection.x1, Detection.y1).where(Detection.item_id == item_id)).all()
    start = max((k.idx for k in kept), default=-1) + 1
    fresh = [d for d in detections if not any(
        k.class_name == d["class_name"]
        and _iou((k.x0, k.y0, k.x1, k.y1), (d["x0"], d["y0"], d["x1"], d["y1"])) >= DUPLICATE_IOU
        for k in kept)]
    return [{**d, "item_id": item_id, "idx": start + i} for i, d in enumerate(fresh)]


def finish_item(session: Session, item_id: int, owner: str, labels: LabelRows, *,
                facts: dict[str, Any], overwrite_reviewed: bool = False) -> bool:
    """Replace the item's labels and mark it done, in one transaction.

    Detections a person reviewed are kept (see :func:`keep_reviewed`) unless
    ``overwrite_reviewed``. Only commits while ``owner`` still holds the
    lease; returns False (and writes nothing) if the lease was lost.
    """
    stmt = (
        update(Item)
        .where(Item.id == item_id, Item.lease_owner == owner, Item.status == ItemStatus.RUNNING)
        .values(status=ItemStatus.DONE, error=None, lease_owner=None, lease_expires_at=None,
                finished_at=utcnow(), **facts)
    )
    if rowcount(session.execute(stmt)) != 1:
        session.rollback()
        logger.warning("item %s: lease lost before its labels were written; another worker owns it", item_id)
        return False
    session.execute(delete(ItemTag).where(ItemTag.item_id == item_id))
    rows = keep_reviewed(session, item_id, labels.detections, overwrite_reviewed=overwrite_reviewed)
    if labels.tags:
        session.execute(insert(ItemTag), [{"item_id": item_id, "name": n, "score": s} for n, s in labels.tags])
    if rows:
        session.execute(insert(Detection), rows)
    session.commit()
    return True


def end_item(session: Session, item_id: int, owner: str, status: ItemStatus, error: str,
             facts: dict[str, Any] | None = None) -> bool:
    """Record a final non-done status (failed/skipped/poison) with its reason, or put it back to pending.

    A final failure also removes the item's earlier machine labels (a re-label
    of an image that is now unreadable must not leave stale labels behind);
    labels a person reviewed stay.
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
        session.execute(delete(Detection).where(Detection.item_id == item_id, Detection.review_status.is_(None)))
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
                                                                        **free)))
    else:
        if max_attempts is not None:
            n += rowcount(session.execute(update(Item).where(*mine, Item.attempts >= max_attempts).values(
                status=ItemStatus.POISON, finished_at=utcnow(), error=f"gave up after {max_attempts} attempts: "
                f"{reason}"[:4000], **free)))
        n += rowcount(session.execute(update(Item).where(*mine).values(status=ItemStatus.PENDING,
                                                                        error=reason[:4000], **free)))
    session.commit()
    return n


def reset_for_relabel(session: Session, job_id: int) -> int:
    """Put every finished item of a job back to pending (fresh attempts) so it is labelled again."""
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
