"""Review of edit jobs in FiftyOne, keep/discard decisions into the database, export of kept variants.

The dataset ``labelfleet-edits-<job>`` is *grouped*: one group per edit (an item and an
instance, see :mod:`labelfleet.edit`) with the slices ``original`` (the source image with
its carried-over labels), ``mask`` (a 0/255 PNG of the inpainted region) and ``v0`` ..
``vN`` (the variants, each with ``lf_edit_output_id`` = ``edit_outputs.id``). A reviewer
tags variants ``accept`` (keep) or ``reject`` (discard); untagged variants stay undecided.

Decisions are stored before every rebuild and never overwritten by one: the rebuilt
dataset shows them again as tags. Boxes stay absolute px xyxy in the database; the
conversion to FiftyOne's relative boxes is :func:`orchestrator.review.convert.to_fo_detection`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from labelfleet.db.edit_queries import edit_outputs
from labelfleet.db.models import EditOutput, EditReview, Item, Job
from labelfleet.masks import mask_record_full
from labelfleet.storage import open_source
from labelfleet.storage.dest import open_destination
from orchestrator.review import ACCEPT_TAG, REJECT_TAG, dataset_name, import_fiftyone
from orchestrator.review.convert import to_fo_detection
from orchestrator.review.dataset import detection_rows, frame_size, job_info
from orchestrator.review.formats import coco_document
from orchestrator.review.media import MediaCache, safe_name

logger = logging.getLogger(__name__)
RANDOM_EDITS_NOTE = "random weights - edits and masks meaningless"


@dataclass
class EditReviewReport:
    """Decisions present in the dataset when it was synced (``conflicts``: both tags, ignored)."""

    kept: int = 0
    discarded: int = 0
    conflicts: int = 0


def edit_dataset_name(job_name: str) -> str:
    return dataset_name("edits-" + job_name)


def _caches(job: Job, media_root: Path) -> tuple[MediaCache, MediaCache]:
    endpoint = job.config.get("s3_endpoint_url")
    src = MediaCache(open_source(job.source, s3_endpoint_url=endpoint), media_root, job.name)
    dest = open_destination(job.config["edit"]["out"], s3_endpoint_url=endpoint)
    return src, MediaCache(dest, media_root, job.name + "-outputs")  # type: ignore[arg-type]


def _fo_row(row: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A detection row for :func:`to_fo_detection` (which reads any mask record), no review mirror
    (carried labels are the edit job's own)."""
    return {**row, "review_status": None, **changes}


def _mask_png(folder: Path, out: EditOutput) -> Path:
    path = folder / f"{out.item_id}_{safe_name(out.instance)}.png"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask_record_full(out.mask).astype(np.uint8) * 255).save(path)
    return path


def _group_samples(fo: Any, it: Item, outs: list[EditOutput], labels: list[dict[str, Any]],
                   caches: tuple[MediaCache, MediaCache], mask_dir: Path) -> list[Any]:
    group = fo.Group()
    common = {"lf_item_id": it.id, "lf_key": it.key, "lf_instance": outs[0].instance,
              "random_weights": outs[0].random_weights}

    def dets() -> Any:
        return fo.Detections(detections=[to_fo_detection(_fo_row(r), frame_size(it)) for r in labels])

    meta = fo.ImageMetadata(width=it.width, height=it.height)
    samples = [fo.Sample(filepath=str(caches[0].path(it.key)), group=group.element("original"), metadata=meta,
                         detections=dets(), **common),
               fo.Sample(filepath=str(_mask_png(mask_dir, outs[0])), group=group.element("mask"), **common)]
    for o in outs:
        tags: dict[str | None, list[str]] = {EditReview.KEPT: [ACCEPT_TAG], EditReview.DISCARDED: [REJECT_TAG]}
        samples.append(fo.Sample(filepath=str(caches[1].path(o.output_key)), group=group.element(f"v{o.variant}"),
                                 tags=list(tags.get(o.review_status, [])), lf_edit_output_id=o.id,
                                 prompt=o.prompt, seed=o.seed, metadata=meta, detections=dets(), **common))
    return samples


def build_edit_dataset(session: Session, job: Job, *, media_root: Path, reviewer: str) -> tuple[Any, EditReviewReport]:
    """(Re)build the grouped dataset of an edit job from the database; decisions of an existing one are
    stored first. Returns ``(dataset, report of the stored decisions)``."""
    fo = import_fiftyone()
    name = edit_dataset_name(job.name)
    report = EditReviewReport()
    if fo.dataset_exists(name):
        old = fo.load_dataset(name)
        report = sync_edit_review(session, job.id, old, reviewer=reviewer)
        old.delete()
    outputs = edit_outputs(session, job.id)
    items = {it.id: it for it in session.scalars(select(Item).where(Item.id.in_({o.item_id for o in outputs})))}
    labels = detection_rows(session, list(items))
    caches = _caches(job, media_root)
    mask_dir = Path(media_root).expanduser() / "media" / safe_name(job.name) / "masks"
    ds = fo.Dataset(name, persistent=True)
    ds.add_group_field("group", default="original")
    samples = []
    for (item_id, _inst), outs in groupby(outputs, key=lambda o: (o.item_id, o.instance)):
        samples += _group_samples(fo, items[item_id], list(outs), labels.get(item_id, []), caches, mask_dir)
    if samples:
        ds.add_samples(samples, progress=False)
    ds.info = {**job_info(job), "random_weights": any(o.random_weights for o in outputs)}
    if ds.info["random_weights"]:
        ds.description = f"labelfleet edit job {job.name}: {RANDOM_EDITS_NOTE}"
    ds.save()
    logger.info("edit dataset %s: %d outputs of %d images", name, len(outputs), len(items))
    return ds, report


def sync_edit_review(session: Session, job_id: int, ds: Any, *, reviewer: str) -> EditReviewReport:
    """Store the variants' ``accept`` / ``reject`` tags as ``edit_outputs.review_status`` (kept / discarded).

    Untagged variants and variants with both tags are not touched; unchanged decisions
    are not rewritten (``reviewed_at`` keeps the time of the decision).
    """
    report = EditReviewReport()
    flat = ds.select_group_slices() if ds.media_type == "group" else ds
    now = datetime.now(UTC)
    for oid, tags in zip(flat.values("lf_edit_output_id"), flat.values("tags"), strict=True):
        if oid is None:
            continue
        keep, drop = ACCEPT_TAG in tags, REJECT_TAG in tags
        if keep and drop:
            report.conflicts += 1
            continue
        if not (keep or drop):
            continue
        status = EditReview.KEPT if keep else EditReview.DISCARDED
        report.kept += keep
        report.discarded += drop
        session.execute(update(EditOutput).where(
            EditOutput.id == int(oid), EditOutput.job_id == job_id,
            (EditOutput.review_status.is_(None)) | (EditOutput.review_status != status))
            .values(review_status=status, reviewed_by=reviewer, reviewed_at=now))
    session.commit()
    if report.conflicts:
        logger.warning("%d variants tagged both accept and reject were left undecided", report.conflicts)
    return report


def export_kept(session: Session, job: Job, *, out: Path, new_class: str | None, media_root: Path) -> dict[str, Any]:
    """COCO export (``labels.json`` + ``data/``) of the kept variants: the image is the variant, the labels
    the source labels carried over, the edited instances renamed ``new_class`` (default: the job's).

    Written by the same COCO writer as ``labelfleet export`` (one mask per label for ``area``,
    polygons and RLE); a class table sorted by name."""
    t0 = time.perf_counter()
    new_class = new_class or job.config.get("edit", {}).get("new_class")
    kept = [o for o in edit_outputs(session, job.id) if o.review_status == EditReview.KEPT]
    items = {it.id: it for it in session.scalars(select(Item).where(Item.id.in_({o.item_id for o in kept})))}
    rows = detection_rows(session, list(items), include_rejected=False)
    cache = _caches(job, media_root)[1]
    (out / "data").mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for n, o in enumerate(kept, start=1):
        it = items[o.item_id]
        name = o.output_key.replace("/", "__")  # output keys are unique within the job
        shutil.copyfile(cache.path(o.output_key), out / "data" / name)
        images.append({"id": n, "file_name": name, "width": it.width, "height": it.height, "lf_key": it.key,
                       "lf_edit_output_id": o.id})
        labels.append([{**r, "class_name": new_class if new_class and i in o.detection_idx else r["class_name"]}
                       for i, r in enumerate(rows.get(o.item_id, []))])
    classes = sorted({r["class_name"] for ls in labels for r in ls})
    random = any(o.random_weights for o in kept)
    info = {**job_info(job), "description": f"labelfleet edit job {job.name}"
            + (f": {RANDOM_EDITS_NOTE}" if random else ""), "random_weights": random}
    (out / "labels.json").write_text(json.dumps(coco_document(images, labels, classes, info, "polygon"),
                                                default=str))
    return {"images": len(images), "labels": sum(len(ls) for ls in labels), "seconds": time.perf_counter() - t0,
            "random_weights": random}
