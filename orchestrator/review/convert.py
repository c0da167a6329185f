"""The one converter between labelfleet's label frame and FiftyOne's.

labelfleet (database rows, :class:`labelfleet.db.models.Detection`):
    box ``x0, y0, x1, y1``: float, **absolute pixels, xyxy**, upright image frame,
    x to the right, y down, ``x1``/``y1`` exclusive edges;
    mask: a mask record (full-frame or box-cropped RLE), read only through :mod:`labelfleet.masks`.

FiftyOne (:class:`fiftyone.core.labels.Detection`):
    ``bounding_box``: ``[x, y, w, h]`` **relative** to the frame, in ``[0, 1]``;
    ``mask``: 2D bool array **cropped to the box** (FiftyOne stretches it over the box).

The crop uses the rounded pixel box ``[round(y0):round(y1), round(x0):round(x1)]``
(as ``fiftyone.utils.torch``), widened to at least one pixel and clipped to the frame,
so DB -> FiftyOne -> DB keeps boxes within float precision and masks exactly
(mask pixels outside the box are dropped by design). A mask whose box the reviewer
moved is never stretched: :func:`from_fo_detection` drops it and marks it stale.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from labelfleet.masks import encode_mask_record, mask_record_frame, mask_record_full
from labelfleet.types import BoolArray
from orchestrator.review import ACCEPT_TAG, REJECT_TAG, import_fiftyone

logger = logging.getLogger(__name__)

#: Custom attribute on each FiftyOne label holding the ``detections.id`` it came from.
LF_ID = "lf_id"
#: Custom attribute: the ``review_decisions.id`` a label shows (None for unreviewed predictions).
LF_DECISION = "lf_decision"
#: Custom attribute: the labelling run of the prediction behind a label.
LF_RUN = "lf_run"
#: Custom attribute mirroring the label's review status (read-only for the reviewer).
LF_REVIEW = "lf_review"
#: Label attribute shown in the App's sidebar: ``unreviewed`` or a review status.
REVIEW_STATUS = "review_status"
UNREVIEWED = "unreviewed"

_STATUS_TAG = {"accepted": ACCEPT_TAG, "rejected": REJECT_TAG, "edited": ACCEPT_TAG, "added": ACCEPT_TAG}


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


def to_fo_detection(row: Mapping[str, Any], frame_size: tuple[int, int]) -> Any:
    """One labelfleet detection -> ``fo.Detection``.

    Args:
        row: a label of :func:`labelfleet.db.labels.current_labels` (or detection columns):
            ``x0, y0, x1, y1`` (absolute px xyxy floats), ``class_name``, ``score`` (None for
            labels a person drew), optional ``mask`` (a mask record of an ``[H, W]`` frame),
            ``prediction_id`` / ``id``, ``decision_id``, ``run_id``, ``phrase``, ``tag``,
            ``review_status``.
        frame_size: ``(width, height)`` of the upright image in pixels (this order).

    Returns:
        ``fo.Detection`` with relative ``[x, y, w, h]`` box, ``label=class_name``,
        ``confidence=score``, a box-cropped bool ``mask``, attributes ``lf_id`` (prediction id),
        ``lf_decision``, ``lf_run``, ``review_status`` (``unreviewed`` or the status) and the label
        tag ``accept``/``reject`` mirroring a stored decision.
    """
    fo = import_fiftyone()
    w, h = _check_frame(frame_size)
    xyxy = (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
    if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
        raise ValueError(f"box must be xyxy with x1 >= x0 and y1 >= y0, but got {xyxy}")
    score = row.get("score")
    det = fo.Detection(label=str(row["class_name"]), confidence=None if score is None else float(score),
                       bounding_box=[xyxy[0] / w, xyxy[1] / h,
                                     (xyxy[2] - xyxy[0]) / w, (xyxy[3] - xyxy[1]) / h])
    rec = row.get("mask")
    if rec:
        if mask_record_frame(rec) != (h, w):
            raise ValueError(f"mask frame {list(mask_record_frame(rec))} does not match the frame (H, W) = {[h, w]}")
        det.mask = crop_mask(mask_record_full(rec), xyxy)
    if row.get("id") is not None:
        det[LF_ID] = int(row["id"])
    for key, attr in (("prediction_id", LF_ID), ("decision_id", LF_DECISION), ("run_id", LF_RUN)):
        if row.get(key) is not None:
            det[attr] = int(row[key])
    for key in ("phrase", "tag"):
        if row.get(key) is not None:
            det[key] = row[key]
    status = row.get("review_status")
    det[REVIEW_STATUS] = status or UNREVIEWED
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
        ``score`` (None when the label has no confidence), ``lf_id`` / ``lf_decision`` (None for
        labels drawn in the App), and when the label has a mask: ``mask`` (a box-cropped mask
        record) and ``area``, or, if the box no longer matches the mask's shape (the reviewer
        moved it), ``mask`` None and ``mask_stale`` True (never stretched).
    """
    w, h = _check_frame(frame_size)
    if det.bounding_box is None or len(det.bounding_box) != 4:
        raise ValueError(f"bounding_box must be [x, y, w, h] relative, but got {det.bounding_box}")
    bx, by, bw, bh = (float(v) for v in det.bounding_box)
    x0, y0 = min(max(bx * w, 0.0), w), min(max(by * h, 0.0), h)
    x1, y1 = min(max((bx + bw) * w, x0), w), min(max((by + bh) * h, y0), h)
    out: dict[str, Any] = {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "class_name": det.label,
                           "score": det.confidence, "lf_id": _attr(det, LF_ID), "lf_decision": _attr(det, LF_DECISION),
                           "mask_stale": False}
    if det.mask is not None:
        x_lo, x_hi = pixel_span(x0, x1, w)
        y_lo, y_hi = pixel_span(y0, y1, h)
        m = np.asarray(det.mask)
        m = m > (0.5 if m.dtype.kind == "f" else 0)
        if m.ndim == 2 and m.shape == (y_hi - y_lo, x_hi - x_lo):
            out["mask"] = encode_mask_record(m, x_lo, y_lo, (h, w))
            out["area"] = int(m.sum())
        else:
            out["mask"], out["area"], out["mask_stale"] = None, None, True
    return out


def _attr(det: Any, name: str) -> int | None:
    value = det.get_field(name) if det.has_field(name) else None
    return int(value) if value is not None else None


def to_fo_classifications(tags: list[tuple[str, float]]) -> Any:
    """Image tags ``[(name, score in [0, 1]), ...]`` -> ``fo.Classifications`` (label, confidence)."""
    fo = import_fiftyone()
    return fo.Classifications(
        classifications=[fo.Classification(label=n, confidence=float(s)) for n, s in tags])
