"""Read and manage the dead-letter list the workers fill (``lf.dead`` in the broker's Redis).

Records are JSON objects as documented at :data:`labelfleet.tasknames.DEAD_LETTER_KEY`,
newest first. Never imports ``workers``: this talks to Redis directly.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from labelfleet.errors import ConfigError
from labelfleet.tasknames import DEAD_LETTER_KEY
from orchestrator.broker import redis_client

logger = logging.getLogger(__name__)


def _client(broker_url: str) -> Any:
    client = redis_client(broker_url)
    if client is None:
        raise ConfigError("dead letters live in Redis; this broker is not redis:// or rediss://")
    return client


def count(broker_url: str) -> int | None:
    """How many dead letters the broker holds (None when it is not Redis or cannot be reached)."""
    client = redis_client(broker_url)
    if client is None:
        return None
    try:
        return int(client.llen(DEAD_LETTER_KEY))
    except Exception as exc:
        logger.debug("dead-letter count unknown: %s", exc)
        return None
    finally:
        client.close()


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(raw)
        if isinstance(record, dict):
            return record
    except ValueError:
        pass
    return {"reason": "unreadable dead-letter record", "raw": raw.decode("utf-8", "replace")[:200],
            "truncated": True}


def list_records(broker_url: str, limit: int = 100) -> tuple[int, list[dict[str, Any]]]:
    """``(total, newest `limit` records)``."""
    client = _client(broker_url)
    try:
        with client.pipeline() as pipe:
            total, raws = pipe.llen(DEAD_LETTER_KEY).lrange(DEAD_LETTER_KEY, 0, limit - 1).execute()
    finally:
        client.close()
    return int(total), [_parse(r) for r in raws]


def requeue(broker_url: str) -> tuple[int, int]:
    """Push every complete record's envelope back onto its queue; returns ``(requeued, kept)``.

    Records whose envelope was truncated or whose queue is unknown stay in the
    list. A message that is still malformed is dead-lettered again by the worker.
    """
    client = _client(broker_url)
    moved = kept = 0
    try:
        for raw in client.lrange(DEAD_LETTER_KEY, 0, -1):
            record = _parse(raw)
            queue = record.get("queue")
            if record.get("truncated") or not isinstance(queue, str) or not isinstance(record.get("raw"), str):
                kept += 1
                continue
            with client.pipeline(transaction=True) as pipe:
                pipe.lrem(DEAD_LETTER_KEY, 1, raw).lpush(queue, record["raw"]).execute()
            moved += 1
    finally:
        client.close()
    return moved, kept


def purge(broker_url: str) -> int:
    """Delete every dead letter; returns how many there were."""
    client = _client(broker_url)
    try:
        with client.pipeline(transaction=True) as pipe:
            total, _ = pipe.llen(DEAD_LETTER_KEY).delete(DEAD_LETTER_KEY).execute()
    finally:
        client.close()
    return int(total)


__all__ = ["count", "list_records", "purge", "requeue"]
