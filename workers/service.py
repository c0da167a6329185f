"""What a Celery task does, as plain functions tests call directly (no Celery needed).

Per worker process, one :class:`WorkerContext` caches the database engine,
the loaded pipelines (one per distinct job configuration) and the sources.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Job, JobState
from labelfleet.models.catalog import get_preset
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings
from labelfleet.storage import Source, open_source
from workers.pipeline import Pipeline
from workers.processing import ItemProcessor

logger = logging.getLogger(__name__)
_PRESET_KEYS = ("preset", "tagger", "detector", "segmenter")


class WorkerContext:
    """Process-wide state of a worker: models load once, connections are reused."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.engine: Engine = make_engine(self.settings.db_url.get_secret_value())
        self.factory: sessionmaker[Session] = session_factory(self.engine)
        self._pipelines: dict[str, Pipeline] = {}
        self._sources: dict[str, Source] = {}
        self._lock = threading.Lock()

    def pipeline_for(self, config: dict[str, Any]) -> Pipeline:
        """The pipeline of a job configuration, built on first use and kept for the process."""
        key = json.dumps(config, sort_keys=True)
        with self._lock:
            if key not in self._pipelines:
                from workers.models import build_pipeline

                preset = get_preset(config["preset"]).with_overrides(
                    tagger=config.get("tagger"), detector=config.get("detector"), segmenter=config.get("segmenter"))
                pcfg = PipelineConfig.from_json({k: v for k, v in config.items() if k not in _PRESET_KEYS})
                logger.info("loading models for preset %s", preset.name)
                self._pipelines[key], _ = build_pipeline(preset, self.settings, pcfg)
            return self._pipelines[key]

    def source_for(self, uri: str) -> Source:
        if uri not in self._sources:
            self._sources[uri] = open_source(uri, s3_endpoint_url=self.settings.s3_endpoint_url)
        return self._sources[uri]

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


def run_chunk(job_id: int, item_ids: list[int], *, hostname: str = "worker",
              ctx: WorkerContext | None = None) -> dict[str, int]:
    """Claim the still-claimable ``item_ids`` of ``job_id``, label them, record every outcome.

    Returns counts by status (``{"done": 30, "failed": 2}``); a cancelled or
    unknown job returns ``{}``. On any exception the claimed, unfinished items
    are released before it propagates (Celery then retries the task).
    """
    ctx = ctx or context()
    owner = f"{hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with ctx.factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.state == JobState.CANCELLED:
            logger.info("job %s is gone or cancelled; dropping %d items", job_id, len(item_ids))
            return {}
        config, source_uri = dict(job.config), job.source
    pipeline = ctx.pipeline_for(config)
    with ctx.factory() as s:
        ids = repo.claim_items(s, job_id, owner, limit=len(item_ids), lease_seconds=ctx.settings.lease_seconds,
                               item_ids=item_ids)
    if not ids:
        return {}
    processor = ItemProcessor(ctx.factory, pipeline, ctx.settings, owner, ctx.source_for(source_uri))
    try:
        stats = processor.process(ids)
    except BaseException:
        try:
            with ctx.factory() as s:
                repo.release_items(s, ids, owner)
        except Exception:
            logger.warning("could not release %d items; their leases will expire", len(ids))
        raise
    finally:
        processor.close()
    logger.info("job %s: chunk of %d -> %s", job_id, len(ids), stats.counts,
                extra={"job_id": job_id, "worker": owner})
    return dict(stats.counts)
