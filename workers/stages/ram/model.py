"""RAM and RAM++ tagging models (inference only) and their size variants.

Clean-room re-implementation of ``RAM.generate_tag`` / ``RAM_plus.generate_tag`` from
``xinyu1205/recognize-anything`` (facts in ``shared/specs/ram.md`` sections 2-4). Module and parameter names
follow the official checkpoints so that their ``model`` state dict loads with ``strict=True`` after the key
conversion in :mod:`workers.stages.ram.checkpoint`.

Both models map ``(B, 3, S, S)`` float32 normalised images to ``(B, num_classes)`` float32 logits;
``sigmoid(logits)`` are the tag scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from workers.stages.ram.head import HeadConfig, TaggingHead
from workers.stages.ram.swin import DerivedBuffers, SwinConfig, SwinEncoder

#: Number of classes of the official closed-set tag list.
OFFICIAL_NUM_CLASSES = 4585
#: RAM++ descriptions per class in the official checkpoint (1 prompt + 5 LLM prompts x 10 answers).
OFFICIAL_DES_PER_CLASS = 51


@dataclass(frozen=True)
class RamConfig:
    """Architecture of one variant.

    Attributes:
        plus: ``True`` for RAM++ (description re-weighting), ``False`` for RAM.
        swin: image encoder sizes.
        head: tagging-head sizes.
        num_classes: number of tags ``C``.
        des_per_class: rows of ``label_embed`` per class (1 for RAM, 51 for official RAM++).
        embed_dim: width of ``image_proj`` output and of ``label_embed`` (512 in every official model).
    """

    plus: bool
    swin: SwinConfig = field(default_factory=SwinConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    num_classes: int = OFFICIAL_NUM_CLASSES
    des_per_class: int = 1
    embed_dim: int = 512

    @property
    def image_size(self) -> int:
        """Square input size expected by the encoder."""
        return self.swin.image_size


# Reduced sizes for tests: same structure (4 stages, shifted odd blocks, last stage = one window, 2 head
# layers), much smaller widths. The 384 px input is kept (the official code accepts only 224 or 384 px).
_TINY_SWIN = SwinConfig(embed_dim=6, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
_TINY_HEAD = HeadConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
TINY_DES_PER_CLASS = 4
TINY_DEFAULT_NUM_CLASSES = 32

VARIANT_CONFIGS: dict[str, RamConfig] = {
    "ram": RamConfig(plus=False),
    "ram_plus": RamConfig(plus=True, des_per_class=OFFICIAL_DES_PER_CLASS),
    "ram_tiny": RamConfig(plus=False, swin=_TINY_SWIN, head=_TINY_HEAD, num_classes=TINY_DEFAULT_NUM_CLASSES),
    "ram_plus_tiny": RamConfig(
        plus=True,
        swin=_TINY_SWIN,
        head=_TINY_HEAD,
        num_classes=TINY_DEFAULT_NUM_CLASSES,
        des_per_class=TINY_DES_PER_CLASS,
    ),
}


class RamTaggingModel(nn.Module):
    """Shared part of RAM and RAM++: encoder, projections, tagging head and ``fc``.

    Subclasses define :meth:`label_queries`, the ``(B, C, embed_dim)`` label embeddings fed (through
    ``relu(wordvec_proj(.))``) to the tagging head.
    """

    def __init__(self, cfg: RamConfig) -> None:
        super().__init__()
        if cfg.head.encoder_width != cfg.embed_dim:
            raise ValueError("head.encoder_width must equal embed_dim")
        self.config = cfg
        self.num_class = cfg.num_classes
        self.visual_encoder = SwinEncoder(cfg.swin)
        self.image_proj = nn.Linear(cfg.swin.num_features, cfg.embed_dim)
        self.label_embed = nn.Parameter(torch.zeros(cfg.num_classes * cfg.des_per_class, cfg.embed_dim))
        self.wordvec_proj = nn.Linear(cfg.embed_dim, cfg.head.hidden_size)
        self.tagging_head = TaggingHead(cfg.head)
        self.fc = nn.Linear(cfg.head.hidden_size, 1)

    def label_queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, 1+L, embed_dim)`` image embeddings -> ``(B, C, embed_dim)`` label embeddings."""
        raise NotImplementedError

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, 1 + L, embed_dim)``; token 0 is the projected mean token."""
        return self.image_proj(self.visual_encoder(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float normalised images -> ``(B, C)`` logits."""
        image_embeds = self.image_embeddings(images)
        queries = F.relu(self.wordvec_proj(self.label_queries(image_embeds)))
        hidden = self.tagging_head(queries, image_embeds)
        return self.fc(hidden).squeeze(-1)

    def reset_buffers(self) -> None:
        """Recompute every derived (non-persistent) buffer, e.g. after ``to_empty``."""
        for module in self.modules():
            if isinstance(module, DerivedBuffers):
                module.reset_buffers()


class RAM(RamTaggingModel):
    """RAM: one fixed embedding per class; ``label_embed`` is ``(C, 512)``."""

    def __init__(self, cfg: RamConfig) -> None:
        if cfg.plus or cfg.des_per_class != 1:
            raise ValueError("RAM needs plus=False and des_per_class=1")
        super().__init__(cfg)

    def label_queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.label_embed.unsqueeze(0).expand(image_embeds.shape[0], -1, -1)


class RAMPlus(RamTaggingModel):
    """RAM++: ``D`` description embeddings per class, mixed per image.

    ``label_embed`` is ``(C * D, 512)`` grouped class-major; ``reweight_scale`` is a scalar log-temperature.
    For each image, the weights are ``softmax_d(exp(reweight_scale) * <cls / |cls|, label_embed[c, d]>)``,
    where ``cls`` is image token 0, and the class embedding is the weighted sum of its ``D`` descriptions.
    """

    def __init__(self, cfg: RamConfig) -> None:
        if not cfg.plus:
            raise ValueError("RAMPlus needs plus=True")
        super().__init__(cfg)
        self.reweight_scale = nn.Parameter(torch.full((), math.log(1 / 0.07)))

    def label_queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        cls = image_embeds[:, 0, :]
        cls = cls / cls.norm(dim=-1, keepdim=True)
        des = self.label_embed.view(self.num_class, -1, self.label_embed.shape[-1])  # (C, D, E)
        logits = (
            self.reweight_scale.exp() * cls
        ) @ self.label_embed.t()  # (B, C * D), same order as upstream
        weights = logits.view(cls.shape[0], self.num_class, -1).softmax(dim=-1)  # (B, C, D)
        return torch.einsum("bcd,cde->bce", weights, des).to(image_embeds.dtype)


def create_model(cfg: RamConfig) -> RamTaggingModel:
    """Instantiate :class:`RAMPlus` or :class:`RAM` for ``cfg`` (random weights, training mode)."""
    return RAMPlus(cfg) if cfg.plus else RAM(cfg)
