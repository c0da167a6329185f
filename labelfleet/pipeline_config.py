"""What a job looks for: classes or automatic tags, thresholds. Pure data, stored in ``jobs.config``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PipelineConfig:
    """What to look for. ``classes=None`` means automatic mode (tags from the tagger)."""

    classes: tuple[str, ...] | None = None
    extra_classes: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    max_tags: int | None = None
    tag_threshold: float | None = None
    box_threshold: float = 0.25
    text_threshold: float = 0.2
    nms_iou: float = 0.5
    segment: bool = True

    @property
    def automatic(self) -> bool:
        return self.classes is None

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PipelineConfig:
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**kw)
