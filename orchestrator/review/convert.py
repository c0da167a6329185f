"""The one converter between labelfleet's label frame and FiftyOne's.

labelfleet (database rows, :class:`labelfleet.db.models.Detection`):
    box ``x0, y0, x1, y1``: float, **absolute pixels, xyxy**, upright image frame,
    x to the right, y down, ``x1``/``y1`` exclusive edges;
    mask: COCO RLE dict ``{"size": [H, W], "counts": str}`` of the **full frame**.

FiftyOne (:class:`fiftyone.core.labels.Detection`):
    ``bounding_box``: ``[x, y, w, h]`` **relative** to the frame, in ``[0, 1]``;
    ``mask``: 2D bool array **cropped to the box** (FiftyOne stretches it over the box).

The crop uses the rounded pixel box ``[round(y0):round(y1), round(x0):round(x1)]``
(as ``fiftyone.utils.torch``), widened to at least one pixel and clipped to the frame,
so DB -> FiftyOne -> DB keeps boxes within float precision and masks exactly
(mask pixels outside the box are dropped by design).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from labelfleet.masks import decode_rle, encode_rle
from labelfleet.types import BoolArray
from orchestrator.review import ACCEPT_TAG, REJECT_TAG, import_fiftyone

logger = logging.getLogger(__name__)

#: Custom attribute on each FiftyOne label holding the ``detections.id`` it came from.
LF_ID = "lf_id"
#: Custom attribute mirroring ``detections.review_status`` (read-only for the reviewer).
LF_REVIEW = "lf_review"

_STATUS_TAG = {"accepted": ACCEPT_TAG, "rejected": REJECT_TAG}


def pixel_span(a: float, b: float, n: int) -> tuple[int, int]:
    """Integer pixel range ``[lo, hi)`` covered by the float edges ``a <= b`` on an axis of ``n`` pixels.

    Rounded like FiftyOne's own crop, at least one pixel wide, clipped to ``[0, n]``.
    """
    if n <= 0:
        raise ValueError(f"frame size must be positive, but got {n}")
    lo = min(max(round(a), 0), n - 1)
    hi = min(max(round(b), lo + 1), n)
    return lo, hi


def _check_frame(frame_size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in frame_size)
    if w <= 0 or h <= 0:
        raise ValueError(f"frame_size must be (width, height) > 0, but got {frame_size}")
    return w, h


def crop_mask(full: BoolArray, xyxy: tuple[float, float, float, float]) -> BoolArray:
    """Crop a full-frame ``(H, W)`` bool mask to the pixel box ``xyxy`` -> ``(h, w)`` bool."""
    h, w = full.shape
    x_lo, x_hi = pixel_span(xyxy[0], xyxy[2], w)
    y_lo, y_hi = pixel_span(xyxy[1], xyxy[3], h)
    return np.ascontiguousarray(full[y_lo:y_hi, x_lo:x_hi], dtype=bool)


def paste_mask(crop: np.ndarray, xyxy: tuple[float, float, float, float],
               frame_size: tuple[int, int]) -> BoolArray:
    """Place a box-cropped mask (any 2D array, non-zero = on) back into a full ``(H, W)`` bool frame.

    A crop whose shape differs from the rounded box (the box was edited) is resized
    with nearest-neighbour, as FiftyOne renders it.
    """
    w, h = _check_frame(frame_size)
    m = np.asarray(crop)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (h, w), but got shape {m.shape}")
    x_lo, x_hi = pixel_span(xyxy[0], xyxy[2], w)
    y_lo, y_hi = pixel_span(xyxy[1], xyxy[3], h)
    m = m > (0.5 if m.dtype.kind == "f" else 0)
    if m.shape != (y_hi - y_lo, x_hi - x_lo):
        img = Image.fromarray(m.astype(np.uint8) * 255).resize((x_hi - x_lo, y_hi - y_lo),
                                                               Image.Resampling.NEAREST)
        m = np.asarray(img) > 127
    full = np.zeros((h, w), dtype=bool)
    full[y_lo:y_hi, x_lo:x_hi] = m
    return full


def to_fo_detection(row: Mapping[str, Any], frame_size: tuple[int, int]) -> Any:
    """One labelfleet detection -> ``fo.Detection``.

    Args:
        row: detection columns: ``x0, y0, x1, y1`` (absolute px xyxy floats), ``class_name``,
            ``score``, optional ``mask`` (full-frame COCO RLE of size ``[H, W]``), ``id``,
            ``phrase``, ``tag``, ``review_status``.
        frame_size: ``(width, height)`` of the upright image in pixels (this order).

    Returns:
        ``fo.Detection`` with relative ``[x, y, w, h]`` box, ``label=class_name``,
        ``confidence=score``, a box-cropped bool ``mask``, attribute ``lf_id`` = DB id and
        the label tag ``accept``/``reject`` mirroring a stored review status.
    """
    fo = import_fiftyone()
    w, h = _check_frame(frame_size)
    xyxy = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
    if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
        raise ValueError(f"box must be xyxy with x1 >= x0 and y1 >= y0, but got {xyxy}")
    det = fo.Detection(label=str(row["class_name"]), confidence=float(row["score"]),
                       bounding_box=[xyxy[0] / w, xyxy[1] / h,
                                     (xyxy[2] - xyxy[0]) / w, (xyxy[3] - xyxy[1]) / h])
    rle = row.get("mask")
    if rle:
        full = decode_rle(rle)
        if full.shape != (h, w):
            raise ValueError(f"mask size {list(full.shape)} does not match the frame (H, W) = {[h, w]}")
        det.mask = crop_mask(full, xyxy)
    if row.get("id") is not None:
        det[LF_ID] = int(row["id"])
    for key in ("phrase", "tag"):
        if row.get(key) is not None:
            det[key] = row[key]
    status = row.get("review_status")
    if status:
        det[LF_REVIEW] = status
        if status in _STATUS_TAG:
            det.tags = [_STATUS_TAG[status]]
    return det


def from_fo_detection(det: Any, frame_size: tuple[int, int]) -> dict[str, Any]:
    """``fo.Detection`` -> labelfleet detection columns (the inverse of :func:`to_fo_detection`).

    Args:
        det: a ``fo.Detection`` (relative ``[x, y, w, h]`` box, optional box-cropped mask).
        frame_size: ``(width, height)`` of the upright image in pixels.

    Returns:
        ``{"x0", "y0", "x1", "y1"}`` absolute px xyxy floats (clipped to the frame), ``class_name``,
        ``score`` (None when the label has no confidence), ``mask`` (full-frame RLE) and
        ``area`` when the label has a mask, and ``lf_id`` (None for labels not from the DB).
    """
    w, h = _check_frame(frame_size)
    if det.bounding_box is None or len(det.bounding_box) != 4:
        raise ValueError(f"bounding_box must be [x, y, w, h] relative, but got {det.bounding_box}")
    bx, by, bw, bh = (float(v) for v in det.bounding_box)
    x0, y0 = min(max(bx * w, 0.0), w), min(max(by * h, 0.0), h)
    x1, y1 = min(max((bx + bw) * w, x0), w), min(max((by + bh) * h, y0), h)
    lf_id = det.get_field(LF_ID) if det.has_field(LF_ID) else None
    out: dict[str, Any] = {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "class_name": det.label,
                           "score": det.confidence, "lf_id": lf_id}
    if det.mask is not None:
        full = paste_mask(det.mask, (x0, y0, x1, y1), (w, h))
        out["mask"] = encode_rle(full)
        out["area"] = int(full.sum())
    return out


def to_fo_classifications(tags: list[tuple[str, float]]) -> Any:
    """Image tags ``[(name, score in [0, 1]), ...]`` -> ``fo.Classifications`` (label, confidence)."""
    fo = import_fiftyone()
    return fo.Classifications(
        classifications=[fo.Classification(label=n, confidence=float(s)) for n, s in tags])
