"""Shared helpers for the model-stage tests (import explicitly; not a conftest).

Tiny model files are written once per test process into a temp dir and the
built stages are cached, so the stage tests stay fast on 2 CPU cores.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a wrong tokenizer path fails at once, not after ~46 s

import torch

torch.set_num_threads(1)


@functools.cache
def files_dir() -> Path:
    """A per-process temp dir for tiny model files (removed at exit)."""
    path = Path(tempfile.mkdtemp(prefix="labelfleet-tiny-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.cache
def tiny_gdino_files() -> dict[str, Path]:
    from workers.stages.tiny import make_tiny_gdino_files

    return make_tiny_gdino_files(files_dir() / "gdino")


@functools.cache
def tiny_sam_files() -> dict[str, Path]:
    from workers.stages.tiny import make_tiny_sam_files

    return make_tiny_sam_files(files_dir() / "sam")


def tiny_pipeline(config: Any, box_threshold: float = 0.3, **stage_kw: str) -> Any:
    """A :class:`workers.pipeline.Pipeline` of the tiny GroundingDINO and SAM; ``stage_kw`` (``precision``,
    ``compile_backend``) goes to both builders."""
    from workers.pipeline import Pipeline
    from workers.stages.registry import build_detector, build_segmenter

    g, s = tiny_gdino_files(), tiny_sam_files()
    det = build_detector("gdino_tiny", checkpoint=g["checkpoint"], text_encoder_dir=g["text_encoder_dir"],
                         device="cpu", box_threshold=box_threshold, **stage_kw)  # type: ignore[arg-type]
    seg = build_segmenter("sam_tiny", checkpoint=s["checkpoint"], device="cpu", **stage_kw)  # type: ignore[arg-type]
    return Pipeline(config, det, seg)


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB: noisy background with a few solid rectangles."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    for _ in range(3):
        y0, x0 = rng.integers(0, max(1, height // 2)), rng.integers(0, max(1, width // 2))
        y1, x1 = y0 + max(1, height // 3), x0 + max(1, width // 3)
        img[y0:y1, x0:x1] = rng.integers(100, 256, 3, dtype=np.uint8)
    return img


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes ``(n, 4)`` x ``(m, 4)`` → ``(n, m)``."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)
