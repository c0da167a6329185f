"""RAM's image-tag recognition decoder (``tagging_head``), inference only.

A Query2Label-style stack of BERT layers whose self-attention and embeddings were deleted (see
``shared/specs/ram.md`` section 3): each layer is cross-attention from the label queries to the image tokens,
then a feed-forward block, both post-norm (LayerNorm eps 1e-12). Parameter names match the official
checkpoints: ``encoder.layer.{i}.crossattention.self.{query,key,value}``,
``crossattention.output.{dense,LayerNorm}``, ``intermediate.dense``, ``output.{dense,LayerNorm}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    """Tagging-head sizes (defaults: ``q2l_config.json`` with ``encoder_width = 512``)."""

    hidden_size: int = 768
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 3072
    encoder_width: int = 512
    layer_norm_eps: float = 1e-12


class CrossAttentionCore(nn.Module):
    """Multi-head attention from queries ``(B, Q, hidden)`` to memory ``(B, M, encoder_width)``."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.encoder_width, cfg.hidden_size)
        self.value = nn.Linear(cfg.encoder_width, cfg.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self._split(self.query(hidden)),
            self._split(self.key(memory)),
            self._split(self.value(memory)),
        )
        # softmax(q k^T / sqrt(d)) v; the official all-zero mask (every image token attended to) is left out.
        ctx = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim))
        b, _, n, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)


class ResidualNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)`` (BERT's ``*Output`` modules)."""

    def __init__(self, in_features: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class CrossAttention(nn.Module):
    """``crossattention``: ``self`` (the attention core) and ``output`` (dense + residual LayerNorm)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.self = CrossAttentionCore(cfg)
        self.output = ResidualNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, memory), hidden)


class Intermediate(nn.Module):
    """``dense`` to ``intermediate_size`` followed by the exact (erf) GELU."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class TaggingLayer(nn.Module):
    """One decoder layer without self-attention: cross-attention, then FFN."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.crossattention = CrossAttention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = ResidualNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        attended = self.crossattention(hidden, memory)
        return self.output(self.intermediate(attended), attended)


class TaggingEncoder(nn.Module):
    """``encoder.layer``: the stack of :class:`TaggingLayer`."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TaggingLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, memory)
        return hidden


class TaggingHead(nn.Module):
    """Label queries ``(B, C, hidden)`` x image embeddings ``(B, M, encoder_width)`` -> ``(B, C, hidden)``."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = TaggingEncoder(cfg)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.encoder(queries, image_embeds)
