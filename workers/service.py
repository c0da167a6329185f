"""What a Celery task does, as plain functions tests call directly (no Celery needed).

Per worker process, one :class:`WorkerContext` caches the database engine,
the loaded pipelines (one per distinct job configuration) and the sources.

Worker health is kept apart from item health: a worker whose models cannot
load or whose device faulted gives its items back *uncharged*, reports itself
unhealthy (:meth:`WorkerContext.report_unhealthy`) and takes no more work.
While a chunk is processed a :class:`LeaseKeeper` renews its leases, so a slow
worker keeps its items and a dead one loses them within one lease TTL.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Item, Job, JobState
from labelfleet.errors import ConfigError, InfrastructureError, LabelfleetError, WorkerUnhealthy
from labelfleet.models.catalog import Preset, get_preset
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings
from labelfleet.storage import Source, open_source
from workers import faults
from workers.checkpoints import fetch_checkpoint
from workers.leases import LeaseKeeper
from workers.models import LoadedModels, build_stages, free_accelerator_memory, pipeline_from
from workers.pipeline import Pipeline
from workers.processing import TIME_LIMIT_ERRORS, ItemProcessor, classify_error, infrastructure_error

logger = logging.getLogger(__name__)
#: Job-config keys that are not pipeline settings.
_JOB_KEYS = ("preset", "tagger", "detector", "segmenter", "s3_endpoint_url", "include", "exclude", "checkpoints")
#: Cache key of loaded models: (tagger or None, detector, segmenter, ((stage, checkpoint sha256), ...)).
_ModelKey = tuple[str | None, str, str, tuple[tuple[str, str], ...]]


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
        self._models: OrderedDict[_ModelKey, LoadedModels] = OrderedDict()
        self._sources: dict[tuple[str, str | None], Source] = {}
        self._lock = threading.Lock()
        self._provenance_recorded: set[int] = set()
        #: Why this worker stopped taking work (None while healthy); see :meth:`report_unhealthy`.
        self.unhealthy: str | None = None
        #: Called once with the reason when the worker becomes unhealthy (the Celery layer stops the worker).
        self.on_unhealthy: Callable[[str], None] | None = None

    def report_unhealthy(self, reason: str) -> None:
        """Mark this worker unhealthy (once): log one clear line and tell the supervisor layer."""
        if self.unhealthy is not None:
            return
        self.unhealthy = reason
        logger.error("worker unhealthy, it takes no more work and exits: %s", reason)
        if self.on_unhealthy is not None:
            self.on_unhealthy(reason)

    def preload(self, preset_name: str) -> LoadedModels:
        """Load every model of a preset (tagger included) now, e.g. at worker start, outside any time limit."""
        return self._loaded(get_preset(preset_name), PipelineConfig())

    def models_for(self, config: dict[str, Any]) -> tuple[LoadedModels, PipelineConfig]:
        """The loaded models and pipeline settings of a job configuration.

        A bad configuration, or a fine-tuned checkpoint (``config["checkpoints"]``:
        stage -> ``{"uri": "s3://...", "sha256": ...}``) whose bytes do not match,
        raises a :class:`~labelfleet.errors.PermanentError` (the job's fault);
        models that cannot be loaded raise :class:`WorkerUnhealthy`.
        """
        preset = get_preset(config["preset"]).with_overrides(
            tagger=config.get("tagger"), detector=config.get("detector"), segmenter=config.get("segmenter"))
        pcfg = PipelineConfig.from_json({k: v for k, v in config.items() if k not in _JOB_KEYS})
        named = {k: v for k, v in (config.get("checkpoints") or {}).items() if pcfg.automatic or k != "tagger"}
        paths = {stage: fetch_checkpoint(c["uri"], c["sha256"], self.settings.model_path,
                                         endpoint_url=config.get("s3_endpoint_url") or self.settings.s3_endpoint_url)
                 for stage, c in sorted(named.items())}
        loaded = self._loaded(preset, pcfg, paths, tuple((k, v["sha256"]) for k, v in sorted(named.items())))
        for stage, c in named.items():
            loaded.provenance[stage]["checkpoint_uri"] = c["uri"]
        return loaded, pcfg

    def _loaded(self, preset: Preset, pcfg: PipelineConfig, checkpoints: dict[str, Path] | None = None,
                shas: tuple[tuple[str, str], ...] = ()) -> LoadedModels:
        with self._lock:
            key = next((k for k in reversed(self._models) if k[1:] == (preset.detector, preset.segmenter, shas)
                        and (not pcfg.automatic or k[0] == preset.tagger)), None)
            if key is None:
                key = (preset.tagger if pcfg.automatic else None, preset.detector, preset.segmenter, shas)
                while len(self._models) >= self.MAX_MODEL_SETS:
                    self._models.popitem(last=False)
                    free_accelerator_memory()
                logger.info("loading models %s", key)
                shared = dataclasses.replace(pcfg, tag_threshold=None)  # per-job thresholds go on copies
                try:
                    self._models[key] = build_stages(preset, self.settings, automatic=pcfg.automatic,
                                                     config=shared, checkpoints=dict(checkpoints or {}))
                except Exception as exc:
                    msg = exc.message if isinstance(exc, LabelfleetError) else f"{type(exc).__name__}: {exc}"
                    names = "/".join(filter(None, key[:3]))
                    if shas:  # the job's own (verified) fine-tuned weights do not load: the job's fault
                        raise ConfigError(f"cannot load the job's fine-tuned checkpoints for {names}: {msg}") from exc
                    raise WorkerUnhealthy(f"cannot load models {names}: {msg}") from exc
            self._models.move_to_end(key)
            return self._models[key]

    def pipeline_for(self, config: dict[str, Any]) -> Pipeline:
        """A pipeline for a job configuration; its models are loaded on first use and shared."""
        loaded, pcfg = self.models_for(config)
        return faults.inject(pipeline_from(loaded, pcfg))  # faults: only with LABELFLEET_TEST_FAULT (tests)

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
    """The labelling processor of a job (models shared through ``ctx``; provenance recorded on the job)."""
    loaded, pcfg = ctx.models_for(config)
    pipeline = faults.inject(pipeline_from(loaded, pcfg))
    source = ctx.source_for(source_uri, config.get("s3_endpoint_url"))
    _record_provenance(ctx, job_id, loaded, pcfg.automatic)
    return ItemProcessor(ctx.factory, pipeline, ctx.settings, owner, source)


def run_chunk(job_id: int, item_ids: list[int], *, hostname: str = "worker",
              ctx: WorkerContext | None = None, build: ProcessorBuilder = label_processor) -> dict[str, int]:
    """Claim the still-claimable ``item_ids`` of ``job_id``, label them, record every outcome.

    Returns counts by status (``{"done": 30, "failed": 2}``); a cancelled or
    unknown job returns ``{}``. Errors:

    * an item's own error (bad image, vanished object) is recorded on that item;
    * a job configuration or source that cannot be used fails the claimed items with the reason;
    * :class:`WorkerUnhealthy` (models do not load, device fault; also raised at once when this
      worker is already unhealthy) and :class:`~labelfleet.errors.DatabaseUnavailable` give the
      items back *without* counting the attempt, then propagate;
    * Celery's soft time limit charges only the batch in the models, gives the rest back and returns;
    * any other exception gives the items back, the attempt counted, and propagates.
    """
    ctx = ctx or context()
    if ctx.unhealthy is not None:
        raise WorkerUnhealthy(ctx.unhealthy)
    owner = f"{hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        claimed = _claim(ctx, job_id, item_ids, owner)
    except (OperationalError, InterfaceError) as exc:
        raise (infrastructure_error(exc) or exc) from exc
    if claimed is None:
        return {}
    config, source_uri, ids = claimed
    try:
        processor = build(ctx, job_id, config, source_uri, owner)
    except WorkerUnhealthy as exc:
        _release(ctx, ids, owner, exc, charge=False)
        ctx.report_unhealthy(exc.message)
        raise
    except LabelfleetError as exc:
        return _fail_claimed(ctx, ids, owner, exc)
    with LeaseKeeper(ctx.factory, ids, owner, ctx.settings.lease_seconds):
        try:
            stats = processor.process(ids)
        except TIME_LIMIT_ERRORS:
            _release_after_time_limit(ctx, ids, owner, processor.in_progress)
            return {}
        except BaseException as exc:
            infra = exc if isinstance(exc, InfrastructureError) else None
            _release(ctx, ids, owner, exc, charge=infra is None and not isinstance(exc, KeyboardInterrupt | SystemExit))
            if isinstance(exc, WorkerUnhealthy):
                ctx.report_unhealthy(exc.message)
            raise
        finally:
            processor.close()
    logger.info("job %s: chunk of %d -> %s", job_id, len(ids), stats.counts,
                extra={"job_id": job_id, "worker": owner})
    return dict(stats.counts)


def _claim(ctx: WorkerContext, job_id: int, item_ids: list[int], owner: str
           ) -> tuple[dict[str, Any], str, list[int]] | None:
    with ctx.factory() as s:
        job = s.get(Job, job_id)
        if job is None or job.state == JobState.CANCELLED:
            logger.info("job %s is gone or cancelled; dropping %d items", job_id, len(item_ids))
            return None
        config, source_uri = dict(job.config), job.source
        ids = repo.claim_items(s, job_id, owner, limit=len(item_ids), lease_seconds=ctx.settings.lease_seconds,
                               item_ids=item_ids)
    return (config, source_uri, ids) if ids else None


def _fail_claimed(ctx: WorkerContext, ids: list[int], owner: str, exc: LabelfleetError) -> dict[str, int]:
    """Record why a chunk could not even start (bad job configuration, unreadable source) on each item."""
    logger.error("cannot start chunk of %d items: %s", len(ids), exc.message)
    counts: dict[str, int] = {}
    with ctx.factory() as s:
        attempts = dict(s.execute(select(Item.id, Item.attempts).where(Item.id.in_(ids))).tuples().all())
        for item_id in ids:
            status, reason = classify_error(exc, attempts.get(item_id, 1), ctx.settings.max_attempts)
            if repo.end_item(s, item_id, owner, status, reason):
                counts[status] = counts.get(status, 0) + 1
    return counts


def _release(ctx: WorkerContext, ids: list[int], owner: str, exc: BaseException, *, charge: bool) -> None:
    """Give the unfinished items back (``charge``: the attempt counts), retrying while the database is down.

    Items that cannot be given back within ``min(30 s, lease/2)`` stay leased
    until their (short, no longer renewed) lease expires.
    """
    reason = exc.message if isinstance(exc, LabelfleetError) else f"{type(exc).__name__}: {exc}"
    if not charge:
        reason = f"given back, attempt not counted: {reason}"
    deadline = time.monotonic() + min(30.0, ctx.settings.lease_seconds / 2)
    delay = 0.5
    while True:
        try:
            with ctx.factory() as s:
                n = repo.release_items(s, ids, owner, refund=not charge, max_attempts=ctx.settings.max_attempts,
                                       reason=reason)
            logger.info("gave back %d items (%s)", n, "attempt counted" if charge else "attempt not counted")
            return
        except Exception:
            if time.monotonic() + delay > deadline:
                logger.warning("could not give back %d items; their leases expire within %d s", len(ids),
                               ctx.settings.lease_seconds)
                return
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _release_after_time_limit(ctx: WorkerContext, ids: list[int], owner: str, in_progress: list[int]) -> None:
    """Soft time limit: the batch in the models is charged, the items not started yet are given back uncharged."""
    limit = ctx.settings.task_soft_time_limit
    busy = set(in_progress)
    try:
        with ctx.factory() as s:
            charged = repo.release_items(
                s, [i for i in ids if i in busy], owner, refund=False, max_attempts=ctx.settings.max_attempts,
                reason=f"the task's soft time limit ({limit} s) was reached while this item was being labelled")
            freed = repo.release_items(
                s, [i for i in ids if i not in busy], owner, refund=True,
                reason=f"the task's soft time limit ({limit} s) was reached before this item was labelled")
    except Exception as exc:
        logger.warning("soft time limit: could not give back %d items (%s); their leases expire within %d s",
                       len(ids), type(exc).__name__, ctx.settings.lease_seconds)
        return
    logger.warning("soft time limit (%d s) reached: %d items in progress charged, %d given back uncharged",
                   limit, charged, freed, extra={"worker": owner})


def _record_provenance(ctx: WorkerContext, job_id: int, loaded: LoadedModels, automatic: bool) -> None:
    """Record on the job (once) which model files its items are labelled with; warn when this worker differs."""
    if job_id in ctx._provenance_recorded:
        return
    stages = {k: loaded.provenance.get(k) for k in ("detector", "segmenter")}
    stages["tagger"] = loaded.provenance.get("tagger") if automatic else None
    try:
        with ctx.factory() as s:
            q = select(Job).where(Job.id == job_id)
            if s.get_bind().dialect.name == "postgresql":
                q = q.with_for_update()
            job = s.scalars(q).one()
            models = dict(job.models or {})
            known = models.get("stages")
            if known is None:
                job.models = {**models, "stages": stages}
            elif _shas(known) != _shas(stages):
                logger.error("job %s: this worker loaded other weights (%s) than the job records (%s)", job_id,
                             _shas(stages), _shas(known))
            s.commit()
    except Exception as exc:  # provenance must never stop labelling
        logger.warning("job %s: could not record model provenance (%s)", job_id, type(exc).__name__)
        return
    ctx._provenance_recorded.add(job_id)


def _shas(stages: dict[str, Any]) -> dict[str, Any]:
    return {k: (v or {}).get("checkpoint_sha256") for k, v in stages.items()}
