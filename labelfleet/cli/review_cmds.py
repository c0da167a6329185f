"""``labelfleet review``, ``labelfleet export`` and ``labelfleet preview`` (FiftyOne imported lazily)."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

import typer

from labelfleet.cli.common import DbOpt, console, console_err, engine_for, make_settings
from labelfleet.errors import ConfigError

MediaOpt = typer.Option(None, "--media-dir", help="Folder for the media cache of remote (s3://) sources "
                        "[default: the model dir]; images go to <dir>/media/<job>/.")


def register(app: typer.Typer) -> None:
    app.command("review")(review)
    app.command("export")(export)
    app.command("preview")(preview)


def _default_reviewer() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _media_root(settings: Any, media_dir: Path | None) -> Path:
    return Path(media_dir).expanduser() if media_dir else settings.model_path


def _warn_if_random(job: Any) -> None:
    from labelfleet.models.catalog import RANDOM_WEIGHTS_WARNING

    if job.models.get("random_weights"):
        console_err.print(f"[bold yellow]{RANDOM_WEIGHTS_WARNING}[/]")


def review(
    job: str = typer.Argument(..., help="Job name."),
    db: str | None = DbOpt,
    port: int = typer.Option(5151, "--port", help="Port of the FiftyOne App."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to bind the App to (0.0.0.0 = all "
                                "interfaces: anyone who can reach this machine can see and edit labels)."),
    sync: bool = typer.Option(False, "--sync", help="Only write the App's accept/reject tags and edits back "
                              "to the database, then exit."),
    reviewer: str | None = typer.Option(None, "--reviewer",
                                        help="Name stored with each review [default: $USER]."),
    media_dir: Path | None = MediaOpt,
) -> None:
    """Review a job's labels in the FiftyOne App; corrections are written back on exit (Ctrl-C).

    In the App, tag labels or whole samples `accept` or `reject`, or edit a
    label's box or class; `labelfleet review JOB --sync` stores them in the database.
    """
    from labelfleet.db.engine import session_factory
    from labelfleet.db.repository import get_job
    from orchestrator.review import dataset_name, import_fiftyone
    from orchestrator.review.app import serve
    from orchestrator.review.dataset import sync_to_fiftyone
    from orchestrator.review.sync import sync_back

    settings = make_settings(db_url=db)
    who = reviewer or _default_reviewer()
    engine = engine_for(settings)
    factory = session_factory(engine)
    try:
        with factory() as s:
            lf_job = get_job(s, job)
            name = dataset_name(lf_job.name)
            exists = import_fiftyone().dataset_exists(name)
            if sync and not exists:
                raise ConfigError(f"job {job!r} has no review dataset yet; "
                                  f"run `labelfleet review {job}` first")
            if exists:  # never lose corrections made since the last sync
                _print_sync(sync_back(s, lf_job.id, _load(name), reviewer=who))
            if sync:
                return
            _warn_if_random(lf_job)
            with console_err.status(f"building FiftyOne dataset {name}..."):
                ds = sync_to_fiftyone(s, lf_job, media_root=_media_root(settings, media_dir))
            job_id = lf_job.id
        serve(ds, address=address, port=port, on_ready=lambda url: console.print(
            f"FiftyOne App: {url}  ({len(ds)} samples; Ctrl-C to stop and save the review)",
            highlight=False, soft_wrap=True))
        with factory() as s:
            _print_sync(sync_back(s, job_id, ds, reviewer=who))
    finally:
        engine.dispose()


def _load(name: str) -> Any:
    from orchestrator.review.dataset import open_dataset

    return open_dataset(name, create=False)


def _print_sync(report: Any) -> None:
    console.print(f"review saved: {report.accepted} accepted, {report.rejected} rejected, "
                  f"{report.edited} edited"
                  + (f" ({report.unknown} labels without a database row ignored)" if report.unknown else ""),
                  highlight=False)


def export(
    job: str = typer.Argument(..., help="Job name."),
    db: str | None = DbOpt,
    fmt: str = typer.Option(..., "--format", help="coco (boxes + segmentations), yolo (YOLOv5), masks "
                            "(PNG per instance + semantic PNG + classes.json) or fiftyone."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    include_rejected: bool = typer.Option(False, "--include-rejected", help="Also export labels a reviewer "
                                          "rejected."),
    min_score: float | None = typer.Option(None, "--min-score", help="Drop labels scoring below this."),
    media_dir: Path | None = MediaOpt,
) -> None:
    """Export a job's labels (rejected ones left out) from the database."""
    from labelfleet.db.engine import session_factory
    from labelfleet.db.repository import get_job
    from orchestrator.review.export import FORMATS, export_job

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    settings = make_settings(db_url=db)
    engine = engine_for(settings)
    try:
        with session_factory(engine)() as s:
            lf_job = get_job(s, job)
            _warn_if_random(lf_job)
            stats = export_job(s, lf_job, fmt=fmt, out=out, media_root=_media_root(settings, media_dir),
                               include_rejected=include_rejected, min_score=min_score)
    finally:
        engine.dispose()
    console.print(f"exported {stats['labels']} labels of {stats['images']} images as {fmt} to {out} "
                  f"in {stats['seconds']:.1f}s", highlight=False)


def preview(
    job: str = typer.Argument(..., help="Job name."),
    db: str | None = DbOpt,
    out: Path = typer.Option(Path("preview.png"), "--out", help="PNG file to write."),
    max_images: int = typer.Option(16, "--max-images", help="How many images to show."),
    thumb: int = typer.Option(256, "--thumb", help="Cell size in pixels."),
) -> None:
    """Write a contact sheet of the job's images with boxes, masks and labels drawn."""
    from labelfleet.db.engine import session_factory
    from labelfleet.db.repository import get_job
    from orchestrator.review.preview import render_preview

    engine = engine_for(make_settings(db_url=db))
    try:
        with session_factory(engine)() as s:
            lf_job = get_job(s, job)
            _warn_if_random(lf_job)
            render_preview(s, lf_job, out, max_images=max_images, thumb=thumb)
    finally:
        engine.dispose()
    console.print(f"preview written to {out}", highlight=False)
