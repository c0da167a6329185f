"""``LABELFLEET_COMPILE``: torch.compile of Swin and SAM's image encoder gives the eager outputs.

The CPU tests use the ``aot_eager`` backend (dynamo traces the real modules, no C++ build): it proves
the compiled path runs the same computation. ``inductor``'s speed is a GPU figure (benchmarks/README.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.reference import mask_iou
from labelfleet.errors import ConfigError
from labelfleet.masks import mask_record_full
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings
from tests.stages_fixtures import synthetic_image, tiny_pipeline
from workers.pipeline import Pipeline
from workers.stages.compiling import check_backend

CONFIG = PipelineConfig(classes=("cat", "dog", "person", "car"), box_threshold=0.3)


def pipeline(backend: str) -> Pipeline:
    return tiny_pipeline(CONFIG, compile_backend=backend)  # type: ignore[no-any-return]


def _masks(labels: Any) -> list[Any]:
    return [] if labels.detections.mask is None else list(labels.detections.mask)


def test_compiled_stages_give_the_eager_labels() -> None:
    images = [synthetic_image(240, 320, seed=1), synthetic_image(240, 320, seed=2)]  # one shape: one compile
    eager = pipeline("off").run(images)
    compiled_pipe = pipeline("aot_eager")
    swin = compiled_pipe.detector.model.backbone[0]  # type: ignore[attr-defined, index]
    encoder = compiled_pipe.segmenter.model.image_encoder  # type: ignore[union-attr, attr-defined]
    assert isinstance(swin, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(encoder, torch._dynamo.eval_frame.OptimizedModule)
    compiled = compiled_pipe.run(images)
    assert sum(len(r.detections) for r in eager) > 0
    for a, b in zip(eager, compiled, strict=True):
        assert list(a.detections.class_name) == list(b.detections.class_name)
        np.testing.assert_allclose(a.detections.xyxy, b.detections.xyxy, atol=1e-2)
        np.testing.assert_allclose(a.detections.confidence, b.detections.confidence, atol=1e-4)
        for ma, mb in zip(_masks(a), _masks(b), strict=True):
            assert mask_iou(mask_record_full(ma), mask_record_full(mb)) >= 0.99


@pytest.mark.parametrize("backend", ["nope", "Inductor", ""])
def test_unknown_backend_is_one_clear_error(backend: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown torch.compile backend {backend!r} in LABELFLEET_COMPILE "
                                          r"\(use off or one of: .*inductor"):
        check_backend(backend)


def test_default_is_eager() -> None:
    assert Settings().compile == "off" and check_backend("off") == "off"
