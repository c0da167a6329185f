"""Class-agnostic NMS and degenerate-box filtering."""

from __future__ import annotations

import numpy as np
import pytest

from labelfleet.types import Detections
from tests.stages_fixtures import box_iou
from workers.stages.postprocess import drop_degenerate, nms_detections, nms_indices

BOXES = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)


@pytest.mark.parametrize(
    ("scores", "iou", "kept"),
    [
        ([0.9, 0.8, 0.7, 0.1], 0.5, [0, 2]),
        ([0.8, 0.9, 0.7, 0.1], 0.5, [1, 2]),
        ([0.1, 0.2, 0.3, 0.95], 0.5, [3, 2]),
        ([0.9, 0.8, 0.7, 0.1], 0.99, [0, 1, 2, 3]),  # nothing overlaps that much
        ([0.9, 0.8, 0.7, 0.1], 0.0, [0, 2]),
    ],
)
def test_nms_indices(scores: list[float], iou: float, kept: list[int]) -> None:
    out = nms_indices(BOXES, np.asarray(scores), iou)
    assert out.dtype == np.int64
    assert out.tolist() == kept


def test_nms_empty() -> None:
    assert nms_indices(np.zeros((0, 4)), np.zeros((0,)), 0.5).shape == (0,)
    assert len(nms_detections(Detections.empty(), 0.5)) == 0


@pytest.mark.parametrize(
    ("boxes", "scores", "iou", "message"),
    [
        (np.zeros((2, 3)), np.zeros(2), 0.5, "xyxy must have shape (n, 4), got (2, 3)"),
        (np.zeros((2, 4)), np.zeros(3), 0.5, "scores must have shape (2,), got (3,)"),
        (np.zeros((2, 4)), np.zeros(2), 1.5, "iou_threshold must be in [0, 1], got 1.5"),
    ],
)
def test_nms_rejects(boxes: np.ndarray, scores: np.ndarray, iou: float, message: str) -> None:
    with pytest.raises(ValueError) as info:
        nms_indices(boxes, scores, iou)
    assert str(info.value) == message


def test_nms_detections_keeps_columns_and_is_class_agnostic() -> None:
    dets = Detections(
        xyxy=BOXES,
        confidence=np.array([0.9, 0.8, 0.7, 0.1]),
        class_name=np.array(["cat", "dog", "cat", "cow"], dtype=object),
        data={"phrase": np.array(["cat", "dog", "cat", "cow"], dtype=object)},
    )
    out = nms_detections(dets, 0.5)
    assert out.class_name.tolist() == ["cat", "cat"]
    assert out.data["phrase"].tolist() == ["cat", "cat"]
    assert np.all(np.diff(out.confidence) <= 0)


def test_nms_random_boxes_leave_no_overlap_above_threshold() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (200, 2))], axis=1).astype(np.float32)
    keep = nms_indices(boxes, rng.uniform(size=200), 0.5)
    iou = box_iou(boxes[keep], boxes[keep])
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.5 + 1e-6


def test_drop_degenerate() -> None:
    dets = Detections(
        xyxy=np.array([[0, 0, 5, 5], [3, 3, 3, 9], [1, 2, 4, 2]], np.float32),
        confidence=np.array([0.5, 0.6, 0.7], np.float32),
        class_name=np.array(["a", "b", "c"], dtype=object),
    )
    assert drop_degenerate(dets).class_name.tolist() == ["a"]
