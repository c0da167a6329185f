"""Thin Celery task of edit jobs: parse the IDs, call :func:`workers.service.run_chunk` with the edit builder."""

from __future__ import annotations

from typing import Any

from labelfleet.tasknames import TaskName
from workers.celery_app import app
from workers.edit_service import edit_processor
from workers.tasks import CHUNK_TASK_OPTIONS, run_chunk_task


@app.task(name=TaskName.EDIT_CHUNK, **CHUNK_TASK_OPTIONS)
def edit_chunk(self: Any, *, job_id: int, item_ids: list[int]) -> dict[str, int]:
    """Edit the given items of edit job ``job_id`` (those still claimable)."""
    return run_chunk_task(self, job_id, item_ids, edit_processor)
