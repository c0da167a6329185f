"""``labelfleet label`` (a folder, end to end, in this process) and ``labelfleet segment`` (one image)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
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
from labelfleet.models.catalog import RANDOM_WEIGHTS_WARNING, Preset, get_preset


def register(app: typer.Typer) -> None:
    app.command("label")(label)
    app.command("segment")(segment)


def pick_preset(models: str | None, tagger: str | None, settings_models: str) -> Preset:
    preset = get_preset(models or settings_models)
    if tagger is not None:
        key = f"{tagger}_tiny" if preset.name == "tiny-random" and not tagger.endswith("_tiny") else tagger
        preset = preset.with_overrides(tagger=key)
    return preset


def pipeline_config(settings: Any, classes: str | None, extra_classes: str | None, exclude_tags: str | None,
                    no_masks: bool) -> Any:
    """The job's :class:`PipelineConfig` from CLI flags + settings; an empty ``--classes`` is an error."""
    from labelfleet.pipeline_config import PipelineConfig

    config = PipelineConfig(
        classes=split_csv(classes), extra_classes=split_csv(extra_classes) or (),
        exclude_tags=split_csv(exclude_tags) or (), max_tags=settings.max_tags,
        tag_threshold=settings.tag_threshold, box_threshold=settings.box_threshold,
        text_threshold=settings.text_threshold, nms_iou=settings.nms_iou, segment=not no_masks)
    if config.classes == ():
        raise ConfigError("--classes is empty; give class names like 'cat,dog' or leave it out for automatic tags")
    check_class_names([*(config.classes or ()), *config.extra_classes])
    return config


#: Words and punctuation of a class name; each is at least one BERT token, so this bounds the count from below.
_PIECES = re.compile(r"\w+|[^\w\s]")


def check_class_names(names: list[str], count_tokens: Any = None) -> None:
    """Reject, before any image, class names GroundingDINO cannot read in one prompt (256 tokens).

    Without ``count_tokens`` (no tokenizer loaded yet) a lower bound is used: words +
    punctuation + ``[CLS] . [SEP]``; with the detector's tokenizer the count is exact.
    """
    from labelfleet.captions import MAX_TEXT_TOKENS, build_caption, normalize_class, split_classes

    for name in names:
        try:
            norm = normalize_class(name)
        except ValueError as exc:
            raise ConfigError(f"class name {name!r}: {exc}") from None
        low = len(_PIECES.findall(norm)) + 3
        if low > MAX_TEXT_TOKENS:
            raise ConfigError(f"class name {_short(name)} is at least {low} tokens long; GroundingDINO reads at "
                              f"most {MAX_TEXT_TOKENS} tokens per prompt: shorten it")
    if count_tokens is None or not names:
        return
    quiet = logging.getLogger("transformers")  # its "sequence longer than 512" warning says nothing useful here
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        split_classes(names, count_tokens, MAX_TEXT_TOKENS)
    except ValueError as exc:
        bad = next((n for n in names if count_tokens(build_caption([n])) > MAX_TEXT_TOKENS), names[0])
        raise ConfigError(f"class name {_short(bad)} is {count_tokens(build_caption([bad]))} tokens long; "
                          f"GroundingDINO reads at most {MAX_TEXT_TOKENS} tokens per prompt: shorten it") from exc
    finally:
        quiet.setLevel(level)


def _short(name: str) -> str:
    return repr(name if len(name) <= 60 else name[:57] + "...")


def job_config(preset: Preset, pipeline_config: Any, *, include: list[str], exclude: list[str],
               s3_endpoint_url: str | None, include_hidden: bool = False) -> dict[str, Any]:
    """What defines a job (compared on re-runs): models, pipeline settings and how the source is read."""
    cfg = {"preset": preset.name, "tagger": preset.tagger if pipeline_config.automatic else None,
           "detector": preset.detector, "segmenter": preset.segmenter, "include": list(include),
           "exclude": list(exclude), "s3_endpoint_url": s3_endpoint_url, **pipeline_config.to_json()}
    if include_hidden:  # only when set, so jobs created before the option keep their config
        cfg["include_hidden"] = True
    return cfg


def print_listing(listing: Any, source_uri: str) -> None:
    """The listing's summary line; a hint when the source holds no image at all."""
    if not listing.listed:
        return
    console.file.flush()
    print(f"listing {source_uri}: {listing.summary()}", flush=True)  # one unwrapped line, greps well
    if listing.report is not None and listing.report.images == 0:
        from labelfleet.images import IMAGE_EXTENSIONS

        print(f"  no images found; listed extensions: {' '.join(sorted(IMAGE_EXTENSIONS))} (hidden files "
              "need --include-hidden)", flush=True)


def label(
    source: str = typer.Argument(..., help="Folder of images (searched recursively) or s3://bucket/prefix."),
    db: str | None = DbOpt,
    job: str | None = typer.Option(None, "--job", help="Job name (default: the folder's name). "
                                   "Re-running a job skips images already done."),
    classes: str | None = typer.Option(None, "--classes", help='Fixed class list, e.g. "cat,dog". '
                                       "Without it, RAM/RAM++ tags each image automatically."),
    extra_classes: str | None = typer.Option(None, "--extra-classes", help="Classes always searched besides tags."),
    exclude_tags: str | None = typer.Option(None, "--exclude-tags", help="Tags never searched, e.g. 'room,wall'."),
    max_tags: int | None = typer.Option(None, "--max-tags", min=1, help="Keep only the N best tags per image."),
    tag_threshold: float | None = typer.Option(None, "--tag-threshold", min=0, max=1,
                                               help="One threshold for all tags (default: RAM's per-class ones)."),
    tagger: str | None = typer.Option(None, "--tagger", help="ram or ram_plus (default from the preset)."),
    models: str | None = typer.Option(None, "--models", help="Preset: default, fast, quality, tiny-random "
                                      "(tiny random weights for offline tests; labels meaningless)."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    box_threshold: float | None = typer.Option(None, "--box-threshold", min=0, max=1, help="Default 0.25."),
    text_threshold: float | None = typer.Option(None, "--text-threshold", min=0, max=1, help="Default 0.2."),
    nms_iou: float | None = typer.Option(None, "--nms-iou", min=0, max=1, help="Default 0.5."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per model batch (default 4)."),
    no_masks: bool = typer.Option(False, "--no-masks", help="Boxes only, skip SAM."),
    include: list[str] = typer.Option([], "--include", help="Only keys matching this glob (repeatable)."),
    exclude: list[str] = typer.Option([], "--exclude", help="Skip keys matching this glob (repeatable)."),
    detector_checkpoint: Path | None = typer.Option(None, "--detector-checkpoint", help="Local GroundingDINO .pth."),
    segmenter_checkpoint: Path | None = typer.Option(None, "--segmenter-checkpoint", help="Local SAM .pth."),
    tagger_checkpoint: Path | None = typer.Option(None, "--tagger-checkpoint", help="Local RAM/RAM++ .pth."),
    offline: bool = typer.Option(False, "--offline", help="Never download; fail if a model file is missing."),
    relabel: bool = typer.Option(False, "--relabel", help="Label every image of the job again (labels a "
                                 "person reviewed are kept)."),
    overwrite_reviewed: bool | None = typer.Option(None, "--overwrite-reviewed", help="With --relabel: replace "
                                                   "reviewed labels too."),
    changed: bool = typer.Option(False, "--changed", help="Label again the images whose size or modification "
                                 "time (S3: ETag) changed since they were listed."),
    include_hidden: bool = typer.Option(False, "--include-hidden", help="Also list hidden files and folders "
                                        "(names starting with '.'), skipped by default."),
) -> None:
    """Label every image of SOURCE in this process and store the labels in --db.

    Creates the job, or continues it: the source is listed again and only new images
    (with --changed also changed ones) are labelled; images already done are skipped, and
    Ctrl-C leaves the job consistent so the same command resumes it.
    """
    from labelfleet.storage import open_source

    settings = make_settings(db_url=db, models=models, device=device, box_threshold=box_threshold,
                             text_threshold=text_threshold, nms_iou=nms_iou, batch_size=batch_size,
                             tag_threshold=tag_threshold, max_tags=max_tags, overwrite_reviewed=overwrite_reviewed)
    preset = pick_preset(models, tagger, settings.models)
    config = pipeline_config(settings, classes, extra_classes, exclude_tags, no_masks)
    src = open_source(source, include=include, exclude=exclude, s3_endpoint_url=settings.s3_endpoint_url,
                      include_hidden=include_hidden, read_timeout_s=settings.read_timeout_s)
    from labelfleet.settings import check_device
    from orchestrator.jobs import default_job_name

    name = job or default_job_name(src.uri)
    check_device(settings.device)  # before minutes of model loading
    engine = engine_for(settings, migrate=True)
    checkpoints = {"detector": detector_checkpoint, "segmenter": segmenter_checkpoint, "tagger": tagger_checkpoint}
    try:
        summary = _run(engine, settings, src, name, preset, config, checkpoints, offline=offline, relabel=relabel,
                       changed=changed, include_hidden=include_hidden)
    finally:
        engine.dispose()
    _print_summary(summary, preset)


def _list(factory: Any, name: str, src: Any, cfg: dict[str, Any], models: dict[str, Any], changed: bool) -> Any:
    from orchestrator.jobs import list_job

    with image_progress() as progress:
        task = progress.add_task("listing", total=None)
        listing = list_job(factory, name=name, source=src, config=cfg, models=models, changed=changed,
                           on_listed=lambda n: progress.advance(task, n))
        progress.remove_task(task)
    print_listing(listing, src.uri)
    return listing


def _run(engine: Any, settings: Any, src: Any, name: str, preset: Preset, config: Any,
         checkpoints: dict[str, Path | None], *, offline: bool, relabel: bool, changed: bool,
         include_hidden: bool) -> dict[str, Any]:
    """List (an existing job before any model loads), load the models, label what is pending."""
    from sqlalchemy import select

    from labelfleet.db import repository as repo
    from labelfleet.db.engine import session_factory
    from labelfleet.db.models import Job
    from labelfleet.db.queries import job_summary, status_counts
    from workers.models import build_pipeline

    factory = session_factory(engine)
    cfg = job_config(preset, config, include=src.key_filter.include, exclude=src.key_filter.exclude,
                     s3_endpoint_url=settings.s3_endpoint_url if src.uri.startswith("s3://") else None,
                     include_hidden=include_hidden)
    with factory() as s:  # fail before loading models if the job exists with other settings
        existing = s.scalar(select(Job).where(Job.name == name))
        if existing is not None:
            repo.get_or_create_job(s, name, src.uri, cfg, existing.models)
            existing_models = dict(existing.models)
    job_id = None
    if existing is not None:
        job_id = _list(factory, name, src, cfg, existing_models, changed).job_id
        with factory() as s:
            if relabel:
                repo.reset_for_relabel(s, job_id)
            counts = status_counts(s, job_id)
        if counts["pending"] + counts["running"] == 0:  # nothing new: no model is loaded
            with factory() as s:
                repo.mark_job_finished(s, job_id)
                console.print(f"job {name}: nothing new to label", highlight=False)
                return job_summary(s, repo.get_job(s, name))
    with console_err.status("loading models..."):
        pipeline, provenance = build_pipeline(preset, settings, config, checkpoints=checkpoints,
                                              allow_download=not offline, progress=_download_bar())
    names = [*(config.classes or ()), *config.extra_classes]
    check_class_names(names, getattr(pipeline.detector, "count_tokens", None))  # exact, before any image
    if job_id is None:
        job_id = _list(factory, name, src, cfg, provenance, changed).job_id
    if preset.random_weights:  # after every up-front check, so a failure stays one line
        console_err.print(f"[bold yellow]{RANDOM_WEIGHTS_WARNING}[/]")
    _label_pending(factory, job_id, name, pipeline, settings, src)
    with factory() as s:
        repo.mark_job_finished(s, job_id)
        return job_summary(s, repo.get_job(s, name))


def _label_pending(factory: Any, job_id: int, name: str, pipeline: Any, settings: Any, src: Any) -> None:
    from labelfleet.db.queries import status_counts
    from labelfleet.storage.local import abort_reads
    from workers.local import local_owner, run_local
    from workers.processing import ItemProcessor

    with factory() as s:
        counts = status_counts(s, job_id)
    with image_progress() as progress:
        task = progress.add_task(f"labelling {name}", total=counts["pending"] + counts["running"])
        processor = ItemProcessor(factory, pipeline, settings, local_owner(), src,
                                  on_item=lambda _status: progress.advance(task))
        try:
            run_local(factory, job_id, processor, settings)
        except KeyboardInterrupt:
            abort_reads()  # a read stuck on a slow file must not keep the process alive
            console_err.print(f"\n[yellow]interrupted:[/] job {name!r} is consistent; run the same command "
                              "again to continue where it stopped.")
            raise typer.Exit(130) from None
        finally:
            processor.close()


def _download_bar() -> Any:
    from labelfleet.cli.common import image_progress as _p

    def factory(filename: str, total: int) -> Any:
        progress = _p()
        progress.start()
        task = progress.add_task(f"download {filename}", total=total)

        def update(done: int, total_: int) -> None:
            progress.update(task, completed=done)
            if done >= total_:
                progress.stop()

        return update

    return factory


def _print_summary(summary: dict[str, Any], preset: Preset) -> None:
    console.print(
        f"job [bold]{summary['job']}[/]: {summary['state']} - {summary['done']} done, {summary['failed']} failed, "
        f"{summary['skipped']} skipped of {summary['total']}; {summary['detections']} detections, "
        f"{summary['tags']} tags")
    for f in summary["failures"]:
        console.print(f"  {f['count']} {f['status']}: {f['reason']}", highlight=False)
    if preset.random_weights:
        console_err.print(f"[bold yellow]{RANDOM_WEIGHTS_WARNING}[/]")


def _parse_box(box: str | None) -> list[float] | None:
    if box is None:
        return None
    parts = box.split(",")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 4 or vals[2] <= vals[0] or vals[3] <= vals[1]:
        raise ConfigError(f"--box must be x0,y0,x1,y1 in pixels with x1>x0 and y1>y0, got {box!r}")
    return vals


def _parse_point(point: str) -> tuple[float, float, int]:
    parts = point.split(",")
    if len(parts) != 3 or parts[2].strip() not in ("0", "1"):
        raise ConfigError(f"--point must be x,y,1 (include) or x,y,0 (exclude), got {point!r}")
    try:
        return float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ConfigError(f"--point must be x,y,1 (include) or x,y,0 (exclude), got {point!r}") from None


def segment(
    image: Path = typer.Argument(..., exists=True, dir_okay=False, help="Image file."),
    box: str | None = typer.Option(None, "--box", help="Box prompt x0,y0,x1,y1 in pixels."),
    point: list[str] = typer.Option([], "--point", help="Point prompt x,y,1 (include) or x,y,0 (exclude); repeatable."),
    everything: bool = typer.Option(False, "--everything", help="Segment everything (automatic mask generator)."),
    out: Path = typer.Option(..., "--out", help="Output PNG: a 0/255 mask, or with --everything an index map "
                             "(0 = background, i = mask i) plus OUT.json describing each mask."),
    models: str | None = typer.Option(None, "--models", help="Preset whose SAM is used."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    segmenter_checkpoint: Path | None = typer.Option(None, "--segmenter-checkpoint", help="Local SAM .pth."),
) -> None:
    """Segment one image with SAM from a box and/or points, or everything in it."""
    import numpy as np
    from PIL import Image

    from labelfleet.images import decode_image
    from workers.models import resolve_model
    from workers.stages.registry import build_segmenter

    pts = [_parse_point(p) for p in point]
    bx = _parse_box(box)
    if not everything and bx is None and not pts:
        raise ConfigError("give --box and/or --point prompts, or --everything")
    settings = make_settings(models=models, device=device)
    preset = get_preset(settings.models)
    from labelfleet.settings import check_device

    resolved = check_device(settings.device)
    try:  # an unwritable --out fails now, not after the model ran
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {out.parent} for --out: {exc.strerror or exc}") from exc
    if preset.random_weights:
        console_err.print(f"[bold yellow]{RANDOM_WEIGHTS_WARNING}[/]")
    res = resolve_model(preset.segmenter, "segmenter", settings, checkpoint=segmenter_checkpoint)
    seg = build_segmenter(res.key, checkpoint=res.files["checkpoint"], device=resolved)
    arr = decode_image(image.read_bytes(), max_pixels=settings.max_image_pixels).array
    if everything:
        found = seg.segment_everything(arr)
        index = np.zeros(arr.shape[:2], np.uint16)
        meta = []
        for i, (mask, xyxy, score) in enumerate(found, start=1):
            index[mask & (index == 0)] = i
            meta.append({"index": i, "xyxy": [float(v) for v in xyxy], "score": float(score), "area": int(mask.sum())})
        Image.fromarray(index.astype(np.uint8) if len(found) < 256 else index).save(out)
        out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        console.print(f"{len(found)} masks -> {out}")
        return
    points = np.array([[x, y] for x, y, _ in pts], np.float32) if pts else None
    labels = np.array([lab for _, _, lab in pts], np.int64) if pts else None
    mask = seg.segment_prompts(arr, box=np.array(bx, np.float32) if bx else None, points=points,
                               point_labels=labels)
    Image.fromarray(mask.astype(np.uint8) * 255).save(out)
    console.print(f"mask of {int(mask.sum())} pixels -> {out}")
