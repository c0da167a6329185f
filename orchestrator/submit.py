"""``submit``: list a source into a job and enqueue its items, the enqueue overlapping the listing (issue 13).

While :func:`orchestrator.jobs.list_job` lists and inserts (committing every 1,000 keys), a thread
claims and publishes the whole chunks of what is committed so far
(:func:`orchestrator.dispatch.enqueue_pending` with ``whole_chunks``); once the listing is done the
rest is enqueued. Claims are the same conditional UPDATEs as always, so the guarantees hold: each
item is published once, however many submits and sweepers run; an interrupted submit resumes
(listing at its cursor, enqueue of what is not claimed yet; claimed-but-unpublished chunks are
republished by the sweeper). On SQLite (one writer at a time) the two run one after the other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from orchestrator.dispatch import enqueue_pending
from orchestrator.jobs import Listing, list_job

#: How often the enqueuer looks for newly committed items while the listing runs (seconds).
POLL_S = 0.05


def list_and_enqueue(factory: sessionmaker[Session], broker_url: str, *, chunk_size: int,
                     on_chunk: Callable[[int], None] | None = None, **list_kw: Any) -> tuple[Listing, int]:
    """:func:`~orchestrator.jobs.list_job` (``list_kw``) and enqueue; returns ``(listing, items enqueued)``."""
    with factory() as s:
        overlap = s.get_bind().dialect.name != "sqlite"
    listed = threading.Event()
    job_ids: list[int] = []
    counts: list[int] = []
    errors: list[BaseException] = []

    def enqueue_while_listing() -> None:
        try:
            while True:
                finished = listed.is_set()  # read before the pass: a pass after the end sees every item
                counts.append(enqueue_pending(factory, job_ids[0], broker_url, chunk_size=chunk_size,
                                              on_chunk=on_chunk, whole_chunks=True))
                if finished or listed.wait(POLL_S if counts[-1] == 0 else 0):
                    return
        except BaseException as exc:  # raised in the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=enqueue_while_listing, name="submit-enqueue", daemon=True)

    def start(job_id: int) -> None:
        job_ids.append(job_id)
        if overlap:
            thread.start()

    try:
        listing = list_job(factory, on_job=start, **list_kw)
    finally:
        listed.set()
        if thread.is_alive():
            thread.join()
    if errors:
        raise errors[0]
    return listing, sum(counts) + enqueue_pending(factory, listing.job_id, broker_url, chunk_size=chunk_size,
                                                  on_chunk=on_chunk)
