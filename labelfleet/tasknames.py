"""Celery task names and queue names shared by the orchestrator (producer) and the workers.

The orchestrator enqueues by name with ``send_task`` and never imports
``workers``. Payloads are JSON with IDs only.
"""

from __future__ import annotations

import enum
import re


class TaskName(enum.StrEnum):
    #: kwargs: ``job_id: int``, ``item_ids: list[int]``
    PROCESS_CHUNK = "labelfleet.process_chunk"


QUEUE_PREFIX = "lf."


def queue_for(preset: str) -> str:
    """The queue of a model configuration: workers that loaded preset P consume ``lf.P``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", preset)
    return f"{QUEUE_PREFIX}{safe}"


#: Most item IDs one ``process_chunk`` message may carry (``--chunk-size`` is capped at this).
MAX_CHUNK_ITEMS = 1000

#: Redis list (LPUSH, newest first) where workers move messages they refuse: each entry is the JSON
#: object ``{"reason", "queue", "task", "message_id", "worker", "at", "raw", "truncated"}`` where ``raw``
#: is the kombu envelope as received (a string, cut to 64 KiB when ``truncated``).
DEAD_LETTER_KEY = "lf.dead"
