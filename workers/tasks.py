"""Thin Celery tasks: parse the IDs, call :func:`workers.service.run_chunk`, nothing else."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError

from labelfleet.errors import RetryableError
from labelfleet.tasknames import TaskName
from workers.celery_app import app
from workers.messages import ChunkKwargs
from workers.service import run_chunk


@app.task(name=TaskName.PROCESS_CHUNK, bind=True, acks_late=True, ignore_result=True,
          autoretry_for=(RetryableError, OperationalError), retry_backoff=2, retry_backoff_max=60,
          retry_jitter=True, max_retries=20)
def process_chunk(self: Any, *, job_id: int, item_ids: list[int]) -> dict[str, int]:
    """Label the given items of job ``job_id`` (those still claimable); kwargs as :class:`ChunkKwargs`."""
    args = ChunkKwargs(job_id=job_id, item_ids=item_ids)  # the consumer dead-letters bad ones before this
    return run_chunk(args.job_id, args.item_ids, hostname=str(self.request.hostname or "worker"))
