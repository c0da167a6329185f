"""What a Celery task does, as plain functions tests call directly (no Celery needed).

Per worker process, one :class:`WorkerContext` caches the database engine,
the loaded pipelines (one per distinct job configuration) and the sources.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Item, Job, JobState
from labelfleet.errors import LabelfleetError
from labelfleet.models.catalog import get_preset
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings
from labelfleet.storage import Source, open_source
from workers.models import LoadedModels, build_stages, free_accelerator_memory, pipeline_from
from workers.pipeline import Pipeline
from workers.processing import ItemProcessor, classify_error

logger = logging.getLogger(__name__)
#: Job-config keys that are not pipeline settings.
_JOB_KEYS = ("preset", "tagger", "detector", "segmenter", "s3_endpoint_url", "include", "exclude")


class WorkerContext:
    """Process-wide state of a worker: models load once, connections are reused.

    Loaded models are cached by model keys (not by job), so jobs that differ
    only in classes or thresholds share one copy in memory; at most
    ``MAX_MODEL_SETS`` sets stay loaded (the least recently used is dropped).
    """

    MAX_MODEL_SETS = 2

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.engine: Engine = make_engine(self.settings.db_url.get_secret_value())
        self.factory: sessionmaker[Session] = session_factory(self.engine)
        self._models: OrderedDict[tuple[str | None, str, str], LoadedModels] = OrderedDict()
        self._sources: dict[tuple[str, str | None], Source] = {}
        self._lock = threading.Lock()

    def pipeline_for(self, config: dict[str, Any]) -> Pipeline:
        """A pipeline for a job configuration; its models are loaded on first use and shared."""
        preset = get_preset(config["preset"]).with_overrides(
            tagger=config.get("tagger"), detector=config.get("detector"), segmenter=config.get("segmenter"))
        pcfg = PipelineConfig.from_json({k: v for k, v in config.items() if k not in _JOB_KEYS})
        key = (preset.tagger if pcfg.automatic else None, preset.detector, preset.segmenter)
        with self._lock:
            if key not in self._models:
                while len(self._models) >= self.MAX_MODEL_SETS:
                    self._models.popitem(last=False)
                    free_accelerator_memory()
                logger.info("loading models %s", key)
                shared = dataclasses.replace(pcfg, tag_threshold=None)  # per-job thresholds go on copies
                self._models[key] = build_stages(preset, self.settings, automatic=pcfg.automatic, config=shared)
            self._models.move_to_end(key)
            return pipeline_from(self._models[key], pcfg)

    def source_for(self, uri: str, endpoint_url: str | None) -> Source:
        key = (uri, endpoint_url or self.settings.s3_endpoint_url)
        with self._lock:
            if key not in self._sources:
                self._sources[key] = open_source(uri, s3_endpoint_url=key[1])
            return self._sources[key]

    def close(self) -> None:
        self.engine.dispose()


_CONTEXT: WorkerContext | None = None


def context() -> WorkerContext:
    """This process's context (created lazily after fork, so no connection crosses processes)."""
    if _CONTEXT is None or os.getpid() != _CONTEXT_PID:
        ctx = WorkerContext()
        _set_context(ctx)
        return ctx
    return _CONTEXT


_CONTEXT_PID = -1


def _set_context(ctx: WorkerContext) -> None:
    global _CONTEXT, _CONTEXT_PID
    _CONTEXT, _CONTEXT_PID = ctx, os.getpid()


#: Builds the processor of a chunk: ``build(ctx, job_id, job_config, source_uri, owner)``.
ProcessorBuilder = Callable[[WorkerContext, int, dict[str, Any], str, str], ItemProcessor]


def label_processor(ctx: WorkerContext, job_id: int, config: dict[str, Any], source_uri: str,
                    owner: str) -> ItemProcessor:
    """The labelling processor of a job (models shared through ``ctx``)."""
    pipeline = ctx.pipeline_for(config)
    source = ctx.source_for(source_uri, config.get("s3_endpoint_url"))
    return ItemProcessor(ctx.factory, pipeline, ctx.settings, owner, source)


def run_chunk(job_id: int, item_ids: list[int], *, hostname: str = "worker",
              ctx: WorkerContext | None = None, build: ProcessorBuilder = label_processor) -> dict[str, int]:
    """Claim the still-claimable ``item_ids`` of ``job_id``, label them, record every outcome.

    Returns counts by status (``{"done": 30, "failed": 2}``); a cancelled or
    unknown job returns ``{}``. A model or source that cannot be loaded marks
    the claimed items with the reason (so nothing waits silently); any other
    exception gives the unfinished items back, the attempt counted, and
    propagates (Celery retries database errors).
    """
    ctx = ctx or context()
    owner = f"{hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with ctx.factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.state == JobState.CANCELLED:
            logger.info("job %s is gone or cancelled; dropping %d items", job_id, len(item_ids))
            return {}
        config, source_uri = dict(job.config), job.source
        ids = repo.claim_items(s, job_id, owner, limit=len(item_ids), lease_seconds=ctx.settings.lease_seconds,
                               item_ids=item_ids)
    if not ids:
        return {}
    try:
        processor = build(ctx, job_id, config, source_uri, owner)
    except LabelfleetError as exc:
        return _fail_claimed(ctx, ids, owner, exc)
    try:
        stats = processor.process(ids)
    except BaseException as exc:
        _release(ctx, ids, owner, exc)
        raise
    finally:
        processor.close()
    logger.info("job %s: chunk of %d -> %s", job_id, len(ids), stats.counts,
                extra={"job_id": job_id, "worker": owner})
    return dict(stats.counts)


def _fail_claimed(ctx: WorkerContext, ids: list[int], owner: str, exc: LabelfleetError) -> dict[str, int]:
    """Record why a chunk could not even start (missing weights, unreadable source) on each item."""
    logger.error("cannot start chunk of %d items: %s", len(ids), exc.message)
    counts: dict[str, int] = {}
    with ctx.factory() as s:
        attempts = dict(s.execute(select(Item.id, Item.attempts).where(Item.id.in_(ids))).tuples().all())
        for item_id in ids:
            status, reason = classify_error(exc, attempts.get(item_id, 1), ctx.settings.max_attempts)
            if repo.end_item(s, item_id, owner, status, reason):
                counts[status] = counts.get(status, 0) + 1
    return counts


def _release(ctx: WorkerContext, ids: list[int], owner: str, exc: BaseException) -> None:
    refund = isinstance(exc, KeyboardInterrupt | SystemExit)
    try:
        with ctx.factory() as s:
            repo.release_items(s, ids, owner, refund=refund, max_attempts=ctx.settings.max_attempts,
                               reason=f"{type(exc).__name__}: {exc}")
    except Exception:
        logger.warning("could not release %d items; their leases will expire", len(ids))
