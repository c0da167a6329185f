"""A producer-only Celery app: enqueue by task name, JSON only, never importing ``workers``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

from celery import Celery

from labelfleet.tasknames import task_for_queue

logger = logging.getLogger(__name__)


@lru_cache(maxsize=8)
def producer(broker_url: str) -> Celery:
    """A Celery app used only to publish (no result backend: job state lives in the DB)."""
    app = Celery("labelfleet-orchestrator", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"], broker_connection_retry_on_startup=True,
                    broker_transport_options={"visibility_timeout": 7200})
    return app


def enqueue_chunk(broker_url: str, queue: str, job_id: int, item_ids: Sequence[int]) -> None:
    """Publish one chunk: ``process_chunk(job_id=..., item_ids=[...])`` onto ``queue`` (``edit_chunk`` on edit
    queues, see :func:`labelfleet.tasknames.task_for_queue`)."""
    producer(broker_url).send_task(task_for_queue(queue), kwargs={"job_id": job_id, "item_ids": list(item_ids)},
                                   queue=queue, serializer="json")


def queue_depth(broker_url: str, queue: str) -> int | None:
    """Messages waiting in ``queue`` (None if the broker cannot tell)."""
    app = producer(broker_url)
    try:
        with app.connection_for_write() as conn:
            ok = conn.default_channel.queue_declare(queue=queue, passive=True)
            return int(ok.message_count)
    except Exception as exc:
        logger.debug("queue depth of %s unknown: %s", queue, exc)
        return None
