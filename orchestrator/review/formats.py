"""COCO and YOLO writers for the job's current labels (no FiftyOne needed).

Geometry: labels are absolute px ``xyxy`` floats in the upright frame with a mask record
(:mod:`labelfleet.masks`). Every export uses ONE mask per label: the stored mask clipped to
the label's rounded pixel box (:func:`box_mask`), so COCO ``area``, polygons and RLE, and
YOLO-seg polygons all describe the same pixels and never leave the box.

Class ids come from the job's class table (:func:`labelfleet.db.labels.class_table`):
YOLO class = class id; COCO ``category_id`` = class id + 1 (COCO reserves 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from labelfleet.masks import encode_rle, mask_record_crop
from labelfleet.types import BoolArray
from orchestrator.review.convert import UNREVIEWED, pixel_span

COCO_SEGMENTATIONS = ("rle", "polygon")


def box_mask(label: dict[str, Any], frame: tuple[int, int]) -> tuple[BoolArray, int, int] | None:
    """``(mask, x_lo, y_lo)``: the label's mask inside its rounded pixel box (``(h, w)`` bool whose
    top-left is pixel ``(x_lo, y_lo)``), or None when the label has no mask. ``frame`` = ``(W, H)``."""
    rec = label.get("mask")
    if not rec:
        return None
    w, h = frame
    x_lo, x_hi = pixel_span(float(label["x0"]), float(label["x1"]), w)
    y_lo, y_hi = pixel_span(float(label["y0"]), float(label["y1"]), h)
    crop, cx, cy = mask_record_crop(rec)
    out = np.zeros((y_hi - y_lo, x_hi - x_lo), dtype=bool)
    ix0, iy0 = max(cx, x_lo), max(cy, y_lo)
    ix1, iy1 = min(cx + crop.shape[1], x_hi), min(cy + crop.shape[0], y_hi)
    if ix1 > ix0 and iy1 > iy0:
        out[iy0 - y_lo:iy1 - y_lo, ix0 - x_lo:ix1 - x_lo] = crop[iy0 - cy:iy1 - cy, ix0 - cx:ix1 - cx]
    return out, x_lo, y_lo


def full_frame(m: BoolArray, x_lo: int, y_lo: int, frame: tuple[int, int]) -> BoolArray:
    """Paste a box mask at ``(x_lo, y_lo)`` into an ``(H, W)`` bool frame (``frame`` = ``(W, H)``)."""
    out = np.zeros((frame[1], frame[0]), dtype=bool)
    out[y_lo:y_lo + m.shape[0], x_lo:x_lo + m.shape[1]] = m
    return out


def polygons(m: BoolArray, x_lo: int, y_lo: int, label: dict[str, Any]) -> list[list[float]]:
    """Outer contours of a box mask as absolute px ``[x1, y1, x2, y2, ...]`` lists (>= 3 points each),
    clamped to the label's box, largest first."""
    import cv2

    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in sorted(contours, key=cv2.contourArea, reverse=True):
        pts = c.reshape(-1, 2).astype(float) + np.array([x_lo, y_lo], dtype=float)
        if len(pts) < 3:
            continue
        pts[:, 0] = np.clip(pts[:, 0], label["x0"], label["x1"])
        pts[:, 1] = np.clip(pts[:, 1], label["y0"], label["y1"])
        out.append([float(v) for v in pts.reshape(-1)])
    return out


def coco_annotation(label: dict[str, Any], ann_id: int, image_id: int, class_id: int, frame: tuple[int, int],
                    segmentation: str) -> dict[str, Any]:
    """One COCO annotation: bbox ``[x, y, w, h]`` px, ``area`` = mask pixels (box area without a
    mask), segmentation as RLE (exact) or polygons (RLE when the mask is too thin for one)."""
    x0, y0, x1, y1 = (float(label[k]) for k in ("x0", "y0", "x1", "y1"))
    status = label.get("review_status") or UNREVIEWED
    ann: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": class_id + 1,
                           "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0, "score": label.get("score"),
                           "review_status": status, "mask_stale": bool(label.get("mask_stale")),
                           "attributes": {"review_status": status, "reviewed_by": label.get("reviewed_by"),
                                          "phrase": label.get("phrase"), "tag": label.get("tag")},
                           "lf_label": label["key"]}
    got = box_mask(label, frame)
    if got is None:
        ann["segmentation"], ann["area"] = [], (x1 - x0) * (y1 - y0)
        return ann
    m, x_lo, y_lo = got
    ann["area"] = int(m.sum())
    polys = polygons(m, x_lo, y_lo, label) if segmentation == "polygon" else []
    ann["segmentation"] = polys or encode_rle(full_frame(m, x_lo, y_lo, frame))
    return ann


def coco_document(images: list[dict[str, Any]], labels: list[list[dict[str, Any]]], classes: list[str],
                  info: dict[str, Any], segmentation: str = "rle") -> dict[str, Any]:
    """A COCO detection/segmentation document; ``images`` dicts have ``id, file_name, width, height``."""
    if segmentation not in COCO_SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {COCO_SEGMENTATIONS}, but got {segmentation!r}")
    index = {c: i for i, c in enumerate(classes)}
    anns: list[dict[str, Any]] = []
    for img, rows in zip(images, labels, strict=True):
        for r in rows:
            anns.append(coco_annotation(r, len(anns) + 1, img["id"], index[r["class_name"]],
                                        (img["width"], img["height"]), segmentation))
    return {"info": info, "licenses": [],
            "categories": [{"id": i + 1, "name": c, "supercategory": "object"} for i, c in enumerate(classes)],
            "images": images, "annotations": anns}


def yolo_lines(labels: list[dict[str, Any]], classes: list[str], frame: tuple[int, int], *,
               seg: bool) -> list[str]:
    """YOLO label lines, coordinates normalised to ``[0, 1]``: ``cls cx cy w h`` (detection) or
    ``cls x1 y1 ... xn yn`` (segmentation: the mask's largest contour, the box outline when the
    label has no usable mask)."""
    w, h = frame
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for r in labels:
        x0, y0, x1, y1 = (float(r[k]) for k in ("x0", "y0", "x1", "y1"))
        cls = index[r["class_name"]]
        if not seg:
            out.append(f"{cls} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
            continue
        got = box_mask(r, frame)
        polys = polygons(*got, r) if got is not None else []
        pts = polys[0] if polys else [x0, y0, x1, y0, x1, y1, x0, y1]
        coords = [min(max(v / (w if i % 2 == 0 else h), 0.0), 1.0) for i, v in enumerate(pts)]
        out.append(f"{cls} " + " ".join(f"{v:.6f}" for v in coords))
    return out


def yolo_yaml(out: Path, classes: list[str], *, val: str, job: str, random_weights: bool, note: str) -> str:
    """``dataset.yaml`` text as Ultralytics reads it (``path``, ``train``, ``val``, ``names``, ``nc``)."""
    lines = [f"# labelfleet job {job}: YOLO dataset (class ids are the job's class table)"]
    if random_weights:
        lines.append(f"# WARNING: {note} (tiny random-weight models)")
    lines += [f"path: {json.dumps(str(out.resolve()))}", "train: images/train", f"val: {val}",
              f"nc: {len(classes)}", "names:"]
    lines += [f"  {i}: {json.dumps(c)}" for i, c in enumerate(classes)]
    lines += [f"labelfleet_job: {json.dumps(job)}", f"labelfleet_random_weights: {str(random_weights).lower()}"]
    if random_weights:
        lines.append(f"labelfleet_warning: {json.dumps(note)}")
    return "\n".join(lines) + "\n"
