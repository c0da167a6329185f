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
    #: kwargs: ``job_id: int``, ``item_ids: list[int]`` of an edit job (issue 14, :mod:`workers.edit_tasks`)
    EDIT_CHUNK = "labelfleet.edit_chunk"


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


# --- issue 14: edit jobs -------------------------------------------------------------------------------
EDIT_QUEUE_PREFIX = f"{QUEUE_PREFIX}edit."


def edit_queue_for(preset: str) -> str:
    """The queue of edit jobs of a model preset: ``lf.edit.P`` (edit workers consume it)."""
    return EDIT_QUEUE_PREFIX + queue_for(preset).removeprefix(QUEUE_PREFIX)


def task_for_queue(queue: str) -> str:
    """The task name a chunk published on ``queue`` must carry (edit queues run the edit task)."""
    return str(TaskName.EDIT_CHUNK if queue.startswith(EDIT_QUEUE_PREFIX) else TaskName.PROCESS_CHUNK)
