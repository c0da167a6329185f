"""Create jobs and list their sources into the database (no torch, no workers import).

Listing is incremental: a job whose listing finished is listed again on every ``label`` /
``submit``; new keys become items and, with ``changed=True``, keys whose ETag (S3) or
size+mtime (folders) changed are labelled again. What each listing found is stored in
``jobs.listing_report`` (``status`` shows it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo
from labelfleet.storage.base import ListingReport, Source
from labelfleet.types import ImageRef

logger = logging.getLogger(__name__)


def default_job_name(source_uri: str) -> str:
    """A readable job name from a source: the last path component (``/data/cats`` -> ``cats``)."""
    tail = source_uri.rstrip("/").rsplit("/", 1)[-1] or "job"
    return tail[:200]


@dataclass
class Listing:
    """Outcome of :func:`list_job`: new items, changed keys (and how many were reset), what was skipped."""

    job_id: int
    created: bool
    listed: bool = False  # False: nothing was listed (``relist=False`` on a listed job)
    added: int = 0
    changed: int = 0
    relabelled: int = 0
    report: ListingReport | None = None

    def summary(self) -> str:
        """``"8 images (...), 3 skipped: ...; 2 new, 1 changed (labelled again)"``."""
        out = self.report.summary() if self.report is not None else "listed"
        out += f"; {self.added} new"
        if self.changed:
            out += (f", {self.changed} changed ({self.relabelled} labelled again)" if self.relabelled
                    else f", {self.changed} changed (not labelled again: use --changed)")
        return out

    def to_json(self) -> dict[str, Any]:
        rep = self.report or ListingReport()
        return {"at": datetime.now(UTC).isoformat(), "images": rep.images, "added": self.added,
                "changed": self.changed, "relabelled": self.relabelled, "skipped": dict(rep.skipped),
                "unreadable": dict(rep.problems)}


def list_job(factory: sessionmaker[Session], *, name: str, source: Source, config: dict[str, Any],
             models: dict[str, Any], queue: str | None = None, on_listed: Callable[[int], None] | None = None,
             relist: bool = True, changed: bool = False, on_job: Callable[[int], None] | None = None) -> Listing:
    """Create (or continue) job ``name`` and list its source into items.

    A first listing resumes after ``job.listing_cursor`` when an earlier one was
    interrupted. Once a listing finished, ``relist`` lists the whole source again and
    adds the new keys; ``changed`` also puts changed keys back to pending. ``on_job(job_id)``
    is called once the job row is committed, before any key is listed.
    """
    with factory() as s:
        try:
            job, created = repo.get_or_create_job(s, name, source.uri, config, models, queue)
            s.commit()
        except IntegrityError:  # a concurrent submit created the same job first: continue it
            s.rollback()
            job, created = repo.get_or_create_job(s, name, source.uri, config, models, queue)
            s.commit()
        out = Listing(job.id, created)
        if on_job is not None:
            on_job(job.id)
        if not job.listing_done:
            out.added = repo.add_items(s, job, _counted(source.list(start_after=job.listing_cursor), on_listed))
        elif relist:
            out.added, out.changed, out.relabelled = repo.sync_items(
                s, job, _counted(source.list(), on_listed), relabel_changed=changed)
        else:
            return out
        out.listed = True
        out.report = getattr(source, "report", None)
        job.listing_report = out.to_json()
        s.commit()
    logger.info("job %s: %s", name, out.summary())
    return out


def prepare_job(factory: sessionmaker[Session], *, name: str, source: Source, config: dict[str, Any],
                models: dict[str, Any], queue: str | None = None,
                on_listed: Callable[[int], None] | None = None) -> tuple[int, bool]:
    """:func:`list_job` (new keys of a listed job are added too); returns ``(job_id, created)``."""
    out = list_job(factory, name=name, source=source, config=config, models=models, queue=queue,
                   on_listed=on_listed)
    return out.job_id, out.created


def _counted(refs: Iterator[ImageRef], on_listed: Callable[[int], None] | None) -> Iterator[ImageRef]:
    for ref in refs:
        if on_listed is not None:
            on_listed(1)
        yield ref


__all__ = ["Listing", "default_job_name", "list_job", "prepare_job"]
