"""GroundingDINO's multi-scale deformable attention as one gather-and-sum (``embedding_bag``).

groundingdino-py 0.4.0 ships only the pure-PyTorch reference
(``ms_deform_attn.multi_scale_deformable_attn_pytorch``): one ``grid_sample``
per feature level, a ``stack`` of the ``(B*heads, D, queries, levels, points)``
samples, then a broadcast multiply and a sum. On CPU that is 65% of the tiny
model's detection time. :func:`multi_scale_deformable_attn` computes the same
bilinear samples (``align_corners=False``, zero padding) as explicit corner
indices and weights, folds the attention weights into the corner weights, and
lets ``F.embedding_bag(mode="sum", per_sample_weights=...)`` gather and sum
the ``D``-wide value rows in one fused call: no per-level samples tensor and
no stack. Equal to the reference up to float summation order (max abs diff
~1e-5 on unit-scale values; ``tests/test_deform_attn.py``).

:func:`install_fast_deformable_attention` swaps the module global that
``MultiScaleDeformableAttention.forward`` calls for a dispatcher: inside
:func:`fast_deformable_attention` (what the detector wraps its forward in) it
runs this version, anywhere else the upstream one, so the same model object
still runs the upstream code for anyone else (the reference loop in
``benchmarks/``). Always float32 (the issue's "deformable attention kept in
fp32"): inputs under autocast are cast up.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("labelfleet_fast_msda", default=False)


def _axis(coord: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear corners along one axis: ``(i0 int32, w0, w1)`` with out-of-range corners weighted 0.

    ``coord`` is the normalised sampling location in ``[0, 1]`` (any float),
    ``size`` the level's length (int32, broadcastable). The pixel coordinate is
    computed as ``grid_sample``'s CPU kernel does (``(g + 1) * size / 2 - 0.5``
    with ``g = 2 * coord - 1``), clamped to ``[-2, size + 1]`` (far-out samples
    stay fully outside, so they read zeros as with ``padding_mode="zeros"``).
    """
    sizef = size.to(coord.dtype)
    pix = ((2 * coord - 1) + 1) * (sizef / 2) - 0.5
    pix = pix.clamp_(min=-2).minimum(sizef + 1)
    lo = pix.floor()
    frac = pix.sub_(lo)
    i0 = lo.to(torch.int32)
    w0 = (1 - frac).mul_((i0 >= 0) & (i0 < size))
    w1 = frac.mul_((i0 >= -1) & (i0 < size - 1))
    return i0, w0, w1


def multi_scale_deformable_attn(
    value: torch.Tensor,
    value_spatial_shapes: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Same contract as groundingdino's ``multi_scale_deformable_attn_pytorch``.

    Args:
        value: ``(B, N, heads, D)`` float, the levels' pixels concatenated
            row-major (``N = sum(H_l * W_l)``).
        value_spatial_shapes: ``(L, 2)`` int ``(H_l, W_l)`` per level.
        sampling_locations: ``(B, Q, heads, L, P, 2)`` float, normalised
            ``(x, y)`` in ``[0, 1]`` of each level (may fall outside: zeros).
        attention_weights: ``(B, Q, heads, L, P)`` float.

    Returns:
        ``(B, Q, heads * D)`` float32.
    """
    value, loc, attw = value.float(), sampling_locations.float(), attention_weights.float()
    bs, n, heads, dim = value.shape
    _, q, _, levels, points, _ = loc.shape
    loc = loc.permute(0, 2, 1, 3, 4, 5)  # (B, heads, Q, L, P, 2): one bag per (batch, head, query)
    attw = attw.permute(0, 2, 1, 3, 4)
    shapes = value_spatial_shapes.to(device=loc.device, dtype=torch.int32)
    h = shapes[:, 0].view(1, 1, 1, levels, 1)
    w = shapes[:, 1].view(1, 1, 1, levels, 1)
    xi, wx0, wx1 = _axis(loc[..., 0], w)
    yi, wy0, wy1 = _axis(loc[..., 1], h)
    top, bottom = wy0.mul_(attw), wy1.mul_(attw)
    weights = torch.stack((top * wx0, top * wx1, bottom * wx0, bottom * wx1), -1)
    start = torch.zeros(levels, dtype=torch.int32, device=loc.device)
    start[1:] = (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]
    bag = torch.arange(bs * heads, dtype=torch.int32, device=loc.device).mul_(n).view(bs, heads, 1, 1, 1)
    base = bag + start.view(1, 1, 1, levels, 1)
    x0, x1 = xi.clamp(min=0).minimum(w - 1), (xi + 1).clamp_(min=0).minimum(w - 1)
    r0 = yi.clamp(min=0).minimum(h - 1).mul_(w).add_(base)
    r1 = (yi + 1).clamp_(min=0).minimum(h - 1).mul_(w).add_(base)
    index = torch.stack((r0 + x0, r0 + x1, r1 + x0, r1 + x1), -1)
    table = value.permute(0, 2, 1, 3).reshape(bs * heads * n, dim)  # row (b, head, pixel) -> D values
    k = levels * points * 4
    out = F.embedding_bag(index.view(-1, k), table, mode="sum", per_sample_weights=weights.view(-1, k))
    return out.view(bs, heads, q, dim).permute(0, 2, 1, 3).reshape(bs, q, heads * dim)


@contextlib.contextmanager
def fast_deformable_attention() -> Iterator[None]:
    """Inside this block, GroundingDINO's deformable attention runs :func:`multi_scale_deformable_attn`."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def install_fast_deformable_attention() -> None:
    """Point groundingdino's ``multi_scale_deformable_attn_pytorch`` at a dispatcher (idempotent)."""
    from groundingdino.models.GroundingDINO import ms_deform_attn

    current = ms_deform_attn.multi_scale_deformable_attn_pytorch
    if getattr(current, "_labelfleet_dispatch", False):
        return
    upstream: Callable[..., torch.Tensor] = current

    def dispatch(*args: Any, **kwargs: Any) -> torch.Tensor:
        return (multi_scale_deformable_attn if _ACTIVE.get() else upstream)(*args, **kwargs)

    dispatch._labelfleet_dispatch = True  # type: ignore[attr-defined]
    dispatch.upstream = upstream  # type: ignore[attr-defined]
    ms_deform_attn.multi_scale_deformable_attn_pytorch = dispatch
