"""Export a job's labels: COCO / YOLOv5 / FiftyOne through FiftyOne's exporters, ``masks`` as PNGs.

The database is the source of truth (run ``labelfleet review JOB --sync`` first to
include the App's corrections). Rejected labels are left out unless
``include_rejected``; ``min_score`` drops low-confidence labels. FiftyOne formats go
through a temporary, non-persistent dataset so the review dataset is never altered.

``masks`` layout (no FiftyOne needed)::

    out/classes.json                 {"0": "background", "1": "cat", ...}
    out/semantic/<image>.png         (H, W) uint8 class index per pixel (later labels on top)
    out/instances/<image>_<idx>.png  (H, W) uint8 0/255 mask of one detection
    out/instances.json               [{"image", "file", "class", "score", "bbox_xyxy"}, ...]
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from labelfleet.db.models import Item, Job
from labelfleet.masks import decode_rle, rle_area
from labelfleet.storage import open_source
from orchestrator.review import import_fiftyone
from orchestrator.review.convert import LF_ID, to_fo_detection
from orchestrator.review.dataset import detection_rows, done_items, frame_size, job_info
from orchestrator.review.media import MediaCache, safe_name

logger = logging.getLogger(__name__)

FORMATS = ("coco", "yolo", "masks", "fiftyone")
#: Polygon simplification of COCO segmentations, in pixels (FiftyOne's default is 2).
COCO_POLYGON_TOLERANCE_PX = 1


def _fo_types() -> dict[str, Any]:
    fo = import_fiftyone()
    return {"coco": fo.types.COCODetectionDataset, "yolo": fo.types.YOLOv5Dataset,
            "fiftyone": fo.types.FiftyOneDataset}


def export_job(session: Session, job: Job, *, fmt: str, out: Path, media_root: Path,
               include_rejected: bool = False, min_score: float | None = None) -> dict[str, Any]:
    """Export ``job`` to ``out`` in ``fmt`` (one of :data:`FORMATS`); returns counts and seconds."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    t0 = time.perf_counter()
    items = [it for it in done_items(session, job) if it.width and it.height]
    rows = detection_rows(session, [it.id for it in items], include_rejected=include_rejected,
                          min_score=min_score)
    if fmt == "masks":
        out.mkdir(parents=True, exist_ok=True)
        export_masks(items, rows, out)
    else:
        _export_fo(job, items, rows, fmt, out, MediaCache(open_source(job.source), media_root, job.name))
    labels = sum(len(v) for v in rows.values())
    stats = {"format": fmt, "images": len(items), "labels": labels, "seconds": time.perf_counter() - t0}
    logger.info("exported %(labels)d labels of %(images)d images as %(format)s in %(seconds).2fs", stats)
    return stats


def _export_fo(job: Job, items: list[Item], rows: dict[int, list[dict[str, Any]]], fmt: str, out: Path,
               cache: MediaCache) -> None:
    """Temporary dataset (relative xywh via the converter) -> FiftyOne exporter -> ``out``."""
    fo = import_fiftyone()
    classes = sorted({r["class_name"] for v in rows.values() for r in v})
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=str(cache.path(it.key)), lf_item_id=it.id,
                                  metadata=fo.ImageMetadata(width=it.width, height=it.height),
                                  detections=fo.Detections(detections=[
                                      to_fo_detection({**r, "review_status": None}, frame_size(it))
                                      for r in rows.get(it.id, [])]))
                        for it in items], progress=False)
        ds.info = job_info(job)
        kwargs: dict[str, Any] = {"export_dir": str(out), "dataset_type": _fo_types()[fmt],
                                  "label_field": "detections", "progress": False}
        if fmt != "fiftyone":
            kwargs["classes"] = classes
        if fmt == "yolo":
            kwargs["split"] = "val"
        if fmt == "coco":
            kwargs["tolerance"] = COCO_POLYGON_TOLERANCE_PX
        ds.export(**kwargs)
    finally:
        ds.delete()
    if fmt == "coco":
        fix_coco_segmentations(out / "labels.json", rows)


def fix_coco_segmentations(labels_path: Path, rows: dict[int, list[dict[str, Any]]]) -> int:
    """Complete FiftyOne's COCO ``labels.json`` from the database masks; returns how many were filled.

    FiftyOne writes polygons, which drop masks too thin for one (1-px boxes, lines): those get
    the exact RLE (``{"size": [H, W], "counts": str}``, which pycocotools and FiftyOne read for
    ``iscrowd=0`` too). ``area`` becomes the mask's pixel count instead of the box area.
    """
    by_id = {r["id"]: r for v in rows.values() for r in v}
    data = json.loads(labels_path.read_text())
    filled = 0
    for ann in data.get("annotations", []):
        row = by_id.get(ann.get(LF_ID))
        if row is None or not row.get("mask"):
            continue
        if not ann.get("segmentation"):
            ann["segmentation"] = row["mask"]
            filled += 1
        ann["area"] = float(rle_area(row["mask"]))
    labels_path.write_text(json.dumps(data))
    logger.debug("COCO export: %d masks too small for polygons stored as RLE", filled)
    return filled


def export_masks(items: list[Item], rows: dict[int, list[dict[str, Any]]], out: Path) -> None:
    """One PNG per instance, one semantic PNG per image and ``classes.json`` (see module docs)."""
    classes = sorted({r["class_name"] for v in rows.values() for r in v})
    index = {c: i + 1 for i, c in enumerate(classes)}
    (out / "semantic").mkdir(exist_ok=True)
    (out / "instances").mkdir(exist_ok=True)
    listing = []
    for it in items:
        w, h = frame_size(it)
        stem = safe_name(it.key).rsplit(".", 1)[0]
        semantic = np.zeros((h, w), dtype=np.uint8)
        for r in rows.get(it.id, []):
            if not r.get("mask"):
                continue
            m = decode_rle(r["mask"])
            semantic[m] = index[r["class_name"]]
            name = f"{stem}_{r['id']}.png"
            Image.fromarray(m.astype(np.uint8) * 255).save(out / "instances" / name)
            listing.append({"image": it.key, "file": f"instances/{name}", "class": r["class_name"],
                            "score": r["score"], "bbox_xyxy": [r["x0"], r["y0"], r["x1"], r["y1"]]})
        Image.fromarray(semantic).save(out / "semantic" / f"{stem}.png")
    (out / "classes.json").write_text(json.dumps({"0": "background", **{str(i): c for c, i in index.items()}},
                                                 indent=1))
    (out / "instances.json").write_text(json.dumps(listing, indent=1))
