"""Swin Transformer image encoder, inference only, laid out like RAM's ``visual_encoder``.

Clean-room implementation of the Swin-L encoder used by RAM / RAM++ (see ``shared/specs/ram.md`` section 2).
Parameter names match the official checkpoints (``patch_embed.proj``, ``layers.{i}.blocks.{j}.attn.qkv``,
...). The two index buffers (``relative_position_index`` and ``attn_mask``) are *non-persistent*: they are
derived from the configuration, not stored in the state dict (the official loader drops them as well).

Shapes: the encoder maps ``(B, 3, S, S)`` float32 images to ``(B, 1 + (S/32)**2, C_last)`` tokens, where token
0 is the mean of the others (``S = 384`` and ``C_last = 1536`` for Swin-L).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: Value the official Swin code puts in the shifted-window mask between unrelated regions.
_MASK_VALUE = -100.0


@dataclass(frozen=True)
class SwinConfig:
    """Hyper-parameters of the Swin encoder (defaults: Swin-L at 384 px, ``config_swinL_384.json``)."""

    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0

    @property
    def num_features(self) -> int:
        """Channel width of the last stage (``vision_width``)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


def relative_position_index(window: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(window**2, window**2)`` int64 index into the ``((2*window-1)**2, heads)`` bias table."""
    coords = torch.stack(
        torch.meshgrid(
            torch.arange(window, device=device), torch.arange(window, device=device), indexing="ij"
        )
    ).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, window * window, C)``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window * window, C)`` -> ``(B, H, W, C)``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(resolution: int, window: int, shift: int, device: torch.device | str | None = None):
    """``(nW, window**2, window**2)`` float32 mask: 0 within a region, -100 across cyclic-shift regions."""
    region = torch.zeros((1, resolution, resolution, 1), device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            region[:, rows, cols, :] = label
            label += 1
    ids = window_partition(region, window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, _MASK_VALUE)


class DerivedBuffers:
    """Mixin for modules whose non-persistent buffers are computed from the configuration."""

    def reset_buffers(self) -> None:
        """Recompute the buffers in place (after ``to_empty`` or a meta-device build)."""
        raise NotImplementedError


class WindowAttention(nn.Module, DerivedBuffers):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    Input and output: ``(B * nW, N, C)`` with ``N = window**2``.
    """

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.relative_position_index: torch.Tensor
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def reset_buffers(self) -> None:
        """Recompute the derived index buffer (after ``to_empty`` or a meta-device build)."""
        self.relative_position_index = relative_position_index(
            self.window, self.relative_position_index.device
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x``: ``(B * nW, N, C)`` windows, image-major; ``mask``: ``(nW, N, N)`` or None."""
        bw, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(bw, n, 3, h, c // h).permute(2, 0, 3, 1, 4)  # each (B * nW, h, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, h).permute(2, 0, 1)  # (h, N, N)
        # The windows of an image are folded into the head axis: the (nW, h, N, N) bias+mask broadcasts on B.
        nw = 1 if mask is None else mask.shape[0]
        attn_mask = bias.unsqueeze(0) if mask is None else (bias.unsqueeze(0) + mask.unsqueeze(1))
        shape = (bw // nw, nw * h, n, c // h)
        out = F.scaled_dot_product_attention(
            q.reshape(shape), k.reshape(shape), v.reshape(shape),
            attn_mask=attn_mask.reshape(1, nw * h, n, n).to(q.dtype), scale=self.scale,
        )  # fmt: skip
        return self.proj(out.view(bw, h, n, c // h).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    """``fc1 -> exact GELU -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module, DerivedBuffers):
    """Pre-norm Swin block on a ``resolution x resolution`` grid; input/output ``(B, L, C)``."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        if resolution <= window:  # the whole grid is one window: no shift (as in the official code)
            window, shift = resolution, 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.attn_mask: torch.Tensor | None
        self.register_buffer("attn_mask", self._make_mask(None), persistent=False)

    def _make_mask(self, device: torch.device | str | None) -> torch.Tensor | None:
        if self.shift == 0:
            return None
        return shifted_window_mask(self.resolution, self.window, self.shift, device)

    def reset_buffers(self) -> None:
        """Recompute the derived shifted-window mask."""
        if self.attn_mask is not None:
            self.attn_mask = self._make_mask(self.attn_mask.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, c = x.shape
        r, win, s = self.resolution, self.window, self.shift
        if length != r * r:
            raise ValueError(f"expected {r * r} tokens, got {length}")
        h = self.norm1(x).view(b, r, r, c)
        if s:
            h = torch.roll(h, shifts=(-s, -s), dims=(1, 2))
        h = window_merge(self.attn(window_partition(h, win), self.attn_mask), win, r, r)
        if s:
            h = torch.roll(h, shifts=(s, s), dims=(1, 2))
        x = x + h.reshape(b, length, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x2 token merge: ``(B, R*R, C)`` -> ``(B, R/2*R/2, 2C)``."""

    def __init__(self, resolution: int, dim: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        r = self.resolution
        x = x.view(b, r, r, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """``depth`` blocks (odd ones shifted by ``window // 2``), then an optional :class:`PatchMerging`."""

    def __init__(self, cfg: SwinConfig, index: int, resolution: int) -> None:
        super().__init__()
        dim = cfg.embed_dim * 2**index
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                resolution,
                cfg.num_heads[index],
                cfg.window_size,
                0 if i % 2 == 0 else cfg.window_size // 2,
                cfg.mlp_ratio,
            )
            for i in range(cfg.depths[index])
        )
        last = index == len(cfg.depths) - 1
        self.downsample = None if last else PatchMerging(resolution, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv + LayerNorm: ``(B, 3, S, S)`` -> ``(B, (S/patch)**2, C)``."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.image_size = cfg.image_size
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} input, got {tuple(x.shape[-2:])}")
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinEncoder(nn.Module):
    """Swin encoder, ``cat([mean token, tokens])``: ``(B, 3, S, S)`` -> ``(B, 1 + L, C_last)`` float32."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        _check_swin_config(cfg)
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        res = cfg.image_size // cfg.patch_size
        self.layers = nn.ModuleList(SwinStage(cfg, i, res // 2**i) for i in range(len(cfg.depths)))
        self.norm = nn.LayerNorm(cfg.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)


def _check_swin_config(cfg: SwinConfig) -> None:
    stages: Sequence[int] = cfg.depths
    if len(cfg.num_heads) != len(stages):
        raise ValueError("depths and num_heads must have the same length")
    res = cfg.image_size // cfg.patch_size
    if cfg.image_size % cfg.patch_size or res % 2 ** (len(stages) - 1):
        raise ValueError(f"image_size {cfg.image_size} does not fit patch size and {len(stages)} stages")
    for i in range(len(stages)):
        r = res // 2**i
        if r > cfg.window_size and r % cfg.window_size:
            raise ValueError(f"stage {i} resolution {r} is not a multiple of window {cfg.window_size}")
