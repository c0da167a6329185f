"""Build the processor of an edit job's chunk (plain function; the Celery task and local mode call it)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labelfleet.db.models import Job
from labelfleet.edit import EditParams
from labelfleet.errors import ConfigError
from labelfleet.models.catalog import get_model, get_preset, revision_pinned_config
from labelfleet.storage.dest import open_destination
from workers.edit_processing import EditProcessor
from workers.inpaint import get_inpainter, resolve_inpainter
from workers.service import WorkerContext

logger = logging.getLogger(__name__)


def edit_model_info(config: dict[str, Any], res: Any) -> dict[str, Any]:
    """Provenance of the inpainting model; ``random_weights`` when the inpainter or (masks made on the
    fly) the labelling models have random weights."""
    params = EditParams.from_json(config["edit"])
    random = res.origin == "generated" or (not params.from_job and get_preset(config["preset"]).random_weights)
    key = f"local:{res.files['pipeline_dir']}" if res.origin == "local" else res.key
    return {"key": key, "sha256": res.checkpoint_sha256, "origin": res.origin, "random_weights": bool(random),
            "sha256_pinned": res.origin == "generated" or (res.origin == "official" and _weights_pinned(res.key))}


def _weights_pinned(key: str) -> bool:
    """Every weight file of catalog model ``key`` has a pinned sha256 (configs may be pinned by revision)."""
    files = get_model(key).files
    return bool(files) and all(f.sha256 or revision_pinned_config(f) for f in files)


def edit_processor(ctx: WorkerContext, job_id: int, config: dict[str, Any], source_uri: str, owner: str,
                   on_item: Any = None, allow_download: bool = True) -> EditProcessor:
    """An :class:`EditProcessor` for edit job ``job_id`` (models load once per process and are shared)."""
    params = EditParams.from_json(config["edit"])
    endpoint = config.get("s3_endpoint_url") or ctx.settings.s3_endpoint_url
    source = ctx.source_for(source_uri, config.get("s3_endpoint_url"))
    source_job_id = None
    if params.from_job:
        with ctx.factory() as s:
            found = s.execute(select(Job.id, Job.source).where(Job.name == params.from_job)).first()
        if found is None:
            raise ConfigError(f"--from-job {params.from_job!r}: no such job in this database")
        source_job_id, labelled = found
        if labelled != source.uri:
            raise ConfigError(f"--from-job {params.from_job!r} labelled {labelled}, not {source.uri}; "
                              "edit the same source")
    pipeline = None if params.from_job else ctx.pipeline_for(config)
    ckpt = Path(params.checkpoint_dir) if params.checkpoint_dir else None
    res = resolve_inpainter(params.inpainter, ctx.settings, checkpoint_dir=ckpt, allow_download=allow_download)
    inpainter = get_inpainter(res, ctx.settings, dtype=str(config.get("dtype", "auto")))
    return EditProcessor(ctx.factory, ctx.settings, owner, source, job_id=job_id, params=params,
                         inpainter=inpainter, model=edit_model_info(config, res),
                         dest=open_destination(params.out, s3_endpoint_url=endpoint), pipeline=pipeline,
                         source_job_id=source_job_id, on_item=on_item)
