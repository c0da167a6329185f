"""A producer-only Celery app: enqueue by task name, JSON only, never importing ``workers``."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

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


#: kombu's Redis transport: priority lists are ``queue + SEP + str(priority)``; delivered, unacked
#: messages sit in the hash ``UNACKED`` as ``[envelope, exchange, routing_key]``.
_PRIORITY_SEP = "\x06\x16"
_PRIORITIES = (0, 3, 6, 9)
_UNACKED = "unacked"


def new_message_id() -> str:
    """A Celery task id, recorded on the items before their message is published."""
    return str(uuid.uuid4())


def enqueue_chunk(broker_url: str, queue: str, job_id: int, item_ids: Sequence[int],
                  message_id: str | None = None) -> None:
    """Publish one chunk: ``process_chunk(job_id=..., item_ids=[...])`` onto ``queue`` as task ``message_id``
    (``edit_chunk`` on edit queues, see :func:`labelfleet.tasknames.task_for_queue`)."""
    with chunk_publisher(broker_url) as publish:
        publish(queue, job_id, item_ids, message_id)


@contextmanager
def chunk_publisher(broker_url: str) -> Iterator[Callable[[str, int, Sequence[int], str | None], None]]:
    """``publish(queue, job_id, item_ids, message_id)`` as :func:`enqueue_chunk`, all through ONE producer
    (connection and channel acquired once, not per message)."""
    app = producer(broker_url)
    with app.producer_or_acquire() as prod:
        def publish(queue: str, job_id: int, item_ids: Sequence[int], message_id: str | None) -> None:
            app.send_task(task_for_queue(queue), kwargs={"job_id": job_id, "item_ids": list(item_ids)},
                          queue=queue, serializer="json", task_id=message_id, producer=prod)

        yield publish


def redis_client(broker_url: str) -> Any:
    """A redis-py client for a ``redis://``/``rediss://`` broker, else None (imports redis lazily)."""
    if urlsplit(broker_url).scheme not in ("redis", "rediss"):
        return None
    import redis

    return redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=30)


def _envelope_id(raw: bytes | str) -> str | None:
    try:
        payload = json.loads(raw)
        if isinstance(payload, list):  # an unacked entry: [envelope, exchange, routing_key]
            payload = payload[0]
        msg_id = payload["headers"]["id"]
        return msg_id if isinstance(msg_id, str) else None
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def held_message_ids(broker_url: str, queue: str, page: int = 1000) -> set[str] | None:
    """Celery task ids of the messages the broker still holds for ``queue``: waiting in its lists or
    delivered and not yet acked (which kombu restores after the visibility timeout).

    None when the broker cannot tell (not Redis, or unreachable). Reads every
    waiting message's headers: O(queue length), paged ``page`` at a time.
    """
    client = redis_client(broker_url)
    if client is None:
        return None
    ids: set[str] = set()
    try:
        for pri in _PRIORITIES:
            key = queue if pri == 0 else f"{queue}{_PRIORITY_SEP}{pri}"
            start = 0
            while batch := client.lrange(key, start, start + page - 1):
                ids.update(i for i in map(_envelope_id, batch) if i)
                start += page
        for raw in client.hvals(_UNACKED):
            if (msg_id := _envelope_id(raw)) is not None:
                ids.add(msg_id)
    except Exception as exc:
        logger.debug("messages held for %s unknown: %s", queue, exc)
        return None
    finally:
        client.close()
    return ids


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
