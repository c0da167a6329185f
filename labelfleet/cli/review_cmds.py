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


def _build_segmenter(job: Any, settings: Any) -> Any:
    """The job's SAM as a ``box -> mask record`` function; raises when it cannot be loaded here."""
    import numpy as np

    from labelfleet.images import decode_image
    from labelfleet.masks import encode_mask_record
    from labelfleet.settings import resolve_device
    from orchestrator.review.convert import pixel_span
    from workers.models import resolve_model
    from workers.stages.registry import build_segmenter

    key = job.config.get("segmenter") or (job.models.get("segmenter") or {}).get("key")
    if not key or not job.config.get("segment", True):
        raise ConfigError(f"job {job.name!r} has no segmenter")
    res = resolve_model(str(key), "segmenter", settings, allow_download=False)
    seg = build_segmenter(res.key, checkpoint=res.files["checkpoint"], device=resolve_device(settings.device))
    images: dict[str, Any] = {}

    def segment(path: str, xyxy: tuple[float, float, float, float], size: tuple[int, int]) -> dict[str, Any]:
        if path not in images:
            images.clear()
            images[path] = decode_image(Path(path).read_bytes(), max_pixels=settings.max_image_pixels).array
        full = seg.segment_prompts(images[path], box=np.array(xyxy, np.float32))
        w, h = size
        x_lo, x_hi = pixel_span(xyxy[0], xyxy[2], w)
        y_lo, y_hi = pixel_span(xyxy[1], xyxy[3], h)
        return encode_mask_record(full[y_lo:y_hi, x_lo:x_hi], x_lo, y_lo, (h, w))

    return segment


def load_segmenter(job: Any, settings: Any) -> Any:
    """A ``orchestrator.review.sync.Segmenter`` that loads the job's SAM on its first use (a sync
    without moved or added boxes loads nothing). If the models cannot be loaded here it says so
    once and returns None for every box: those masks are dropped and marked stale."""
    state: dict[str, Any] = {}

    def segment(path: str, xyxy: tuple[float, float, float, float], size: tuple[int, int]) -> Any:
        if "fn" not in state:
            try:
                state["fn"] = _build_segmenter(job, settings)
            except Exception as exc:  # no torch, no weights, no segmenter: edits keep no mask
                state["fn"] = None
                console_err.print(f"[yellow]no segmenter for edited boxes ({type(exc).__name__}: {exc}); "
                                  "their masks are dropped and marked stale[/]", highlight=False, soft_wrap=True)
        return state["fn"](path, xyxy, size) if state["fn"] is not None else None

    return segment


def review(
    job: str = typer.Argument(..., help="Job name."),
    db: str | None = DbOpt,
    port: int = typer.Option(5151, "--port", help="Port of the FiftyOne App."),
    address: str = typer.Option("127.0.0.1", "--address", help="Address to bind the App to (0.0.0.0 = all "
                                "interfaces: anyone who can reach this machine can see and edit labels)."),
    sync: bool = typer.Option(False, "--sync", help="Only store the App's tags, edits, added and deleted "
                              "labels as review decisions in the database, then exit."),
    reviewer: str | None = typer.Option(None, "--reviewer",
                                        help="Name stored with each review [default: $USER]."),
    resegment: bool = typer.Option(True, "--resegment/--no-resegment", help="Give moved or added boxes a new "
                                   "SAM mask from the box when the job's segmenter loads here (otherwise their "
                                   "masks are dropped and marked stale, never stretched)."),
    media_dir: Path | None = MediaOpt,
) -> None:
    """Review a job's labels in the FiftyOne App; decisions are written back on exit (Ctrl-C).

    In the App, tag labels or whole samples `accept` or `reject`, edit a label's
    box or class, draw missing labels or delete junk; `labelfleet review JOB --sync`
    stores them as review decisions (predictions are never changed).
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
            seg = load_segmenter(lf_job, settings) if resegment else None
            if exists:  # never lose corrections made since the last sync
                _print_sync(sync_back(s, lf_job.id, _load(name), reviewer=who, segmenter=seg))
            if sync:
                return
            _warn_if_random(lf_job)
            with console_err.status(f"building FiftyOne dataset {name}..."):
                ds = sync_to_fiftyone(s, lf_job, media_root=_media_root(settings, media_dir),
                                      s3_endpoint_url=settings.s3_endpoint_url)
            job_id = lf_job.id
        serve(ds, address=address, port=port, on_ready=lambda url: console.print(
            f"FiftyOne App: {url}  ({len(ds)} samples; Ctrl-C to stop and save the review)",
            highlight=False, soft_wrap=True))
        with factory() as s:
            _print_sync(sync_back(s, job_id, ds, reviewer=who, segmenter=seg))
    finally:
        engine.dispose()


def _load(name: str) -> Any:
    from orchestrator.review.dataset import open_dataset

    return open_dataset(name, create=False)


def _print_sync(report: Any) -> None:
    masks = f"; {report.resegmented} new masks, {report.stale} stale" if report.resegmented or report.stale else ""
    console.print(f"review saved: {report.accepted} accepted, {report.rejected} rejected, "
                  f"{report.edited} edited, {report.added} added, {report.deleted} deleted "
                  f"({report.written} decisions written{masks})"
                  + (f"; {report.unknown} labels whose database row is gone ignored" if report.unknown else ""),
                  highlight=False, soft_wrap=True)


def export(
    job: str = typer.Argument(..., help="Job name."),
    db: str | None = DbOpt,
    fmt: str = typer.Option(..., "--format", help="coco (boxes + segmentations), yolo (detection), yolo-seg "
                            "(polygons), masks (PNG per instance + semantic PNG + manifest.json) or fiftyone."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    include_rejected: bool = typer.Option(False, "--include-rejected", help="Also export labels a reviewer "
                                          "rejected."),
    reviewed_only: bool = typer.Option(False, "--reviewed-only", help="Only labels a person accepted, edited "
                                       "or added."),
    min_score: float | None = typer.Option(None, "--min-score", help="Drop unreviewed predictions scoring "
                                           "below this."),
    split: float | None = typer.Option(None, "--split", min=0.0, max=1.0, help="YOLO: train fraction, e.g. "
                                       "0.9 (the rest is val) [default: train = val = every image]."),
    keep_overlapping: bool = typer.Option(False, "--keep-overlapping", help="Also export new predictions that "
                                          "overlap a region a person decided on (hidden by default)."),
    coco_segmentation: str = typer.Option("rle", "--coco-segmentation", help="COCO masks as rle (exact) or "
                                          "polygon (RLE for masks too thin for a polygon)."),
    media_dir: Path | None = MediaOpt,
) -> None:
    """Export a job's current labels (rejected and deleted ones left out) from the database."""
    from labelfleet.db.engine import session_factory
    from labelfleet.db.repository import get_job
    from orchestrator.review.export import FORMATS, export_job
    from orchestrator.review.formats import COCO_SEGMENTATIONS

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if coco_segmentation not in COCO_SEGMENTATIONS:
        raise ConfigError(f"unknown --coco-segmentation {coco_segmentation!r}; choose rle or polygon")
    if split is not None and not 0 < split < 1:
        raise ConfigError(f"--split must be a train fraction between 0 and 1 (exclusive), got {split}")
    settings = make_settings(db_url=db)
    engine = engine_for(settings)
    try:
        with session_factory(engine)() as s:
            lf_job = get_job(s, job)
            _warn_if_random(lf_job)
            stats = export_job(s, lf_job, fmt=fmt, out=out, media_root=_media_root(settings, media_dir),
                               include_rejected=include_rejected, min_score=min_score, reviewed_only=reviewed_only,
                               split=split, coco_segmentation=coco_segmentation, keep_overlapping=keep_overlapping,
                               s3_endpoint_url=settings.s3_endpoint_url)
    finally:
        engine.dispose()
    console.print(f"exported {stats['labels']} labels of {stats['images']} images as {fmt} to {out} "
                  f"in {stats['seconds']:.1f}s", highlight=False, soft_wrap=True)


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

    settings = make_settings(db_url=db)
    engine = engine_for(settings)
    try:
        with session_factory(engine)() as s:
            lf_job = get_job(s, job)
            _warn_if_random(lf_job)
            render_preview(s, lf_job, out, max_images=max_images, thumb=thumb,
                           s3_endpoint_url=settings.s3_endpoint_url)
    finally:
        engine.dispose()
    console.print(f"preview written to {out}", highlight=False)
