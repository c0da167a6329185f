"""Thin Celery tasks: parse the IDs, call :func:`workers.service.run_chunk`, nothing else."""

from __future__ import annotations

from typing import Any

from celery.exceptions import Reject
from sqlalchemy.exc import OperationalError

from labelfleet.errors import DatabaseUnavailable, RetryableError, WorkerUnhealthy
from labelfleet.tasknames import TaskName
from workers import lifecycle  # noqa: F401  (connects the worker start/health signals)
from workers.celery_app import app
from workers.messages import ChunkKwargs
from workers.service import ProcessorBuilder, label_processor, run_chunk

#: Options shared by the chunk tasks: late acks, retries with backoff on transient errors.
CHUNK_TASK_OPTIONS: dict[str, Any] = dict(
    bind=True, acks_late=True, ignore_result=True,
    autoretry_for=(RetryableError, DatabaseUnavailable, OperationalError), retry_backoff=2,
    retry_backoff_max=60, retry_jitter=True, max_retries=20)


def run_chunk_task(task: Any, job_id: int, item_ids: list[int], build: ProcessorBuilder) -> dict[str, int]:
    """Body of a chunk task: validate the kwargs (as :class:`ChunkKwargs`), run the chunk.

    An unhealthy worker hands the message back to the queue (its items were
    given back uncharged) for a healthy worker to take.
    """
    args = ChunkKwargs(job_id=job_id, item_ids=item_ids)  # the consumer dead-letters bad ones before this
    try:
        return run_chunk(args.job_id, args.item_ids, hostname=str(task.request.hostname or "worker"), build=build)
    except WorkerUnhealthy as exc:
        raise Reject(exc.message, requeue=True) from exc


@app.task(name=TaskName.PROCESS_CHUNK, **CHUNK_TASK_OPTIONS)
def process_chunk(self: Any, *, job_id: int, item_ids: list[int]) -> dict[str, int]:
    """Label the given items of job ``job_id`` (those still claimable)."""
    return run_chunk_task(self, job_id, item_ids, label_processor)
