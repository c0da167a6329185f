"""Edit jobs (inpainting) as pure data: parameters, deterministic output names, edit units. No torch.

An edit job is a :class:`~labelfleet.db.models.Job` whose ``config["task"] == "edit"``;
its items are the source images. Each item yields one *unit* per edit (the union of
its target instances, or one per instance with ``per_instance``) and each unit
``variants`` images, variant ``v`` generated from seed ``seed + v``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from labelfleet.errors import ConfigError
from labelfleet.models.catalog import DEFAULT_INPAINTER

EDIT_TASK = "edit"
#: Instance name of the union of all target instances of an image.
UNION = "all"
#: Pixel-affecting parameters: a change gives different output names (never a silent overwrite).
_DIGEST_FIELDS = ("prompt", "negative_prompt", "steps", "guidance", "strength", "dilate", "feather",
                  "inpainter", "checkpoint_dir", "targets", "from_job")


@dataclass(frozen=True)
class EditParams:
    """What an edit job does to each image. ``out`` is a folder or ``s3://`` prefix."""

    prompt: str
    out: str
    targets: tuple[str, ...] = ()
    negative_prompt: str | None = None
    variants: int = 4
    steps: int = 30
    guidance: float = 7.5
    strength: float = 1.0
    seed: int = 0
    dilate: int = 8
    feather: int = 0
    per_instance: bool = False
    new_class: str | None = None
    from_job: str | None = None
    inpainter: str = DEFAULT_INPAINTER
    checkpoint_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ConfigError("--prompt is empty; say what to paint inside the mask, e.g. 'a corgi, photo'")
        if not self.targets and not self.from_job:
            raise ConfigError("--target is empty; name the objects to edit, e.g. --target dog")
        checks = ((self.variants >= 1, "--variants must be >= 1"), (self.steps >= 1, "--steps must be >= 1"),
                  (0 < self.strength <= 1, "--strength must be in (0, 1]"), (self.dilate >= 0, "--dilate must be "
                  ">= 0"), (self.feather >= 0, "--feather must be >= 0"), (self.seed >= 0, "--seed must be >= 0"))
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EditParams:
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
                              if k in cls.__dataclass_fields__}
        return cls(**kw)

    @property
    def digest(self) -> str:
        """8 hex digits identifying the pixel-affecting parameters (part of every output name)."""
        blob = json.dumps({k: self.to_json()[k] for k in _DIGEST_FIELDS}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def seeds(self) -> list[int]:
        """Seed of each variant: ``seed + v``."""
        return [self.seed + v for v in range(self.variants)]


@dataclass(frozen=True)
class EditUnit:
    """One region to inpaint: ``instance`` is :data:`UNION` or ``i<idx>``; ``detection_idx`` the item's
    detection indices whose masks form it."""

    instance: str
    detection_idx: tuple[int, ...]


def plan_units(idx: Sequence[int], per_instance: bool) -> list[EditUnit]:
    """Units of an image whose usable detections have indices ``idx`` (none -> no unit)."""
    if not idx:
        return []
    if per_instance:
        return [EditUnit(f"i{i}", (int(i),)) for i in idx]
    return [EditUnit(UNION, tuple(int(i) for i in idx))]


def output_key(source_key: str, instance: str, variant: int, seed: int, digest: str) -> str:
    """Deterministic output name: ``photos/a.jpg`` -> ``photos/a__all_v0_s0_<digest>.png``."""
    stem = source_key.rsplit(".", 1)[0] if "." in source_key.rsplit("/", 1)[-1] else source_key
    return f"{stem}__{instance}_v{variant}_s{seed}_{digest}.png"


def is_edit_job(config: dict[str, Any]) -> bool:
    return config.get("task") == EDIT_TASK
