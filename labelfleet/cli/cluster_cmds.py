"""Cluster commands: ``submit``, ``worker``, ``sweep``, ``cancel``, ``resume``, ``retry-failed``.

The orchestrator side (submit, sweep, cancel...) never imports torch; only
``worker`` imports the workers package.
"""

from __future__ import annotations

import os
from typing import Any

import typer

from labelfleet.cli.common import (
    DbOpt,
    console,
    console_err,
    engine_for,
    image_progress,
    make_settings,
    split_csv,
)
from labelfleet.errors import ConfigError
from labelfleet.models.catalog import RANDOM_WEIGHTS_WARNING
from labelfleet.tasknames import MAX_CHUNK_ITEMS

BrokerOpt = typer.Option(None, "--broker", help="Broker URL, e.g. redis://127.0.0.1:6379/0 [env LABELFLEET_BROKER_URL]")


def register(app: typer.Typer) -> None:
    for name, fn in (("submit", submit), ("worker", worker), ("sweep", sweep_cmd), ("cancel", cancel),
                     ("resume", resume), ("retry-failed", retry_failed_cmd)):
        app.command(name)(fn)


def _factory(settings: Any, migrate: bool = False) -> Any:
    from labelfleet.db.engine import session_factory

    return session_factory(engine_for(settings, migrate=migrate))


def submit(
    source: str = typer.Argument(..., help="s3://bucket/prefix (or a folder shared with every worker)."),
    db: str | None = DbOpt,
    broker: str | None = BrokerOpt,
    job: str | None = typer.Option(None, "--job", help="Job name (default: last part of the prefix)."),
    classes: str | None = typer.Option(None, "--classes", help='Fixed classes "cat,dog"; default: RAM tags.'),
    models: str | None = typer.Option(None, "--models", help="Preset (default, fast, quality, tiny-random)."),
    chunk_size: int | None = typer.Option(None, "--chunk-size", min=1, max=MAX_CHUNK_ITEMS,
                                          help=f"Images per task (default 32, at most {MAX_CHUNK_ITEMS})."),
    include: list[str] = typer.Option([], "--include", help="Only keys matching this glob (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Skip keys matching this glob (repeatable)."),
    s3_endpoint_url: str | None = typer.Option(None, "--s3-endpoint-url", help="MinIO or other S3 endpoint."),
    no_masks: bool = typer.Option(False, "--no-masks", help="Boxes only, skip SAM."),
    tagger: str | None = typer.Option(None, "--tagger", help="ram or ram_plus (automatic mode)."),
    extra_classes: str | None = typer.Option(None, "--extra-classes", help="Classes always searched besides tags."),
    exclude_tags: str | None = typer.Option(None, "--exclude-tags", help="Tags never searched."),
    max_tags: int | None = typer.Option(None, "--max-tags", min=1, help="Keep only the N best tags per image."),
    tag_threshold: float | None = typer.Option(None, "--tag-threshold", min=0, max=1,
                                               help="One threshold for all tags (default: RAM's per-class ones)."),
    changed: bool = typer.Option(False, "--changed", help="Label again the keys whose ETag (folders: size or "
                                 "modification time) changed since they were listed."),
    include_hidden: bool = typer.Option(False, "--include-hidden", help="Also list hidden keys (a path part "
                                        "starting with '.'), skipped by default."),
    checkpoint: list[str] = typer.Option([], "--checkpoint", help="Fine-tuned weights for a stage, "
                                         "STAGE=s3://bucket/key.pth@SHA256 (repeatable); workers verify the "
                                         "sha256 before loading and refuse a mismatch."),
) -> None:
    """Record a job and its items in --db, then enqueue them in chunks for the workers.

    Re-submitting the same job lists the source again and adds only the new keys (with
    --changed also changed ones); nothing is added twice; an interrupted listing resumes.
    """
    from labelfleet.cli.label_cmds import job_config, pick_preset, pipeline_config, print_listing
    from labelfleet.models.finetuned import parse_checkpoint_option
    from labelfleet.storage import open_source
    from labelfleet.tasknames import queue_for
    from orchestrator.jobs import default_job_name
    from orchestrator.submit import list_and_enqueue

    checkpoints = dict(parse_checkpoint_option(c) for c in checkpoint)
    settings = make_settings(db_url=db, broker_url=broker, models=models, chunk_size=chunk_size,
                             s3_endpoint_url=s3_endpoint_url, max_tags=max_tags, tag_threshold=tag_threshold)
    preset = pick_preset(models, tagger, settings.models)
    config = pipeline_config(settings, classes, extra_classes, exclude_tags, no_masks)
    src = open_source(source, include=include, exclude=exclude, s3_endpoint_url=settings.s3_endpoint_url,
                      include_hidden=include_hidden)
    name = job or default_job_name(src.uri)
    factory = _factory(settings, migrate=True)
    broker_url = settings.broker_url.get_secret_value()
    with image_progress() as progress:
        listing_task = progress.add_task("listing", total=None)
        queued = progress.add_task("enqueue", total=None)
        cfg = job_config(preset, config, include=include, exclude=exclude, s3_endpoint_url=settings.s3_endpoint_url,
                         include_hidden=include_hidden)
        if checkpoints:  # jobs without fine-tuned weights keep the config they always had
            cfg["checkpoints"] = dict(sorted(checkpoints.items()))
        listing, n = list_and_enqueue(  # the enqueue overlaps the listing
            factory, broker_url, chunk_size=settings.chunk_size, on_chunk=lambda k: progress.advance(queued, k),
            name=name, source=src, config=cfg, models={"preset": preset.name, "random_weights": preset.random_weights},
            queue=queue_for(preset.name), changed=changed, on_listed=lambda n: progress.advance(listing_task, n))
    print_listing(listing, src.uri)
    console.print(f"job [bold]{name}[/] {'created' if listing.created else 'continued'}: {n} items enqueued on "
                  f"queue {queue_for(preset.name)}")
    if preset.random_weights:
        console_err.print(f"[bold yellow]{RANDOM_WEIGHTS_WARNING}[/]")


def worker(
    db: str | None = DbOpt,
    broker: str | None = BrokerOpt,
    queues: str | None = typer.Option(None, "--queues", help="Comma-separated queues (default: lf.<preset>)."),
    models: str | None = typer.Option(None, "--models", help="Preset whose queue to consume by default."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or cuda:N (one process per GPU)."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="Worker processes (1 per GPU)."),
    hostname: str | None = typer.Option(None, "--hostname", "-n", help="Celery node name."),
    loglevel: str = typer.Option("INFO", "--loglevel", help="Celery log level."),
) -> None:
    """Start a Celery worker that labels items (prefork, models loaded once per process).

    SIGTERM is a warm shutdown: the current task finishes first. A worker whose
    models do not load or whose device faults gives its items back and exits 1.
    """
    from labelfleet.tasknames import queue_for

    settings = make_settings(db_url=db, broker_url=broker, models=models, device=device)
    for key, value in (("DB_URL", settings.db_url.get_secret_value()),
                       ("BROKER_URL", settings.broker_url.get_secret_value()), ("DEVICE", settings.device),
                       ("MODELS", settings.models), ("WORKER_PROCESSES", str(concurrency))):
        os.environ[f"LABELFLEET_{key}"] = value  # child processes and workers.celeryconfig read these
    engine_for(settings).dispose()  # fail fast when the schema is missing or old
    from labelfleet.settings import check_device

    check_device(settings.device)  # a GPU node without a visible GPU: one line, before Celery starts
    from workers.celery_app import app

    qs = split_csv(queues) or (queue_for(settings.models),)
    os.environ["LABELFLEET_WORKER_QUEUES"] = ",".join(qs)  # pool processes preload these presets' models
    argv = ["worker", "-Q", ",".join(qs), "-c", str(concurrency), "-P", "prefork", "-E", f"--loglevel={loglevel}"]
    if hostname:
        argv += ["-n", hostname]
    app.conf.broker_url = settings.broker_url.get_secret_value()
    app.worker_main(argv)
    from workers.lifecycle import exit_status

    if exit_status():  # it stopped because it is unhealthy (the reason was logged): let the supervisor restart it
        raise typer.Exit(exit_status())


def sweep_cmd(
    db: str | None = DbOpt,
    broker: str | None = BrokerOpt,
    every: float | None = typer.Option(None, "--every", min=0.5, help="Repeat every N seconds (default: once)."),
    requeue_after: float = typer.Option(60.0, "--requeue-after", help="Re-enqueue pending items after N s when "
                                        "their queue is empty (lost messages)."),
) -> None:
    """Return expired leases, re-enqueue lost messages, mark finished jobs done."""
    from orchestrator.sweeper import sweep, sweep_forever

    settings = make_settings(db_url=db, broker_url=broker)
    factory = _factory(settings)

    def once() -> None:
        report = sweep(factory, settings.broker_url.get_secret_value(), max_attempts=settings.max_attempts,
                       chunk_size=settings.chunk_size, requeue_after_s=requeue_after)
        console.print(f"expired {report.expired}, poison {report.poisoned}, requeued {report.requeued}, "
                      f"finished {report.finished}")

    if every is None:
        once()
    else:
        sweep_forever(once, every)


def _job_id(factory: Any, name: str) -> int:
    from labelfleet.db.repository import get_job

    with factory() as s:
        return int(get_job(s, name).id)


def cancel(job: str = typer.Argument(..., help="Job name."), db: str | None = DbOpt) -> None:
    """Stop a job: workers drop its queued chunks; labels done so far are kept."""
    from labelfleet.db.models import JobState
    from orchestrator.dispatch import set_state

    factory = _factory(make_settings(db_url=db))
    set_state(factory, _job_id(factory, job), JobState.CANCELLED)
    console.print(f"job {job} cancelled; `labelfleet resume {job}` continues it")


def resume(job: str = typer.Argument(..., help="Job name."), db: str | None = DbOpt,
           broker: str | None = BrokerOpt) -> None:
    """Continue a cancelled or stalled job: re-enqueue every pending item."""
    from labelfleet.db.models import Job, JobState
    from orchestrator.broker import held_message_ids
    from orchestrator.dispatch import enqueue_pending, set_state

    settings = make_settings(db_url=db, broker_url=broker)
    factory = _factory(settings)
    job_id = _job_id(factory, job)
    _finish_listing(factory, job, settings)
    set_state(factory, job_id, JobState.RUNNING)
    broker_url = settings.broker_url.get_secret_value()
    with factory() as s:
        queue = s.get(Job, job_id).queue
    held = held_message_ids(broker_url, queue) if queue else None  # messages still queued are not sent again
    n = enqueue_pending(factory, job_id, broker_url, chunk_size=settings.chunk_size, older_than_s=0, held=held)
    console.print(f"job {job} resumed: {n} items enqueued")


def _finish_listing(factory: Any, name: str, settings: Any) -> None:
    """Continue a listing that an interrupted ``submit`` left unfinished."""
    from labelfleet.db.repository import get_job
    from labelfleet.storage import open_source
    from orchestrator.jobs import prepare_job

    with factory() as s:
        job = get_job(s, name)
        if job.listing_done:
            return
        config, models, queue, uri = dict(job.config), dict(job.models), job.queue, job.source
    src = open_source(uri, include=config.get("include", []), exclude=config.get("exclude", []),
                      s3_endpoint_url=config.get("s3_endpoint_url") or settings.s3_endpoint_url)
    prepare_job(factory, name=name, source=src, config=config, models=models, queue=queue)
    console.print(f"job {name}: listing of {uri} finished")


def retry_failed_cmd(job: str = typer.Argument(..., help="Job name."), db: str | None = DbOpt,
                     broker: str | None = BrokerOpt) -> None:
    """Put failed and poison items back to pending and enqueue them."""
    from orchestrator.dispatch import enqueue_pending, retry_failed

    settings = make_settings(db_url=db, broker_url=broker)
    factory = _factory(settings)
    job_id = _job_id(factory, job)
    n = retry_failed(factory, job_id)
    if n == 0:
        raise ConfigError(f"job {job} has no failed or poison items")
    enqueue_pending(factory, job_id, settings.broker_url.get_secret_value(), chunk_size=settings.chunk_size)
    console.print(f"{n} items of job {job} retried")
