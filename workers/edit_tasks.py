"""Thin Celery task of edit jobs: parse the IDs, call :func:`workers.service.run_chunk` with the edit builder."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

from labelfleet.errors import RetryableError
from labelfleet.tasknames import TaskName
from workers.celery_app import app
from workers.edit_service import edit_processor
from workers.service import run_chunk


@app.task(name=TaskName.EDIT_CHUNK, bind=True, acks_late=True, ignore_result=True,
          autoretry_for=(RetryableError, OperationalError), retry_backoff=2, retry_backoff_max=60,
          retry_jitter=True, max_retries=20)
def edit_chunk(self: Any, *, job_id: int, item_ids: list[int]) -> dict[str, int]:
    """Edit the given items of edit job ``job_id`` (those still claimable)."""
    return run_chunk(int(job_id), [int(i) for i in item_ids], hostname=str(self.request.hostname or "worker"),
                     build=edit_processor)
