"""``labelfleet edit`` (inpaint what a prompt names), ``edit-review`` and ``edit-export`` (issue 14).

An edit job is an ordinary job (``config["task"] == "edit"``): local mode runs it in
this process into SQLite or PostgreSQL; cluster mode (``--cluster``, the default for
``s3://`` sources) enqueues it on ``lf.edit.<preset>`` for ``labelfleet worker
--queues lf.edit.<preset>``; ``status``, ``resume``, ``retry-failed``, ``cancel`` and
the sweeper work on it unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from labelfleet.cli.common import DbOpt, console, console_err, engine_for, image_progress, make_settings, split_csv
from labelfleet.errors import ConfigError
from labelfleet.models.catalog import DEFAULT_INPAINTER, EDIT_INPAINTERS, RANDOM_EDITS_WARNING


def register(app: typer.Typer) -> None:
    app.command("edit")(edit)
    app.command("edit-review")(edit_review)
    app.command("edit-export")(edit_export)


def _edit_params(target: str | None, prompt: str, out: str, preset_name: str, edit_checkpoint: Path | None,
                 **kw: Any) -> Any:
    from labelfleet.edit import EditParams

    if "://" not in out or out.startswith("file://"):
        out = str(Path(out.removeprefix("file://")).expanduser().resolve())
    if edit_checkpoint is not None and not (edit_checkpoint.expanduser() / "model_index.json").is_file():
        raise ConfigError(f"--edit-checkpoint {edit_checkpoint} is not a diffusers folder (no model_index.json)")
    return EditParams(prompt=prompt, out=out, targets=split_csv(target) or (),
                      inpainter=EDIT_INPAINTERS.get(preset_name, DEFAULT_INPAINTER),
                      checkpoint_dir=str(edit_checkpoint.expanduser().resolve()) if edit_checkpoint else None, **kw)


def edit(
    source: str = typer.Argument(..., help="Folder of images or s3://bucket/prefix."),
    target: str | None = typer.Option(None, "--target", help='What to edit, e.g. "dog" or "dog,cat" (found by '
                                      "GroundingDINO + SAM, or filters --from-job labels)."),
    prompt: str = typer.Option(..., "--prompt", help='What to paint inside the mask, e.g. "a corgi, photo".'),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt", help="What to avoid."),
    variants: int = typer.Option(4, "--variants", min=1, help="Images per edit (seeds SEED..SEED+N-1)."),
    steps: int = typer.Option(30, "--steps", min=1, help="Denoising steps."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    strength: float = typer.Option(1.0, "--strength", min=0.01, max=1.0, help="1.0 repaints the mask fully."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of variant 0."),
    dilate: int = typer.Option(8, "--dilate", min=0, help="Grow the mask by N pixels."),
    feather: int = typer.Option(0, "--feather", min=0, help="Blend the edit in over N pixels inside the mask."),
    per_instance: bool = typer.Option(False, "--per-instance", help="One edit per instance (default: union)."),
    from_job: str | None = typer.Option(None, "--from-job", help="Use this job's stored labels as masks "
                                        "(reviewed ones where present; rejected ones never)."),
    new_class: str | None = typer.Option(None, "--new-class", help="Class of the edited objects in exports."),
    db: str | None = DbOpt,
    out: str = typer.Option(..., "--out", help="Destination folder or s3://bucket/prefix (never overwritten)."),
    job: str | None = typer.Option(None, "--job", help="Job name (default: edit-<folder>)."),
    models: str | None = typer.Option(None, "--models", help="Preset: default, fast, quality, tiny-random "
                                      "(tiny random weights, meaningless edits)."),
    edit_checkpoint: Path | None = typer.Option(None, "--edit-checkpoint", help="Local diffusers inpainting folder."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16."),
    cluster: bool | None = typer.Option(None, "--cluster/--local", help="Enqueue for workers (default for "
                                        "s3:// sources) or run here."),
    broker: str | None = typer.Option(None, "--broker", help="Broker URL (cluster mode)."),
    chunk_size: int | None = typer.Option(None, "--chunk-size", min=1, help="Images per task (cluster mode)."),
    include: list[str] = typer.Option([], "--include", help="Only keys matching this glob (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Skip keys matching this glob (repeatable)."),
    s3_endpoint_url: str | None = typer.Option(None, "--s3-endpoint-url", help="MinIO or other S3 endpoint."),
    offline: bool = typer.Option(False, "--offline", help="Never download; fail if a model file is missing."),
) -> None:
    """Inpaint the objects --target names with --prompt, for every image of SOURCE.

    Outputs get deterministic names (source key, instance, variant, seed, settings digest),
    one provenance row each; re-running continues the job and rewrites nothing.
    """
    from labelfleet.cli.label_cmds import job_config, pick_preset, pipeline_config
    from labelfleet.storage import open_source
    from orchestrator.jobs import default_job_name

    if dtype not in ("auto", "fp32", "fp16", "bf16"):
        raise ConfigError(f"--dtype must be auto, fp32, fp16 or bf16, got {dtype!r}")
    settings = make_settings(db_url=db, broker_url=broker, models=models, device=device, chunk_size=chunk_size,
                             s3_endpoint_url=s3_endpoint_url)
    preset = pick_preset(models, None, settings.models)
    params = _edit_params(target, prompt, out, preset.name, edit_checkpoint, negative_prompt=negative_prompt,
                          variants=variants, steps=steps, guidance=guidance, strength=strength, seed=seed,
                          dilate=dilate, feather=feather, per_instance=per_instance, new_class=new_class,
                          from_job=from_job)
    pcfg = pipeline_config(settings, target if not from_job else None, None, None, False)
    src = open_source(source, include=include, exclude=exclude, s3_endpoint_url=settings.s3_endpoint_url)
    cfg = {"task": "edit", **job_config(preset, pcfg, include=include, exclude=exclude,
                                        s3_endpoint_url=settings.s3_endpoint_url if src.uri.startswith("s3://")
                                        else None), "edit": params.to_json(), "dtype": dtype}
    name = job or f"edit-{default_job_name(src.uri)}"
    random = (params.inpainter == EDIT_INPAINTERS.get("tiny-random") and not edit_checkpoint) or (
        preset.random_weights and not from_job)
    job_models = {"preset": preset.name, "inpainter": params.inpainter, "random_weights": bool(random)}
    if random:
        console_err.print(f"[bold yellow]{RANDOM_EDITS_WARNING}[/]")
    if cluster if cluster is not None else src.uri.startswith("s3://"):
        _submit(settings, src, name, cfg, job_models, preset.name)
    else:
        _run_local(settings, src, name, cfg, job_models, offline)
    if random:
        console_err.print(f"[bold yellow]{RANDOM_EDITS_WARNING}[/]")


def _submit(settings: Any, src: Any, name: str, cfg: dict[str, Any], job_models: dict[str, Any], preset: str) -> None:
    from labelfleet.db.engine import session_factory
    from labelfleet.tasknames import edit_queue_for
    from orchestrator.dispatch import enqueue_pending
    from orchestrator.jobs import prepare_job

    factory = session_factory(engine_for(settings, migrate=True))
    queue = edit_queue_for(preset)
    job_id, created = prepare_job(factory, name=name, source=src, config=cfg, models=job_models, queue=queue)
    n = enqueue_pending(factory, job_id, settings.broker_url.get_secret_value(), chunk_size=settings.chunk_size)
    console.print(f"edit job [bold]{name}[/] {'created' if created else 'continued'}: {n} images enqueued on "
                  f"queue {queue} (start workers with `labelfleet worker --queues {queue}`)", highlight=False)


def _run_local(settings: Any, src: Any, name: str, cfg: dict[str, Any], job_models: dict[str, Any],
               offline: bool) -> None:
    from labelfleet.db import repository as repo
    from labelfleet.db.edit_queries import edit_outputs
    from labelfleet.db.queries import job_summary, status_counts
    from orchestrator.jobs import prepare_job
    from workers.edit_service import edit_processor
    from workers.local import local_owner, run_local
    from workers.service import WorkerContext

    engine_for(settings, migrate=True).dispose()
    ctx = WorkerContext(settings)
    try:
        job_id, _ = prepare_job(ctx.factory, name=name, source=src, config=cfg, models=job_models)
        with ctx.factory() as s:
            counts = status_counts(s, job_id)
        with image_progress() as progress:
            bar = progress.add_task(f"editing {name}", total=counts["pending"] + counts["running"])
            with console_err.status("loading models..."):
                processor = edit_processor(ctx, job_id, cfg, src.uri, local_owner(), allow_download=not offline,
                                           on_item=lambda _st: progress.advance(bar))
            try:
                run_local(ctx.factory, job_id, processor, settings)
            except KeyboardInterrupt:
                console_err.print(f"\n[yellow]interrupted:[/] edit job {name!r} is consistent; run the same "
                                  "command again to continue.")
                raise typer.Exit(130) from None
            finally:
                processor.close()
        with ctx.factory() as s:
            summary = job_summary(s, repo.get_job(s, name))
            n_out = len(edit_outputs(s, job_id))
    finally:
        ctx.close()
    console.print(f"edit job [bold]{name}[/]: {summary['state']} - {summary['done']} done, {summary['failed']} "
                  f"failed, {summary['skipped']} skipped of {summary['total']}; {n_out} outputs in "
                  f"{cfg['edit']['out']}", highlight=False)
    for f in summary["failures"]:
        console.print(f"  {f['count']} {f['status']}: {f['reason']}", highlight=False)


def edit_review(
    job: str = typer.Argument(..., help="Edit job name."),
    db: str | None = DbOpt,
    port: int = typer.Option(5151, "--port", help="Port of the FiftyOne App."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to bind the App to."),
    sync: bool = typer.Option(False, "--sync", help="Only store the App's accept/reject tags, then exit."),
    reviewer: str | None = typer.Option(None, "--reviewer", help="Name stored with each decision [$USER]."),
    media_dir: Path | None = typer.Option(None, "--media-dir", help="Cache of remote images and mask PNGs."),
) -> None:
    """Review an edit job in FiftyOne: groups of original | mask | variants; tag variants accept or reject."""
    from labelfleet.cli.review_cmds import _default_reviewer, _media_root
    from labelfleet.db.engine import session_factory
    from labelfleet.db.repository import get_job
    from orchestrator.review.app import serve
    from orchestrator.review.edits import build_edit_dataset, sync_edit_review

    settings = make_settings(db_url=db)
    who = reviewer or _default_reviewer()
    engine = engine_for(settings)
    factory = session_factory(engine)
    try:
        with factory() as s:
            lf_job = get_job(s, job)
            if lf_job.config.get("task") != "edit":
                raise ConfigError(f"job {job!r} is not an edit job; use `labelfleet review {job}`")
            if lf_job.models.get("random_weights"):
                console_err.print(f"[bold yellow]{RANDOM_EDITS_WARNING}[/]")
            ds, saved = build_edit_dataset(s, lf_job, media_root=_media_root(settings, media_dir), reviewer=who)
            console.print(f"review saved: {saved.kept} kept, {saved.discarded} discarded", highlight=False)
            if sync:
                return
            job_id = lf_job.id
        serve(ds, address=address, port=port, on_ready=lambda url: console.print(
            f"FiftyOne App: {url}  ({len(ds.distinct('group.id'))} edits; tag variants accept/reject; Ctrl-C "
            "saves)", highlight=False, soft_wrap=True))
        with factory() as s:
            saved = sync_edit_review(s, job_id, ds, reviewer=who)
        console.print(f"review saved: {saved.kept} kept, {saved.discarded} discarded", highlight=False)
    finally:
        engine.dispose()


def edit_export(
    job: str = typer.Argument(..., help="Edit job name."),
    db: str | None = DbOpt,
    out: Path = typer.Option(..., "--out", help="Output folder (COCO: data/ + labels.json)."),
    new_class: str | None = typer.Option(None, "--new-class", help="Class of the edited objects "
                                         "[default: the job's --new-class, else their source class]."),
    media_dir: Path | None = typer.Option(None, "--media-dir", help="Cache of remote outputs."),
) -> None:
    """Export the kept variants of an edit job as a COCO dataset with the source labels carried over."""
    from labelfleet.cli.review_cmds import _media_root
    from labelfleet.db.engine import session_factory
    from labelfleet.db.repository import get_job
    from orchestrator.review.edits import export_kept

    settings = make_settings(db_url=db)
    engine = engine_for(settings)
    try:
        with session_factory(engine)() as s:
            lf_job = get_job(s, job)
            stats = export_kept(s, lf_job, out=out, new_class=new_class, media_root=_media_root(settings, media_dir))
    finally:
        engine.dispose()
    if stats["random_weights"]:
        console_err.print(f"[bold yellow]{RANDOM_EDITS_WARNING}[/]")
    console.print(f"exported {stats['images']} kept variants with {stats['labels']} labels to {out}", highlight=False)


