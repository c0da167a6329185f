"""Read-only queries: job summaries for ``status`` and ``jobs``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from labelfleet.db.models import FINAL_STATUSES, Detection, Item, ItemStatus, ItemTag, Job, JobState, LabelRun


def status_counts(session: Session, job_id: int) -> dict[str, int]:
    """Item count per status, with every status present (0 when none)."""
    rows = session.execute(
        select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
    ).all()
    counts = {s.value: 0 for s in ItemStatus}
    counts.update({str(s): int(n) for s, n in rows})
    return counts


def derive_state(job: Job, counts: dict[str, int]) -> str:
    """Job state from the items (the database is the source of truth, not the broker)."""
    if job.state == JobState.CANCELLED:
        return JobState.CANCELLED
    total = sum(counts.values())
    final = sum(counts[s.value] for s in FINAL_STATUSES)
    if job.listing_done and final == total:
        return JobState.DONE
    if final or counts[ItemStatus.RUNNING]:
        return JobState.RUNNING
    return JobState.PENDING


def failure_reasons(session: Session, job_id: int, limit: int = 10) -> list[dict[str, Any]]:
    """The most common error texts of failed/poison/skipped items."""
    rows = session.execute(
        select(Item.status, Item.error, func.count())
        .where(Item.job_id == job_id, Item.status.in_([ItemStatus.FAILED, ItemStatus.POISON, ItemStatus.SKIPPED]))
        .group_by(Item.status, Item.error)
        .order_by(func.count().desc())
        .limit(limit)
    ).all()
    return [{"status": s, "reason": e, "count": int(n)} for s, e, n in rows]


def _as_utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite returns naive UTC


def worker_throughput(session: Session, job_id: int, window_s: int = 300) -> list[dict[str, Any]]:
    """Items finished per worker process in the last ``window_s`` s, and its rate while it was active.

    The active window runs from the start of the worker's first item in the window (its
    ``finished_at`` minus its own stage timings) to its last ``finished_at``; ``images_per_s``
    is ``done / active_s``, so a worker that ran 20 s of the 5 minutes is not shown 15x slower.
    """
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    rows = session.execute(
        select(Item.worker, func.count(), func.min(Item.finished_at), func.max(Item.finished_at))
        .where(Item.job_id == job_id, Item.status == ItemStatus.DONE, Item.finished_at >= since)
        .group_by(Item.worker)).all()
    out = []
    for worker, n, first, last in rows:
        if not worker or first is None or last is None:
            continue
        timings = session.scalar(select(Item.timings).where(
            Item.job_id == job_id, Item.worker == worker, Item.status == ItemStatus.DONE,
            Item.finished_at == first).limit(1)) or {}
        first_cost = sum(float(v) for k, v in timings.items() if k != "read_decode")  # decode overlaps models
        active = max((_as_utc(last) - _as_utc(first)).total_seconds() + first_cost, 1e-3)
        out.append({"worker": str(worker).rsplit(":", 1)[0], "done": int(n), "active_s": round(active, 3),
                    "images_per_s": round(int(n) / active, 3)})
    return out


def job_summary(session: Session, job: Job) -> dict[str, Any]:
    """Everything ``labelfleet status --json`` prints for one job."""
    counts = status_counts(session, job.id)
    run = select(func.max(LabelRun.id)).where(LabelRun.job_id == job.id).scalar_subquery()
    detections = session.scalar(  # predictions of the newest labelling run (earlier runs are kept)
        select(func.count()).select_from(Detection).join(Item, Detection.item_id == Item.id)
        .where(Item.job_id == job.id, (Detection.run_id == run) | Detection.run_id.is_(None))) or 0
    tags = session.scalar(
        select(func.count()).select_from(ItemTag).join(Item, ItemTag.item_id == Item.id)
        .where(Item.job_id == job.id)) or 0
    return {
        "job": job.name,
        "state": derive_state(job, counts),
        "source": job.source,
        "total": sum(counts.values()),
        **counts,
        "detections": int(detections),
        "tags": int(tags),
        "listing_done": bool(job.listing_done),
        "random_weights": bool(job.models.get("random_weights", False)),
        "failures": failure_reasons(session, job.id),
        "workers": worker_throughput(session, job.id),
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "last_listing": job.listing_report,
    }


def list_jobs(session: Session) -> list[dict[str, Any]]:
    """One summary per job, newest first."""
    return [job_summary(session, j) for j in session.scalars(select(Job).order_by(Job.id.desc())).all()]
