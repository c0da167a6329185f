"""RAM / RAM++ image tagging stage (implements :class:`labelfleet.stages.Tagger`).

Reproduces the official ``generate_tag`` of ``xinyu1205/recognize-anything``: official preprocessing
(:mod:`workers.stages.ram.preprocess`), ``sigmoid(logits) > per-class threshold`` (strict), tags in tag-list
order. Model code: :mod:`workers.stages.ram`; checkpoint key handling: :mod:`workers.stages.ram.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from labelfleet.types import Tag
from workers.stages.ram.checkpoint import RamCheckpointError, load_into, read_checkpoint
from workers.stages.ram.model import VARIANT_CONFIGS, RamConfig, RamTaggingModel, create_model
from workers.stages.ram.preprocess import preprocess_batch
from workers.stages.ram.tiny import write_tiny_files

logger = logging.getLogger(__name__)

RAM_VARIANTS = ("ram", "ram_plus", "ram_tiny", "ram_plus_tiny")


def variant_config(variant: str) -> RamConfig:
    """The :class:`RamConfig` of ``variant``; ``ValueError`` listing the valid names otherwise."""
    if variant not in VARIANT_CONFIGS:
        raise ValueError(f"unknown RAM variant {variant!r}; valid variants: {', '.join(RAM_VARIANTS)}")
    return VARIANT_CONFIGS[variant]


def _num_classes_from_state(cfg: RamConfig, state: dict[str, torch.Tensor], source: str) -> int:
    embed = state.get("label_embed")
    if embed is None or embed.ndim != 2:
        return cfg.num_classes  # the key check reports the problem
    rows = int(embed.shape[0])
    if rows % cfg.des_per_class:
        raise RamCheckpointError(
            f"{source}: label_embed has {rows} rows, not a multiple of {cfg.des_per_class} descriptions per "
            "class (wrong variant for this checkpoint?)"
        )
    return rows // cfg.des_per_class


def build_ram_model(
    variant: str,
    checkpoint: Path | None = None,
    *,
    device: str = "cpu",
    trusted: bool = False,
    num_classes: int | None = None,
) -> torch.nn.Module:
    """Build a RAM / RAM++ model in eval mode, optionally with official weights.

    Args:
        variant: one of :data:`RAM_VARIANTS` (``ram``/``ram_plus``: Swin-L, 384 px; ``*_tiny``: reduced widths
            for tests, same structure and key names).
        checkpoint: official-format file ``{'model': state_dict}`` (``ram_swin_large_14m.pth``, ...). Keys are
            converted by :func:`workers.stages.ram.checkpoint.convert_official_state_dict` (drops
            ``relative_position_index`` / ``attn_mask`` like the official loader, renames ``vision_multi`` ->
            ``tagging_head``, drops RAM's ``tag_encoder.*`` / ``text_decoder.*``), then loaded with
            ``strict=True``. The file is read with ``torch.load(weights_only=True)``; see ``trusted``.
        device: torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        trusted: allow ``weights_only=False`` when the file needs it; pass it only for files whose sha256 was
            verified (e.g. against :data:`workers.stages.ram.checkpoint.KNOWN_CHECKPOINT_SHA256`).
        num_classes: number of tags; by default taken from the checkpoint's ``label_embed`` (or the variant's
            default without a checkpoint: 4585 full-size, 32 tiny).

    Returns:
        A :class:`~workers.stages.ram.model.RamTaggingModel` mapping ``(B, 3, S, S)`` float32 to ``(B, C)``
        logits.

    Raises:
        ValueError: unknown variant. ModelUnavailableError: missing file.
        RamCheckpointError (a PermanentError): unreadable / untrusted file, or missing, unexpected or
        mis-shaped keys.
    """
    cfg = variant_config(variant)
    if checkpoint is None:
        if num_classes is not None:
            cfg = dataclasses.replace(cfg, num_classes=num_classes)
        return create_model(cfg).eval().to(device)
    state = read_checkpoint(Path(checkpoint), trusted=trusted)
    found = _num_classes_from_state(cfg, state, str(checkpoint))
    cfg = dataclasses.replace(cfg, num_classes=num_classes if num_classes is not None else found)
    with torch.device("meta"):
        model = create_model(cfg)
    model.to_empty(device=device)  # no random init: every persistent tensor comes from the checkpoint
    model.reset_buffers()
    load_into(model, state, str(checkpoint))
    logger.info("loaded %s (%d classes) from %s on %s", variant, cfg.num_classes, checkpoint, device)
    return model.eval()


def load_tag_files(
    tag_list: Path, thresholds: Path, chinese: Path | None = None
) -> tuple[list[str], list[float], list[str] | None]:
    """Read the official tag files (``f.read().splitlines()``, no strip, like the official code).

    Returns ``(tags, thresholds, chinese_tags_or_None)``; raises ``ValueError`` if lengths differ or a
    threshold is not a number in [0, 1].
    """
    tags = Path(tag_list).read_text(encoding="utf-8").splitlines()
    values: list[float] = []
    for i, line in enumerate(Path(thresholds).read_text(encoding="utf-8").splitlines()):
        try:
            values.append(float(line.strip()))
        except ValueError:
            raise ValueError(f"{thresholds}:{i + 1}: not a number: {line!r}") from None
    if len(values) != len(tags):
        raise ValueError(f"{len(tags)} tags in {tag_list} but {len(values)} thresholds in {thresholds}")
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"{thresholds}: thresholds must lie in [0, 1]")
    zh = Path(chinese).read_text(encoding="utf-8").splitlines() if chinese is not None else None
    if zh is not None and len(zh) != len(tags):
        raise ValueError(f"{len(tags)} tags in {tag_list} but {len(zh)} Chinese tags in {chinese}")
    return tags, values, zh


class RamTagger:
    """Tagger stage around a RAM / RAM++ model (see :func:`build_ram_model`).

    Args:
        model: a :class:`~workers.stages.ram.model.RamTaggingModel` with ``num_class == len(tag_list)``.
        tag_list: tag names in class order.
        thresholds: per-class thresholds (the official ``ram_tag_list_threshold.txt``).
        device: torch device string the model runs on (the model is moved there).
        batch_size: images per forward pass.
        threshold_override: if given, one threshold for every class instead of ``thresholds``.
        tag_list_chinese: optional Chinese names, used by :meth:`tag_strings`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tag_list: list[str],
        thresholds: list[float],
        *,
        device: str = "cpu",
        batch_size: int = 8,
        threshold_override: float | None = None,
        tag_list_chinese: list[str] | None = None,
    ) -> None:
        if not isinstance(model, RamTaggingModel):
            raise ValueError(
                f"model must be a RamTaggingModel (see build_ram_model), got {type(model).__name__}"
            )
        num = model.num_class
        for name, seq in (
            ("tag_list", tag_list),
            ("thresholds", thresholds),
            ("tag_list_chinese", tag_list_chinese),
        ):
            if seq is not None and len(seq) != num:
                raise ValueError(f"{name} has {len(seq)} entries but the model has {num} classes")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threshold_override is not None and not 0.0 <= threshold_override <= 1.0:
            raise ValueError(f"threshold_override must lie in [0, 1], got {threshold_override}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tag_list = list(tag_list)
        self.tag_list_chinese = list(tag_list_chinese) if tag_list_chinese is not None else None
        self.batch_size = batch_size
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        if threshold_override is not None:
            self.thresholds = np.full(num, threshold_override, dtype=np.float32)
        self.image_size = model.config.image_size

    def scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """``(B, num_class)`` float32 sigmoid scores for ``B`` ``(H, W, 3)`` uint8 RGB images."""
        out = np.zeros((len(images), len(self.tag_list)), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = preprocess_batch(chunk, self.image_size).to(self.device)
            with torch.inference_mode():
                probs = torch.sigmoid(self.model(batch).float())
            out[start : start + len(chunk)] = probs.cpu().numpy()
        return out

    def _selected(self, scores: np.ndarray) -> list[np.ndarray]:
        # float32 vs float32 comparison, like the official ``sigmoid(logits) > class_threshold``.
        return [np.flatnonzero(row > self.thresholds) for row in scores]

    def tag(self, images: Sequence[np.ndarray]) -> list[list[Tag]]:
        """Per image, the tags whose score is strictly above its threshold, in tag-list order."""
        scores = self.scores(images)
        return [
            [Tag(self.tag_list[i], float(row[i])) for i in idx]
            for row, idx in zip(scores, self._selected(scores), strict=True)
        ]

    def tag_strings(self, images: Sequence[np.ndarray]) -> list[tuple[str, str | None]]:
        """Official output format per image: ``(' | '.join(english), ' | '.join(chinese) or None)``."""
        zh = self.tag_list_chinese
        return [
            (
                " | ".join(self.tag_list[i] for i in idx),
                None if zh is None else " | ".join(zh[i] for i in idx),
            )
            for idx in self._selected(self.scores(images))
        ]


def make_tiny_ram_files(
    out_dir: Path, variant: str = "ram_plus_tiny", *, seed: int = 0, num_tags: int = 32
) -> dict[str, Path]:
    """Write a tiny random-weight checkpoint (official format and key names) and its tag files.

    Returns paths ``{"checkpoint", "tag_list", "thresholds", "tag_list_chinese"}``. The weights are rescaled
    and ``fc.bias`` calibrated so that a few tags fire per image and differ between images (see
    :mod:`workers.stages.ram.tiny`). Deterministic for a given ``seed``.
    """
    if variant not in RAM_VARIANTS:
        raise ValueError(f"unknown RAM variant {variant!r}; valid variants: {', '.join(RAM_VARIANTS)}")
    return write_tiny_files(Path(out_dir), variant, seed=seed, num_tags=num_tags)


def build_ram_tagger(
    variant: str,
    checkpoint: Path,
    tag_list: Path,
    thresholds: Path,
    *,
    chinese: Path | None = None,
    device: str = "cpu",
    trusted: bool = False,
    batch_size: int = 8,
    threshold_override: float | None = None,
) -> RamTagger:
    """Convenience builder: :func:`build_ram_model` + :func:`load_tag_files` -> :class:`RamTagger`."""
    tags, values, zh = load_tag_files(tag_list, thresholds, chinese)
    model = build_ram_model(variant, checkpoint, device=device, trusted=trusted)
    return RamTagger(
        model,
        tags,
        values,
        device=device,
        batch_size=batch_size,
        threshold_override=threshold_override,
        tag_list_chinese=zh,
    )
