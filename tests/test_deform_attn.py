"""The fused deformable attention equals groundingdino-py's pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch

from workers.stages.deform_attn import (
    fast_deformable_attention,
    install_fast_deformable_attention,
    multi_scale_deformable_attn,
)

LEVELS_640x480 = [(32, 43), (16, 22), (8, 11), (4, 6)]  # the tiny model's four levels at 256 x 341


def upstream():  # type: ignore[no-untyped-def]
    from groundingdino.models.GroundingDINO import ms_deform_attn

    fn = ms_deform_attn.multi_scale_deformable_attn_pytorch
    return getattr(fn, "upstream", fn)


def inputs(bs: int, levels: list[tuple[int, int]], queries: int, spread: float, heads: int = 8, dim: int = 32,
           points: int = 4, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    n = sum(h * w for h, w in levels)
    value = torch.randn(bs, n, heads, dim, generator=g)
    # locations in [-spread, 1 + spread]: some samples fall past every border, some half outside
    loc = torch.rand(bs, queries, heads, len(levels), points, 2, generator=g) * (1 + 2 * spread) - spread
    weights = torch.rand(bs, queries, heads, len(levels), points, generator=g).softmax(-1)
    return value, torch.tensor(levels), loc, weights


@pytest.mark.parametrize(
    ("bs", "levels", "queries", "spread"),
    [
        (1, LEVELS_640x480, 1840, 0.2),  # encoder: one query per pixel of every level
        (3, LEVELS_640x480, 30, 0.2),  # decoder: a few queries, a batch
        (2, [(1, 1), (2, 1), (1, 3)], 17, 1.0),  # one-pixel levels: nearly every corner out of range
        (1, [(1, 40), (3, 200)], 64, 0.05),  # extreme aspect ratio
        (2, LEVELS_640x480, 100, 50.0),  # wildly out-of-range offsets read zeros
    ],
)
def test_equals_upstream(bs: int, levels: list[tuple[int, int]], queries: int, spread: float) -> None:
    value, shapes, loc, weights = inputs(bs, levels, queries, spread)
    ref = upstream()(value, shapes, loc, weights)
    ours = multi_scale_deformable_attn(value, shapes, loc, weights)
    assert ours.shape == ref.shape == (bs, queries, value.shape[2] * value.shape[3])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=5e-5)


def test_exact_pixel_centres_and_borders() -> None:
    """Samples on pixel centres return the pixel itself; on the outer edge half of it (zero padding)."""
    value = torch.arange(12, dtype=torch.float32).view(1, 12, 1, 1)  # one 3 x 4 level, D = 1
    shapes = torch.tensor([[3, 4]])
    xs = torch.tensor([0.5, 1.5, 3.5, 0.0, 4.0]) / 4  # centres of columns 0, 1, 3; left and right edges
    loc = torch.stack([xs, torch.full_like(xs, 1.5 / 3)], -1).view(1, 5, 1, 1, 1, 2)  # row 1
    weights = torch.ones(1, 5, 1, 1, 1)
    out = multi_scale_deformable_attn(value, shapes, loc, weights).flatten()
    torch.testing.assert_close(out, torch.tensor([4.0, 5.0, 7.0, 2.0, 3.5]))
    torch.testing.assert_close(out, upstream()(value, shapes, loc, weights).flatten())


def test_dispatch_runs_upstream_outside_the_block() -> None:
    """The model object stays upstream's for anyone else (the demo reference in benchmarks/)."""
    from groundingdino.models.GroundingDINO import ms_deform_attn

    install_fast_deformable_attention()
    install_fast_deformable_attention()  # idempotent: one dispatcher, the upstream kept once
    dispatch = ms_deform_attn.multi_scale_deformable_attn_pytorch
    assert dispatch.upstream.__module__ == ms_deform_attn.__name__  # type: ignore[attr-defined]
    args = inputs(1, LEVELS_640x480, 200, 0.2)
    assert torch.equal(dispatch(*args), upstream()(*args))
    with fast_deformable_attention():
        assert torch.equal(dispatch(*args), multi_scale_deformable_attn(*args))
    assert torch.equal(dispatch(*args), upstream()(*args))
