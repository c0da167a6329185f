"""Embedded mode: label a job's items in this process (no broker, no servers)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo
from labelfleet.db.models import Job, JobState
from labelfleet.errors import InfrastructureError
from labelfleet.settings import Settings
from workers.leases import LeaseKeeper
from workers.processing import ItemProcessor, ProcessStats

logger = logging.getLogger(__name__)
_HOST = socket.gethostname()


def local_owner() -> str:
    """Lease owner id of this process: ``local:<host>:<pid>:<random>``."""
    return f"local:{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str) -> bool:
    """True for a local owner on this host whose process no longer exists."""
    parts = owner.split(":")
    if len(parts) != 4 or parts[0] != "local" or parts[1] != _HOST or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def run_local(factory: sessionmaker[Session], job_id: int, processor: ItemProcessor, settings: Settings,
              *, chunk: int | None = None, should_stop: Callable[[], bool] | None = None) -> ProcessStats:
    """Claim and process the job's items until none is left.

    Items leased by a crashed local run on this host are released first.
    On any exception (Ctrl-C included) the leased, unfinished items are given
    back, so the job stays consistent and a re-run continues where it stopped.
    """
    total = ProcessStats()
    chunk = chunk or max(settings.batch_size * 4, 8)
    with factory() as s:
        released = repo.release_dead_owners(s, job_id, owner_is_dead, settings.max_attempts)
    if released:
        logger.info("released %d items left running by a crashed run", released)
    while not (should_stop and should_stop()):
        with factory() as s:
            job = s.get(Job, job_id)
            if job is None or job.state == JobState.CANCELLED:
                break
            ids = repo.claim_items(s, job_id, processor.owner, limit=chunk, lease_seconds=settings.lease_seconds)
        if not ids:
            break
        try:
            with LeaseKeeper(factory, ids, processor.owner, settings.lease_seconds):
                stats = processor.process(ids)
        except BaseException as exc:
            refund = isinstance(exc, KeyboardInterrupt | SystemExit | InfrastructureError)  # not the items' fault
            with factory() as s:
                n = repo.release_items(s, ids, processor.owner, refund=refund, max_attempts=settings.max_attempts,
                                       reason=f"{type(exc).__name__}: {exc}")
            logger.warning("%s: %d unfinished items returned", "interrupted" if refund else "crashed", n)
            raise
        for k, v in stats.counts.items():
            total.counts[k] = total.counts.get(k, 0) + v
        total.lost += stats.lost
    return total
