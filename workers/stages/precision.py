"""Mixed precision for the heavy, numerically tolerant parts of the models (setting ``LABELFLEET_PRECISION``).

``fp32`` (the default) runs everything in float32, exactly as the upstream demos.
``bf16``/``fp16`` run *only* the Swin backbone and BERT of GroundingDINO and the
image encoder of SAM under ``torch.autocast``; their outputs are cast back to
float32, so GroundingDINO's deformable attention, fusion layers, heads and SAM's
prompt decoder and mask upscaling all stay float32.

GroundingDINO's submodules are wrapped once (:func:`install_autocast`); the
wrappers only switch autocast on inside :func:`use_precision`, so the same
model object runs plain float32 for anyone else (the reference loop in
``benchmarks/``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_ACTIVE: contextvars.ContextVar[tuple[str, torch.dtype] | None] = contextvars.ContextVar(
    "labelfleet_amp", default=None
)


def amp_dtype(precision: str) -> torch.dtype | None:
    """``"fp32"`` -> None, ``"bf16"`` -> ``torch.bfloat16``, ``"fp16"`` -> ``torch.float16``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op for ``dtype=None`` (fp32)."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@contextlib.contextmanager
def use_precision(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """Inside this block, modules wrapped by :func:`install_autocast` run under autocast ``dtype``."""
    token = _ACTIVE.set(None if dtype is None else (device.type, dtype))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def to_float(obj: Any) -> Any:
    """Cast floating tensors inside ``obj`` (tensor, list, tuple, dict, NestedTensor-like) to float32."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if isinstance(obj, dict):  # includes transformers' ModelOutput (an OrderedDict)
        for key in list(obj.keys()):
            obj[key] = to_float(obj[key])
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_float(v) for v in obj) if isinstance(obj, list) else tuple(to_float(v) for v in obj)
    if hasattr(obj, "tensors") and hasattr(obj, "mask"):  # groundingdino NestedTensor
        obj.tensors = to_float(obj.tensors)
    return obj


def install_autocast(module: torch.nn.Module) -> None:
    """Wrap ``module.forward``: autocast while :func:`use_precision` is active, float32 outputs; idempotent."""
    if getattr(module, "_labelfleet_autocast", False):
        return
    original = module.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        active = _ACTIVE.get()
        if active is None:
            return original(*args, **kwargs)
        with torch.autocast(device_type=active[0], dtype=active[1]):
            out = original(*args, **kwargs)
        return to_float(out)

    module.forward = forward  # type: ignore[method-assign]
    setattr(module, "_labelfleet_autocast", True)  # noqa: B010 - nn.Module typing rejects plain attributes
