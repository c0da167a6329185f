"""The sweeper: return expired leases, re-enqueue lost messages, finish jobs.

Safe to run any number of times, from any number of processes: every change
is a conditional UPDATE. Redis here keeps nothing on disk, so after a broker
restart every queued message is gone; the sweeper compares each pending item's
``message_id`` with the messages the broker still holds (waiting or delivered
but unacked) and enqueues again only items whose message is gone, after
``requeue_after_s`` (covering the moment between claim and publish). A message
that merely waits in a long queue is never published twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, exists, func, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db.models import Item, ItemStatus, Job, JobState
from labelfleet.db.repository import rowcount, utcnow
from orchestrator.broker import held_message_ids, queue_depth
from orchestrator.dispatch import enqueue_pending

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    expired: int = 0
    poisoned: int = 0
    requeued: int = 0
    finished: list[str] = field(default_factory=list)


def expire_leases(session: Session, job_id: int, max_attempts: int) -> tuple[int, int]:
    """Running items whose lease expired: back to pending, or poison after ``max_attempts``."""
    now = utcnow()
    expired = (Item.job_id == job_id) & (Item.status == ItemStatus.RUNNING) & (Item.lease_expires_at < now)
    gave_up = literal(f"gave up after {max_attempts} attempts, the last one's worker died (its lease expired); "
                      "last error: ", String) + func.coalesce(Item.error, "none recorded")
    poison = rowcount(session.execute(update(Item).where(expired, Item.attempts >= max_attempts).values(
        status=ItemStatus.POISON, lease_owner=None, lease_expires_at=None, finished_at=now, error=gave_up)))
    back = rowcount(session.execute(update(Item).where(expired).values(
        status=ItemStatus.PENDING, lease_owner=None, lease_expires_at=None, enqueued_at=None,
        error=func.coalesce(Item.error, "lease expired (worker lost); requeued"))))  # keep the last real error
    session.commit()
    return back, poison


def sweep(factory: sessionmaker[Session], broker_url: str, *, max_attempts: int, chunk_size: int,
          requeue_after_s: float = 60.0, stale_after_s: float = 7200.0) -> SweepReport:
    """One pass over every unfinished job; a failure on one job does not stop the others.

    ``stale_after_s`` (the visibility timeout) is used only with a broker that
    cannot list its messages: pending items enqueued longer ago are re-enqueued.
    """
    report = SweepReport()
    with factory() as s:
        jobs = s.execute(select(Job.id, Job.name, Job.queue).where(
            Job.state.notin_([JobState.DONE, JobState.CANCELLED]))).all()
    held: dict[str, set[str] | None] = {}  # queue -> message ids the broker holds, read once per pass
    for job_id, name, queue in jobs:
        try:
            _sweep_job(factory, broker_url, job_id, name, queue, report, held, max_attempts=max_attempts,
                       chunk_size=chunk_size, requeue_after_s=requeue_after_s, stale_after_s=stale_after_s)
        except Exception:
            logger.exception("sweeping job %s failed", name)
    if report.expired or report.poisoned or report.requeued or report.finished:
        logger.info("sweep: %s", report)
    return report


def _sweep_job(factory: sessionmaker[Session], broker_url: str, job_id: int, name: str, queue: str | None,
               report: SweepReport, held_by_queue: dict[str, set[str] | None], *, max_attempts: int,
               chunk_size: int, requeue_after_s: float, stale_after_s: float) -> None:
    with factory() as s:
        back, poison = expire_leases(s, job_id, max_attempts)
    report.expired += back
    report.poisoned += poison
    if queue:
        if queue not in held_by_queue:
            held_by_queue[queue] = held_message_ids(broker_url, queue)
        held = held_by_queue[queue]
        if held is not None:  # re-enqueue only items whose message the broker no longer holds
            older = requeue_after_s
        else:  # the broker cannot list its messages: only an empty queue proves them lost
            depth = queue_depth(broker_url, queue)
            older = requeue_after_s if not depth else stale_after_s
        report.requeued += enqueue_pending(factory, job_id, broker_url, chunk_size=chunk_size, older_than_s=older,
                                           held=held)
    if mark_done_if_finished(factory, job_id):
        report.finished.append(name)


def mark_done_if_finished(factory: sessionmaker[Session], job_id: int) -> bool:
    """Set the job done in ONE conditional UPDATE, so a concurrent retry/relabel is never overwritten."""
    unfinished = select(Item.id).where(Item.job_id == job_id, Item.status.in_([ItemStatus.PENDING,
                                                                               ItemStatus.RUNNING]))
    stmt = (update(Job).where(Job.id == job_id, Job.listing_done.is_(True),
                              Job.state.notin_([JobState.DONE, JobState.CANCELLED]), ~exists(unfinished))
            .values(state=JobState.DONE, finished_at=utcnow()))
    with factory() as s:
        done = rowcount(s.execute(stmt)) == 1
        s.commit()
    return done


def sweep_forever(run_once: Callable[[], Any], every_s: float, should_stop: Callable[[], bool] = lambda: False
                  ) -> None:
    """Call ``run_once`` every ``every_s`` seconds; errors are logged, never fatal (DB or broker restarts)."""
    while not should_stop():
        try:
            run_once()
        except Exception:
            logger.exception("sweep failed; trying again in %.0fs", every_s)
        time.sleep(every_s)
