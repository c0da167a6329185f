"""Model registries keyed by the strings used in settings (after ``segment_anything/build_sam.py``).

Every builder takes ``checkpoint: Path | None``; ``None`` means random init
(tests build models without weights). Checkpoints are read with
``torch.load(..., map_location="cpu", weights_only=True)`` and moved to the
device by the stage object.

* detectors: ``{"model": state_dict}`` (official GroundingDINO format),
  text encoder built from ``text_encoder_dir`` (tokenizer files + ``config.json``);
* segmenters: bare SAM state dict, loaded with ``strict=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from labelfleet.errors import ConfigError, ModelUnavailableError, PermanentError
from workers.stages.grounding_dino import (
    GroundingDinoDetector,
    build_gdino_model,
    config_path,
    load_gdino_checkpoint,
)
from workers.stages.sam_segmenter import SamSegmenter
from workers.stages.tiny import TINY_GDINO_IMAGE_SIZE, build_tiny_gdino_model, build_tiny_sam

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 800
DEFAULT_MAX_SIZE = 1333


def _check_file(checkpoint: Path) -> Path:
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise ModelUnavailableError(f"checkpoint {path} does not exist")
    return path


# ------------------------------------------------------------------ detectors
#: Gradient checkpointing only matters for training; off, inference is the same math without the
#: per-block re-entry overhead and warnings (same parameters and keys).
INFERENCE_OVERRIDES = {"use_checkpoint": False, "use_transformer_ckpt": False}


def _gdino(config_name: str) -> Callable[[Path | None, Path], torch.nn.Module]:
    def build(checkpoint: Path | None, text_encoder_dir: Path) -> torch.nn.Module:
        model = build_gdino_model(config_path(config_name), text_encoder_dir, INFERENCE_OVERRIDES)
        if checkpoint is not None:
            load_gdino_checkpoint(model, _check_file(checkpoint))
        return model

    build.__doc__ = f"GroundingDINO from the shipped ``{config_name}``; ``checkpoint`` None = random init."
    return build


def build_gdino_tiny(checkpoint: Path | None, text_encoder_dir: Path) -> torch.nn.Module:
    """Tiny random-architecture GroundingDINO (see :mod:`workers.stages.tiny`)."""
    model = build_tiny_gdino_model(text_encoder_dir)
    if checkpoint is not None:
        load_gdino_checkpoint(model, _check_file(checkpoint))
    return model


#: key → ``builder(checkpoint, text_encoder_dir) -> model`` (eval mode, on CPU).
DETECTOR_BUILDERS: dict[str, Callable[[Path | None, Path], torch.nn.Module]] = {
    "gdino_swint_ogc": _gdino("GroundingDINO_SwinT_OGC.py"),
    "gdino_swinb_cogcoor": _gdino("GroundingDINO_SwinB_cfg.py"),
    "gdino_tiny": build_gdino_tiny,
}
#: Short side each detector runs at unless ``image_size`` is given.
DETECTOR_IMAGE_SIZE = {
    "gdino_swint_ogc": DEFAULT_IMAGE_SIZE,
    "gdino_swinb_cogcoor": DEFAULT_IMAGE_SIZE,
    "gdino_tiny": TINY_GDINO_IMAGE_SIZE,
}


def _lookup(
    registry: dict[str, Callable[..., torch.nn.Module]], kind: str, key: str
) -> Callable[..., torch.nn.Module]:
    if key not in registry:
        raise ConfigError(f"unknown {kind} key {key!r}; valid keys: {', '.join(sorted(registry))}")
    return registry[key]


def build_detector(
    key: str,
    *,
    checkpoint: Path | None,
    text_encoder_dir: Path,
    device: str,
    box_threshold: float = 0.25,
    text_threshold: float = 0.2,
    nms_iou: float = 0.5,
    batch_size: int = 4,
    image_size: int | None = None,
    precision: str = "fp32",
    compile_backend: str = "off",
) -> GroundingDinoDetector:
    """Build and load a detector by settings key.

    ``image_size`` (short side) defaults per key (800; tiny 256); the long-side
    cap scales with it (1333 at 800).

    Raises:
        ConfigError: unknown key (message lists the valid keys).
        ModelUnavailableError: ``checkpoint`` does not exist.
        PermanentError: checkpoint does not match the architecture.
    """
    builder = _lookup(DETECTOR_BUILDERS, "detector", key)
    size = image_size if image_size is not None else DETECTOR_IMAGE_SIZE[key]
    model = builder(checkpoint, Path(text_encoder_dir))
    logger.info("built detector %s (checkpoint=%s, device=%s, image_size=%d)", key, checkpoint, device, size)
    return GroundingDinoDetector(
        model,
        device=device,
        box_threshold=box_threshold,
        text_threshold=text_threshold,
        nms_iou=nms_iou,
        batch_size=batch_size,
        image_size=size,
        max_size=round(size * DEFAULT_MAX_SIZE / DEFAULT_IMAGE_SIZE),
        precision=precision,
        compile_backend=compile_backend,
    )


# ----------------------------------------------------------------- segmenters
def load_sam_checkpoint(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a bare SAM state dict with ``strict=True``; raise :class:`PermanentError` on any mismatch."""
    path = _check_file(checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PermanentError(f"cannot read SAM checkpoint {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise PermanentError(f"SAM checkpoint {path} must be a bare state dict, got {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PermanentError(f"SAM checkpoint {path} does not match the model: {exc}") from exc


def _sam(registry_key: str) -> Callable[[Path | None], torch.nn.Module]:
    def build(checkpoint: Path | None) -> torch.nn.Module:
        from segment_anything import sam_model_registry

        model = sam_model_registry[registry_key](checkpoint=None)
        if checkpoint is not None:
            load_sam_checkpoint(model, checkpoint)
        return model.eval()

    build.__doc__ = f"SAM ``{registry_key}`` from ``segment_anything``; ``checkpoint`` None = random init."
    return build


def build_sam_tiny(checkpoint: Path | None) -> torch.nn.Module:
    """Tiny SAM (see :mod:`workers.stages.tiny`)."""
    model = build_tiny_sam()
    if checkpoint is not None:
        load_sam_checkpoint(model, checkpoint)
    return model


#: key → ``builder(checkpoint) -> Sam`` (eval mode, on CPU).
SEGMENTER_BUILDERS: dict[str, Callable[[Path | None], torch.nn.Module]] = {
    "sam_vit_h": _sam("vit_h"),
    "sam_vit_l": _sam("vit_l"),
    "sam_vit_b": _sam("vit_b"),
    "sam_tiny": build_sam_tiny,
}


def build_segmenter(
    key: str, *, checkpoint: Path | None, device: str, encoder_batch_size: int = 1, precision: str = "fp32",
    compile_backend: str = "off",
) -> SamSegmenter:
    """Build and load a segmenter by settings key (errors as in :func:`build_detector`).

    ``encoder_batch_size`` images share one image-encoder forward (the pipeline passes its batch size).
    """
    builder = _lookup(SEGMENTER_BUILDERS, "segmenter", key)
    model = builder(checkpoint)
    logger.info("built segmenter %s (checkpoint=%s, device=%s)", key, checkpoint, device)
    return SamSegmenter(model, device=device, encoder_batch_size=encoder_batch_size, precision=precision,
                        compile_backend=compile_backend)
