"""Test-only fault injection, read from ``LABELFLEET_TEST_FAULT`` (never set in production).

Each fault wraps :meth:`Pipeline.run_front` (the start of every batch, also inside
:meth:`Pipeline.run`) and raises the *real* exception type a
GPU node would raise, so the worker's error handling is exercised as is:

* ``oom_over:N`` -- ``torch.OutOfMemoryError`` for batches of more than N images;
* ``device_fault`` -- ``RuntimeError("CUDA error: an illegal memory access was encountered")``;
* ``slow:S`` -- sleep S seconds before each batch (a slow but alive node).

Several faults are separated by commas.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from labelfleet.types import RGBImage
from workers.pipeline import Front, Pipeline

logger = logging.getLogger(__name__)
ENV = "LABELFLEET_TEST_FAULT"


class _FaultyPipeline(Pipeline):
    faults: list[tuple[str, float]]

    def run_front(self, images: Sequence[RGBImage]) -> Front:
        for name, arg in self.faults:
            if name == "slow":
                time.sleep(arg)
            elif name == "oom_over" and len(images) > arg:
                import torch

                raise torch.OutOfMemoryError(f"CUDA out of memory: injected by {ENV} for a batch of {len(images)}")
            elif name == "device_fault":
                raise RuntimeError(f"CUDA error: an illegal memory access was encountered (injected by {ENV})")
        return super().run_front(images)


def parse(spec: str) -> list[tuple[str, float]]:
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, arg = part.partition(":")
        if name not in ("slow", "oom_over", "device_fault"):
            raise ValueError(f"{ENV}: unknown fault {name!r}")
        out.append((name, float(arg or 0)))
    return out


def inject(pipeline: Pipeline, spec: str | None = None) -> Pipeline:
    """``pipeline`` itself, or a copy raising the faults of ``spec`` (default: ``$LABELFLEET_TEST_FAULT``)."""
    spec = os.environ.get(ENV) if spec is None else spec
    if not spec:
        return pipeline
    faulty = _FaultyPipeline.__new__(_FaultyPipeline)
    faulty.__dict__.update(pipeline.__dict__)
    faulty.faults = parse(spec)
    logger.warning("%s=%s: faults injected into the pipeline (tests only)", ENV, spec)
    return faulty
