"""Reduced precision (LABELFLEET_PRECISION=bf16) covers Swin, BERT and SAM's image encoder only.

Measured on the tiny random models on CPU: outputs stay within the issue's tolerances loosely
(boxes within 1 px, mask IoU >= 0.98); the default stays fp32, which gives the demo's outputs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from benchmarks.reference import mask_iou, match_boxes
from labelfleet.masks import mask_record_full
from labelfleet.pipeline_config import PipelineConfig
from tests.stages_fixtures import synthetic_image, tiny_pipeline
from workers.pipeline import Pipeline

CONFIG = PipelineConfig(classes=("cat", "dog", "person", "car"), box_threshold=0.3)


@functools.cache
def pipeline(precision: str) -> Pipeline:
    return tiny_pipeline(CONFIG, precision=precision)  # type: ignore[no-any-return]


def _dtypes(pipe: Pipeline, image: np.ndarray) -> dict[str, set[torch.dtype]]:
    """dtypes seen by a Swin linear (output), the deformable attention (value input), SAM encoder linear (output)."""
    from groundingdino.models.GroundingDINO.ms_deform_attn import MultiScaleDeformableAttention

    seen: dict[str, set[torch.dtype]] = {"swin": set(), "deform": set(), "sam_encoder": set()}
    model = pipe.detector.model
    swin = next(m for m in model.backbone[0].modules() if isinstance(m, torch.nn.Linear))
    deform = next(m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention))
    assert pipe.segmenter is not None
    hooks = [
        swin.register_forward_hook(lambda m, a, out: seen["swin"].add(out.dtype)),
        deform.register_forward_pre_hook(
            lambda m, a, kw: seen["deform"].add(kw.get("value", a[1] if len(a) > 1 else None).dtype),
            with_kwargs=True),
        pipe.segmenter.model.image_encoder.blocks[0].attn.qkv.register_forward_hook(
            lambda m, a, out: seen["sam_encoder"].add(out.dtype)),
    ]
    try:
        pipe.run([image])
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_bf16_runs_only_the_backbones_in_bf16() -> None:
    image = synthetic_image(240, 320, 0)
    assert _dtypes(pipeline("bf16"), image) == {"swin": {torch.bfloat16}, "deform": {torch.float32},
                                                "sam_encoder": {torch.bfloat16}}
    assert _dtypes(pipeline("fp32"), image) == {"swin": {torch.float32}, "deform": {torch.float32},
                                                "sam_encoder": {torch.float32}}


def test_bf16_outputs_stay_within_tolerance_of_fp32() -> None:
    images = [synthetic_image(240, 320, i) for i in range(4)]
    ref, low = pipeline("fp32").run(images), pipeline("bf16").run(images)
    total = hit = 0
    for a, b in zip(ref, low, strict=True):
        assert a.detections.mask is not None and b.detections.mask is not None
        found = match_boxes(b.detections.xyxy, a.detections.xyxy, tol=1.0)
        total += len(found)
        hit += sum(k is not None for k in found)
        for i, k in enumerate(found):
            if k is not None:
                iou = mask_iou(mask_record_full(a.detections.mask[i]), mask_record_full(b.detections.mask[k]))
                assert iou >= 0.98, iou
    assert total > 0 and hit / total >= 0.95, (hit, total)
