"""Export a job's **current labels** (:mod:`labelfleet.db.labels`): COCO, YOLO, YOLO-seg, masks, FiftyOne.

The database is the source of truth (run ``labelfleet review JOB --sync`` first to include
the App's corrections). Rejected and deleted labels are left out unless ``include_rejected``
(deleted: always); ``min_score`` drops unreviewed predictions scoring below it;
``reviewed_only`` keeps only labels a person confirmed (accepted, edited, added).

Every export uses the job's class table (same ids whatever the filters), writes images
upright (EXIF orientation applied and removed), says when the labels came from random
weights, and carries each label's review status. Layouts::

    coco/      labels.json (info, categories id = class id + 1, review_status per annotation), data/
    yolo/      dataset.yaml, images/{train,val}/, labels/{train,val}/*.txt (yolo-seg: polygons)
    masks/     manifest.json (image -> semantic + instance files), classes.json, instances.json,
               semantic/<image>.png (uint8, uint16 when > 254 classes: 0 = background, class id + 1),
               instances/<image>_<label>.png (0/255)
    fiftyone/  FiftyOneDataset (``review_status`` on every label)
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from sqlalchemy.orm import Session

from labelfleet.db.labels import DECISION_IOU, class_table, current_labels
from labelfleet.db.models import Item, Job
from orchestrator.review import import_fiftyone
from orchestrator.review.convert import UNREVIEWED, to_fo_detection
from orchestrator.review.dataset import RANDOM_WEIGHTS_NOTE, done_items, frame_size, job_info, open_job_source
from orchestrator.review.formats import box_mask, coco_document, full_frame, yolo_lines, yolo_yaml
from orchestrator.review.media import MediaCache, safe_name

logger = logging.getLogger(__name__)

FORMATS = ("coco", "yolo", "yolo-seg", "masks", "fiftyone")
_EXIF_ORIENTATION = 0x0112


def write_upright(src: Path, dest: Path) -> bool:
    """Copy an image so every reader sees the upright frame the labels use; True if re-encoded.

    Images with an EXIF orientation other than 1 are rotated (``ImageOps.exif_transpose``,
    which also drops the tag) and saved in the same format; others are copied byte for byte.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in (None, 1):
            shutil.copyfile(src, dest)
            return False
        fmt = img.format or "PNG"
        upright = ImageOps.exif_transpose(img)
        kw: dict[str, Any] = {"quality": 95} if fmt == "JPEG" else {}
        upright.save(dest, format=fmt, **kw)
    return True


def in_train(key: str, split: float | None) -> bool:
    """Deterministic train/val assignment of an image key (``split`` = train fraction; None = all train)."""
    if split is None:
        return True
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < split


def export_job(session: Session, job: Job, *, fmt: str, out: Path, media_root: Path,
               include_rejected: bool = False, min_score: float | None = None, reviewed_only: bool = False,
               split: float | None = None, coco_segmentation: str = "rle", keep_overlapping: bool = False,
               s3_endpoint_url: str | None = None) -> dict[str, Any]:
    """Export ``job`` to ``out`` in ``fmt`` (one of :data:`FORMATS`); returns counts and seconds.

    ``keep_overlapping`` also exports new predictions that overlap a region a person decided on
    (hidden by default, see :mod:`labelfleet.db.labels`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    if split is not None and not 0 < split < 1:
        raise ValueError(f"split must be a train fraction in (0, 1), but got {split}")
    t0 = time.perf_counter()
    items = [it for it in done_items(session, job) if it.width and it.height]
    rows = current_labels(session, [it.id for it in items], include_rejected=include_rejected,
                          min_score=min_score, reviewed_only=reviewed_only,
                          overlap_iou=None if keep_overlapping else DECISION_IOU)
    classes = class_table(session, job.id, job.config)
    session.commit()
    (out.parent if fmt == "fiftyone" else out).mkdir(parents=True, exist_ok=True)
    ctx = _Ctx(job, items, rows, classes, out,
               MediaCache(open_job_source(job, s3_endpoint_url), media_root, job.name))
    if fmt == "masks":
        export_masks(ctx)
    elif fmt == "coco":
        export_coco(ctx, coco_segmentation)
    elif fmt in ("yolo", "yolo-seg"):
        export_yolo(ctx, seg=fmt == "yolo-seg", split=split)
    else:
        export_fiftyone(ctx)
    labels = sum(len(v) for v in rows.values())
    stats = {"format": fmt, "images": len(items), "labels": labels, "seconds": time.perf_counter() - t0}
    logger.info("exported %(labels)d labels of %(images)d images as %(format)s in %(seconds).2fs", stats)
    return stats


class _Ctx:
    def __init__(self, job: Job, items: list[Item], rows: dict[int, list[dict[str, Any]]], classes: list[str],
                 out: Path, cache: MediaCache) -> None:
        self.job, self.items, self.rows, self.classes, self.out, self.cache = job, items, rows, classes, out, cache
        self.random = bool(job.models.get("random_weights", False))

    def info(self) -> dict[str, Any]:
        info = job_info(self.job)
        info["description"] = f"labelfleet job {self.job.name}" + (f": {RANDOM_WEIGHTS_NOTE}" if self.random else "")
        info["classes"] = list(self.classes)
        return info

    def image(self, it: Item, folder: str) -> str:
        """Write the item's upright image under ``out/folder``; returns its path relative to ``out``."""
        rel = f"{folder}/{safe_name(it.key)}"
        write_upright(self.cache.path(it.key), self.out / rel)
        return rel


def export_coco(ctx: _Ctx, segmentation: str) -> None:
    """``labels.json`` + ``data/`` (see module docs)."""
    images = [{"id": n, "file_name": ctx.image(it, "data").split("/", 1)[1], "width": it.width,
               "height": it.height, "lf_key": it.key} for n, it in enumerate(ctx.items, start=1)]
    doc = coco_document(images, [ctx.rows.get(it.id, []) for it in ctx.items], ctx.classes, ctx.info(),
                        segmentation)
    (ctx.out / "labels.json").write_text(json.dumps(doc))


def export_yolo(ctx: _Ctx, *, seg: bool, split: float | None) -> None:
    """``dataset.yaml`` + ``images/`` + ``labels/`` (see module docs)."""
    for it in ctx.items:
        part = "train" if in_train(it.key, split) else "val"
        rel = ctx.image(it, f"images/{part}")
        lines = yolo_lines(ctx.rows.get(it.id, []), ctx.classes, frame_size(it), seg=seg)
        label = ctx.out / "labels" / part / (Path(rel).stem + ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{ln}\n" for ln in lines))
    val = "images/val" if split is not None else "images/train"
    for part in ("train", "val") if split is not None else ("train",):
        (ctx.out / "images" / part).mkdir(parents=True, exist_ok=True)
        (ctx.out / "labels" / part).mkdir(parents=True, exist_ok=True)
    (ctx.out / "dataset.yaml").write_text(yolo_yaml(ctx.out, ctx.classes, val=val, job=ctx.job.name,
                                                    random_weights=ctx.random, note=RANDOM_WEIGHTS_NOTE))


def export_masks(ctx: _Ctx) -> None:
    """One PNG per instance, one semantic PNG per image, ``manifest.json`` and ``classes.json``."""
    dtype = np.uint8 if len(ctx.classes) < 255 else np.uint16
    index = {c: i + 1 for i, c in enumerate(ctx.classes)}
    (ctx.out / "semantic").mkdir(exist_ok=True)
    (ctx.out / "instances").mkdir(exist_ok=True)
    listing, images = [], []
    for it in ctx.items:
        frame = frame_size(it)
        stem = safe_name(it.key).rsplit(".", 1)[0]
        semantic = np.zeros((frame[1], frame[0]), dtype=dtype)
        entry: dict[str, Any] = {"image": it.key, "width": it.width, "height": it.height,
                                 "semantic": f"semantic/{stem}.png", "instances": []}
        for r in ctx.rows.get(it.id, []):
            got = box_mask(r, frame)
            inst = {"class": r["class_name"], "class_id": index[r["class_name"]] - 1, "score": r["score"],
                    "bbox_xyxy": [r["x0"], r["y0"], r["x1"], r["y1"]],
                    "review_status": r["review_status"] or UNREVIEWED, "mask_stale": bool(r["mask_stale"]),
                    "file": None}
            if got is not None:
                m = full_frame(*got, frame)
                semantic[m] = index[r["class_name"]]
                name = f"{stem}_{r['key']}.png"
                Image.fromarray(m.astype(np.uint8) * 255).save(ctx.out / "instances" / name)
                inst["file"] = f"instances/{name}"
                listing.append({"image": it.key, **inst})
            entry["instances"].append(inst)
        Image.fromarray(semantic).save(ctx.out / "semantic" / f"{stem}.png")
        images.append(entry)
    classes = {"0": "background", **{str(i): c for c, i in index.items()}}
    manifest = {**ctx.info(), "semantic_dtype": np.dtype(dtype).name, "class_values": classes, "images": images}
    (ctx.out / "classes.json").write_text(json.dumps(classes, indent=1))
    (ctx.out / "instances.json").write_text(json.dumps(listing, indent=1))
    (ctx.out / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))


def export_fiftyone(ctx: _Ctx) -> None:
    """A FiftyOneDataset export (upright media, ``review_status`` per label) via a temporary dataset."""
    fo = import_fiftyone()
    staging = Path(tempfile.mkdtemp(prefix=f".{ctx.out.name}-", dir=ctx.out.parent))
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=str(_staged(ctx, it, staging)), lf_item_id=it.id,
                                  lf_key=it.key, metadata=fo.ImageMetadata(width=it.width, height=it.height),
                                  detections=fo.Detections(detections=[
                                      to_fo_detection(r, frame_size(it)) for r in ctx.rows.get(it.id, [])]))
                        for it in ctx.items], progress=False)
        ds.info = ctx.info()
        ds.classes = {"detections": list(ctx.classes)}
        ds.export(export_dir=str(ctx.out), dataset_type=fo.types.FiftyOneDataset, label_field="detections",
                  progress=False)
    finally:
        ds.delete()
        shutil.rmtree(staging, ignore_errors=True)


def _staged(ctx: _Ctx, it: Item, staging: Path) -> Path:
    """The item's upright image in ``staging`` (FiftyOne then copies it into the export)."""
    dest = staging / safe_name(it.key)
    write_upright(ctx.cache.path(it.key), dest)
    return dest
