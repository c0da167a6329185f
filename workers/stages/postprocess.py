"""Box post-processing shared by the detector stages (NMS, degenerate-box filtering)."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torchvision

from labelfleet.types import Detections

logger = logging.getLogger(__name__)


def nms_indices(xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Class-agnostic NMS.

    Args:
        xyxy: ``(n, 4)`` float boxes, absolute pixel ``[x0, y0, x1, y1]``.
        scores: ``(n,)`` float scores.
        iou_threshold: boxes overlapping a higher-scoring kept box with
            IoU **greater than** this are dropped (``torchvision.ops.nms``).

    Returns:
        ``(k,)`` int64 indexes of the kept boxes, by decreasing score
        (ties keep the earlier box first, as ``torchvision.ops.nms`` does on CPU).

    Raises:
        ValueError: on bad shapes or a threshold outside [0, 1].
    """
    boxes = np.asarray(xyxy, dtype=np.float32)
    sc = np.asarray(scores, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"xyxy must have shape (n, 4), got {boxes.shape}")
    if sc.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},), got {sc.shape}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    keep = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(sc), float(iou_threshold))
    return keep.numpy().astype(np.int64)


def nms_detections(dets: Detections, iou_threshold: float) -> Detections:
    """Class-agnostic NMS over a :class:`Detections`; result ordered by decreasing confidence."""
    if len(dets) == 0:
        return dets
    return dets[nms_indices(dets.xyxy, dets.confidence, iou_threshold)]


def drop_degenerate(dets: Detections) -> Detections:
    """Drop boxes with zero width or height (e.g. boxes that lay only in padding before clipping)."""
    if len(dets) == 0:
        return dets
    keep = (dets.xyxy[:, 2] > dets.xyxy[:, 0]) & (dets.xyxy[:, 3] > dets.xyxy[:, 1])
    if not keep.all():
        logger.debug("dropped %d zero-area boxes", int((~keep).sum()))
    return dets[np.flatnonzero(keep)]
