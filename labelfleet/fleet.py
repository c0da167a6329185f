"""Unhealthy workers, as the fleet reports them to the broker's Redis (read by ``status --json``).

A worker that stops because it is unhealthy (models do not load, device fault) records
``HSET lf.workers.unhealthy <node> {"reason", "at", "queues", "pid"}`` before it exits; a
worker of the same node name that becomes ready again removes its entry. The health
*files* (:mod:`workers.health`) stay the probes' source; this is the fleet-wide view.
Redis is imported lazily, so the core stays free of broker clients at import time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)
#: Redis hash: node name -> JSON ``{"reason": str, "at": unix seconds, "queues": [str], "pid": int}``.
UNHEALTHY_KEY = "lf.workers.unhealthy"


def _client(broker_url: str) -> Any:
    if urlsplit(broker_url).scheme not in ("redis", "rediss"):
        return None
    import redis

    return redis.Redis.from_url(broker_url, socket_connect_timeout=5, socket_timeout=10)


def record_unhealthy(broker_url: str, node: str, reason: str, queues: list[str]) -> bool:
    """Record ``node`` as unhealthy with its one-line ``reason``; False when the broker cannot be told."""
    client = _client(broker_url)
    if client is None:
        return False
    entry = {"reason": reason.strip().splitlines()[0][:2000] if reason.strip() else "unhealthy",
             "at": round(time.time(), 3), "queues": list(queues), "pid": os.getpid()}
    try:
        client.hset(UNHEALTHY_KEY, node, json.dumps(entry))
        return True
    except Exception as exc:  # the broker may be the thing that is down: the health files still say it
        logger.warning("could not report worker %s unhealthy to the broker: %s", node, type(exc).__name__)
        return False
    finally:
        client.close()


def clear(broker_url: str, node: str) -> None:
    """Forget ``node``'s unhealthy entry (it is ready again)."""
    client = _client(broker_url)
    if client is None:
        return
    try:
        client.hdel(UNHEALTHY_KEY, node)
    except Exception as exc:
        logger.debug("could not clear worker %s's unhealthy entry: %s", node, exc)
    finally:
        client.close()


def unhealthy_workers(broker_url: str, queue: str | None = None) -> list[dict[str, Any]] | None:
    """Unhealthy workers (``{"worker", "reason", "at", "queues", "pid"}``, newest first), those serving
    ``queue`` when given; None when the broker is not Redis or cannot be reached."""
    client = _client(broker_url)
    if client is None:
        return None
    try:
        raw = client.hgetall(UNHEALTHY_KEY)
    except Exception as exc:
        logger.debug("unhealthy workers unknown: %s", exc)
        return None
    finally:
        client.close()
    out = []
    for node, value in raw.items():
        try:
            entry = json.loads(value)
        except ValueError:
            entry = {"reason": "unreadable entry"}
        entry = {"worker": node.decode() if isinstance(node, bytes) else str(node), **entry}
        if queue is None or not entry.get("queues") or queue in entry["queues"]:
            out.append(entry)
    return sorted(out, key=lambda e: -float(e.get("at") or 0))
