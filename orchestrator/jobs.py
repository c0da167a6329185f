"""Create jobs and list their sources into the database (no torch, no workers import)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo
from labelfleet.db.models import Job
from labelfleet.storage.base import Source

logger = logging.getLogger(__name__)


def default_job_name(source_uri: str) -> str:
    """A readable job name from a source: the last path component (``/data/cats`` -> ``cats``)."""
    tail = source_uri.rstrip("/").rsplit("/", 1)[-1] or "job"
    return tail[:200]


def prepare_job(factory: sessionmaker[Session], *, name: str, source: Source, config: dict[str, Any],
                models: dict[str, Any], queue: str | None = None,
                on_listed: Callable[[int], None] | None = None) -> tuple[int, bool]:
    """Create (or continue) job ``name`` and list its source into items.

    Listing resumes after ``job.listing_cursor`` when an earlier listing was
    interrupted; keys already present are ignored. Returns ``(job_id, created)``.
    """
    with factory() as s:
        try:
            job, created = repo.get_or_create_job(s, name, source.uri, config, models, queue)
            s.commit()
        except IntegrityError:  # a concurrent submit created the same job first: continue it
            s.rollback()
            job, created = repo.get_or_create_job(s, name, source.uri, config, models, queue)
            s.commit()
        job_id = job.id
        if not job.listing_done:
            added = repo.add_items(s, job, _counted(source, job, on_listed))
            logger.info("job %s: listed %d new items from %s", name, added, source.uri)
    return job_id, created


def _counted(source: Source, job: Job, on_listed: Callable[[int], None] | None) -> Any:
    for ref in source.list(start_after=job.listing_cursor):
        if on_listed is not None:
            on_listed(1)
        yield ref


__all__ = ["default_job_name", "prepare_job"]
