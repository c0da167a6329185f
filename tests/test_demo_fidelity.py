"""labelfleet vs a loop restated from Grounded-SAM's demo (benchmarks/reference.py), same tiny random weights.

Labels from random weights are meaningless; what is tested is that both chains give the same output:
boxes within 1 px, the same set kept by NMS, mask IoU >= 0.99.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from benchmarks.reference import demo_label, mask_iou, match_boxes, stored_reference
from labelfleet.captions import build_caption
from labelfleet.masks import mask_record_full
from labelfleet.pipeline_config import PipelineConfig
from tests.stages_fixtures import synthetic_image, tiny_gdino_files, tiny_sam_files
from workers.pipeline import Pipeline
from workers.stages.registry import build_detector, build_segmenter

CLASSES = ["cat", "dog", "person", "car"]
CONFIG = PipelineConfig(classes=tuple(CLASSES), box_threshold=0.3, text_threshold=0.25, nms_iou=0.5)


@functools.cache
def pipeline() -> Pipeline:
    g, s = tiny_gdino_files(), tiny_sam_files()
    det = build_detector("gdino_tiny", checkpoint=g["checkpoint"], text_encoder_dir=g["text_encoder_dir"],
                         device="cpu", box_threshold=CONFIG.box_threshold, text_threshold=CONFIG.text_threshold,
                         nms_iou=CONFIG.nms_iou, batch_size=4)
    seg = build_segmenter("sam_tiny", checkpoint=s["checkpoint"], device="cpu", encoder_batch_size=4)
    return Pipeline(CONFIG, det, seg)


IMAGES = [(240, 320, 0), (320, 240, 1), (200, 300, 2), (480, 640, 3)]


def test_pipeline_equals_demo_reference() -> None:
    pipe = pipeline()
    images = [synthetic_image(h, w, seed) for h, w, seed in IMAGES]
    ours = pipe.run(images)  # one batch: GroundingDINO and SAM's encoder batched across images
    det, seg = pipe.detector, pipe.segmenter
    assert seg is not None
    unclipped = 0
    for image, labels in zip(images, ours, strict=True):
        h, w = image.shape[:2]
        ref = demo_label(det.model, seg.model, image, build_caption(CLASSES), box_threshold=CONFIG.box_threshold,
                         text_threshold=CONFIG.text_threshold, iou_threshold=CONFIG.nms_iou,
                         size=det.image_size, max_size=det.max_size)
        assert ref.masks is not None
        unclipped += int(np.any((ref.xyxy < 0) | (ref.xyxy[:, [2, 3]] > [w, h]).any(axis=1, keepdims=True)))
        ref_xyxy, ref_idx = stored_reference(ref, w, h)
        d = labels.detections
        assert len(d) == len(ref_xyxy), (len(d), len(ref_xyxy))  # the same kept set, nothing more
        matches = match_boxes(d.xyxy, ref_xyxy, tol=1.0)
        assert None not in matches, matches
        np.testing.assert_allclose(d.confidence[matches], ref.scores[ref_idx], atol=1e-4)
        assert d.mask is not None
        for k, j in enumerate(matches):
            assert j is not None
            assert mask_iou(mask_record_full(d.mask[j]), ref.masks[ref_idx[k]]) >= 0.99
    assert unclipped > 0  # some demo boxes extend past the image, so unclipped NMS/SAM prompts were exercised


@pytest.mark.parametrize("nms_iou", [0.3, 0.8])
def test_nms_on_unclipped_boxes_like_the_demo(nms_iou: float) -> None:
    """The kept set is the demo's at other NMS thresholds too (boxes only)."""
    det = pipeline().detector
    image = synthetic_image(240, 320, 5)
    det_t = type(det)(det.model, device="cpu", box_threshold=0.2, text_threshold=0.25, nms_iou=nms_iou,
                      image_size=det.image_size, max_size=det.max_size)
    ours = det_t.detect([image], [CLASSES])[0]
    from benchmarks.reference import demo_boxes

    ref = demo_boxes(det.model, image, build_caption(CLASSES), box_threshold=0.2, text_threshold=0.25,
                     iou_threshold=nms_iou, size=det.image_size, max_size=det.max_size)
    assert len(ours) == len(ref.xyxy) > 0
    np.testing.assert_allclose(ours.xyxy, ref.xyxy, atol=1.0)  # unclipped, in the same score order


@pytest.mark.parametrize("hw", [(12, 20), (5, 300), (240, 320)])
def test_stored_labels_lie_in_the_image_frame(hw: tuple[int, int]) -> None:
    """Boxes are clipped when stored; mask records (also of images padded for the models) are in the image frame."""
    from workers.processing import labels_to_rows

    h, w = hw
    pipe = pipeline()
    det = pipe.detector
    low = Pipeline(PipelineConfig(classes=tuple(CLASSES), box_threshold=0.05, nms_iou=0.9),
                   type(det)(det.model, device="cpu", box_threshold=0.05, nms_iou=0.9, image_size=det.image_size,
                             max_size=det.max_size), pipe.segmenter)
    labels = low.run([synthetic_image(h, w, 11)])[0]
    d = labels.detections
    assert len(d) > 0 and d.mask is not None
    assert np.all(d.xyxy >= 0) and np.all(d.xyxy[:, [0, 2]] <= w) and np.all(d.xyxy[:, [1, 3]] <= h)
    rows = labels_to_rows(labels).detections
    for rec, row in zip(d.mask, rows, strict=True):
        full = mask_record_full(rec)
        assert full.shape == (h, w) and row["mask"] is rec and row["area"] == int(full.sum())
