"""Tiny random-weight RAM / RAM++ files for tests and the ``tiny-random`` preset.

Random weights give nearly the same score to every tag (``shared/specs/ram.md`` section 9), so a few tensors
are rescaled (see :data:`WEIGHT_SCALES`), ``fc.weight`` is decorrelated from image-wide and tag-wide score
shifts and ``fc.bias`` is calibrated on generated probe images, so that a few tags pass their thresholds per
image and the tag sets differ between images.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from workers.stages.ram.model import VARIANT_CONFIGS, RAMPlus, RamTaggingModel, create_model
from workers.stages.ram.preprocess import preprocess_batch

#: (English, Chinese) tag names of generated tag lists: plain nouns, so GroundingDINO captions read naturally.
TINY_TAGS: tuple[tuple[str, str], ...] = (
    ("person", "人"), ("cat", "猫"), ("dog", "狗"), ("car", "汽车"), ("tree", "树"), ("house", "房子"),
    ("bird", "鸟"), ("horse", "马"), ("bicycle", "自行车"), ("boat", "船"), ("chair", "椅子"),
    ("table", "桌子"), ("cup", "杯子"), ("bottle", "瓶子"), ("book", "书"), ("flower", "花"),
    ("grass", "草"), ("sky", "天空"), ("road", "道路"), ("building", "建筑"), ("bus", "公共汽车"),
    ("train", "火车"), ("truck", "卡车"), ("airplane", "飞机"), ("clock", "时钟"), ("lamp", "灯"),
    ("window", "窗户"), ("door", "门"), ("bed", "床"), ("couch", "沙发"), ("laptop", "笔记本电脑"),
    ("phone", "电话"), ("apple", "苹果"), ("banana", "香蕉"), ("pizza", "披萨"), ("cake", "蛋糕"),
    ("umbrella", "雨伞"), ("bag", "包"), ("shoe", "鞋"), ("hat", "帽子"), ("ball", "球"), ("kite", "风筝"),
    ("sheep", "羊"), ("cow", "牛"), ("elephant", "大象"), ("bear", "熊"), ("zebra", "斑马"),
    ("giraffe", "长颈鹿"), ("fish", "鱼"), ("mountain", "山"), ("river", "河"), ("beach", "海滩"),
    ("bridge", "桥"), ("fence", "栅栏"), ("plate", "盘子"), ("bowl", "碗"), ("knife", "刀"),
    ("spoon", "勺子"), ("fork", "叉子"), ("vase", "花瓶"), ("pillow", "枕头"), ("mirror", "镜子"),
    ("sink", "水槽"), ("television", "电视"),
)  # fmt: skip
#: Per-class thresholds of generated lists, cycled (the official list is mostly 0.65).
TINY_THRESHOLD_CYCLE = (0.65, 0.65, 0.7, 0.6, 0.65, 0.75, 0.5, 0.65)
#: Multipliers applied to random init (after ram.md section 9; sharper cross-attention for the tiny head).
WEIGHT_SCALES = {
    "crossattention.self.query.weight": 20.0,
    "crossattention.self.key.weight": 20.0,
    "crossattention.output.dense.weight": 0.5,
    "fc.weight": 2.5,
}
WORDVEC_SCALE = {False: 12.0, True: 30.0}  # keyed by RamConfig.plus
REWEIGHT_SCALE = math.log(50.0)
#: Fraction of (probe image, tag) pairs that pass after calibration.
TARGET_POSITIVE_RATE = 0.15
#: Directions of image-wide / tag-wide score shifts removed from ``fc.weight`` (see :func:`decorrelate_fc`).
NUM_IMAGE_DIRECTIONS = 4
NUM_TAG_DIRECTIONS = 8


def _pattern_image(i: int) -> np.ndarray:
    h, w = 100 + 17 * i, 140 - 9 * i
    y, x = np.mgrid[0:h, 0:w]
    r = (x * (3 + i) + y * (i + 1) * 2) % 256
    g = ((x - w // 2) ** 2 + (y - h // 3) ** 2) * (i + 1) // 7 % 256
    b = ((x // (8 + i)) ^ (y // (5 + 2 * i))) * 37 % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _scene_image(i: int) -> np.ndarray:
    h, w = 180 + 20 * (i % 3), 240 - 15 * (i % 4)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, (67 * i) % 256)], axis=-1)
    for k in range(1 + i % 3):
        cx, cy, rad = (37 * (i + 2 * k + 1)) % w, (53 * (i + k + 1)) % h, 15 + (29 * (i + k)) % 50
        img[(x - cx) ** 2 + (y - cy) ** 2 < rad * rad] = [
            (91 * (i + k)) % 256,
            (143 * k + 60) % 256,
            (i * 71) % 256,
        ]
    return img.astype(np.uint8)


def probe_images(n: int = 8) -> list[np.ndarray]:
    """``n`` deterministic ``(H, W, 3)`` uint8 images of different sizes (integer arithmetic, no RNG).

    Even indices are high-frequency patterns, odd ones smooth gradients with filled disks.
    """
    return [_pattern_image(i // 2) if i % 2 == 0 else _scene_image(i // 2) for i in range(n)]


@torch.no_grad()
def randomize_weights(model: RamTaggingModel, seed: int) -> None:
    """Re-draw ``label_embed`` (random unit rows) and bias tables, then apply :data:`WEIGHT_SCALES`."""
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(model.label_embed.shape, generator=gen)
    model.label_embed.copy_(embed / embed.norm(dim=-1, keepdim=True))
    for name, param in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
        for suffix, factor in WEIGHT_SCALES.items():
            if name.endswith(suffix):
                param.mul_(factor)
    model.wordvec_proj.weight.mul_(WORDVEC_SCALE[model.config.plus])
    if isinstance(model, RAMPlus):
        model.reweight_scale.fill_(REWEIGHT_SCALE)


@torch.no_grad()
def fc_inputs(model: RamTaggingModel, images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, S, S)`` preprocessed images -> ``(N, C, hidden)`` float64 hidden states entering ``fc``."""
    captured: list[torch.Tensor] = []
    hook = model.fc.register_forward_hook(lambda _m, args, _o: captured.append(args[0]))
    try:
        model(images)
    finally:
        hook.remove()
    return captured[0].double()


@torch.no_grad()
def decorrelate_fc(model: RamTaggingModel, hidden: torch.Tensor) -> None:
    """Project out of ``fc.weight`` the directions of image-wide and tag-wide score shifts (norm kept).

    With random weights, scores are mostly a shift per image (all tags fire or none) plus a shift per tag (the
    same tags fire everywhere). The probe hidden states ``hidden`` (``(N, C, H)``, see :func:`fc_inputs`) are
    averaged over tags (per image) and over images (per tag); the top :data:`NUM_IMAGE_DIRECTIONS` /
    :data:`NUM_TAG_DIRECTIONS` principal directions of those means are removed from ``fc.weight``, leaving
    mostly the image x tag interaction.
    """
    directions = []
    for means, k in ((hidden.mean(dim=1), NUM_IMAGE_DIRECTIONS), (hidden.mean(dim=0), NUM_TAG_DIRECTIONS)):
        directions.append(torch.linalg.svd(means - means.mean(dim=0), full_matrices=False)[2][:k])
    basis, _ = torch.linalg.qr(torch.cat(directions).T)  # (H, k_total), orthonormal columns
    weight = model.fc.weight.double()[0]
    projected = weight - basis @ (basis.T @ weight)
    model.fc.weight.copy_((projected * weight.norm() / projected.norm()).to(model.fc.weight.dtype)[None])


@torch.no_grad()
def calibrate_fc_bias(model: RamTaggingModel, hidden: torch.Tensor, thresholds: torch.Tensor) -> None:
    """Set ``fc.bias`` so that about :data:`TARGET_POSITIVE_RATE` of ``(image, tag)`` pairs pass.

    ``hidden``: ``(N, C, H)`` probe hidden states (:func:`fc_inputs`); ``thresholds``: ``(C,)`` in (0, 1).
    Every probe image gets at least one tag; among nearby biases, the one whose scores stay farthest from
    every threshold is kept (so float noise cannot flip a tag).
    """
    logits = hidden @ model.fc.weight.double()[0]  # (N, C), without bias
    margin = logits - torch.logit(thresholds.double())  # pass iff margin + bias > 0
    base = -torch.quantile(margin.flatten(), 1.0 - TARGET_POSITIVE_RATE).item()
    base = max(base, -margin.max(dim=1).values.min().item())
    best, best_gap = base, -1.0
    for delta in np.linspace(0.0, 0.3, 31):
        gap = (margin + base + float(delta)).abs().min().item()
        if gap > best_gap:
            best, best_gap = base + float(delta), gap
    model.fc.bias.fill_(best)


def build_tiny_model(variant: str, num_tags: int, seed: int, thresholds: list[float]) -> RamTaggingModel:
    """A calibrated random-weight model of a ``*_tiny`` variant with ``num_tags`` classes (eval mode)."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(VARIANT_CONFIGS[variant], num_classes=num_tags)
    model = create_model(cfg).eval()
    randomize_weights(model, seed)
    hidden = fc_inputs(model, preprocess_batch(probe_images(16), cfg.image_size))
    decorrelate_fc(model, hidden)
    calibrate_fc_bias(model, hidden, torch.tensor(thresholds))
    return model


def write_tiny_files(out_dir: Path, variant: str, *, seed: int, num_tags: int) -> dict[str, Path]:
    """Write checkpoint (official ``{'model': state_dict}``), tag list, thresholds and Chinese list."""
    if not variant.endswith("_tiny") or variant not in VARIANT_CONFIGS:
        tiny = sorted(v for v in VARIANT_CONFIGS if v.endswith("_tiny"))
        raise ValueError(f"unknown tiny RAM variant {variant!r}; valid: {tiny}")
    if not 1 <= num_tags <= len(TINY_TAGS):
        raise ValueError(f"num_tags must be in 1..{len(TINY_TAGS)}, got {num_tags}")
    thresholds = [TINY_THRESHOLD_CYCLE[i % len(TINY_THRESHOLD_CYCLE)] for i in range(num_tags)]
    with torch.random.fork_rng():
        model = build_tiny_model(variant, num_tags, seed, thresholds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "checkpoint": out_dir / f"{variant}.pth",
        "tag_list": out_dir / "tag_list.txt",
        "thresholds": out_dir / "tag_list_threshold.txt",
        "tag_list_chinese": out_dir / "tag_list_chinese.txt",
    }
    torch.save({"model": model.state_dict()}, paths["checkpoint"])
    tags = TINY_TAGS[:num_tags]
    paths["tag_list"].write_text("\n".join(en for en, _ in tags), encoding="utf-8")
    paths["tag_list_chinese"].write_text("\n".join(zh for _, zh in tags) + "\n", encoding="utf-8")
    paths["thresholds"].write_text("".join(f"{t}\n" for t in thresholds), encoding="utf-8")
    return paths
