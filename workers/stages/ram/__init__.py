"""Inference-only, clean-room RAM / RAM++ (Recognize Anything) for labelfleet.

Loads the official ``ram_swin_large_14m.pth`` / ``ram_plus_swin_large_14m.pth`` with ``strict=True``; see
:mod:`workers.stages.ram.checkpoint` for the key conversion and :mod:`workers.stages.ram_tagger` for the
stage.
"""

from workers.stages.ram.checkpoint import (
    RamCheckpointError,
    convert_official_key,
    convert_official_state_dict,
    read_checkpoint,
)
from workers.stages.ram.head import HeadConfig, TaggingHead
from workers.stages.ram.model import RAM, VARIANT_CONFIGS, RamConfig, RAMPlus, RamTaggingModel, create_model
from workers.stages.ram.preprocess import preprocess_batch, preprocess_image
from workers.stages.ram.swin import SwinConfig, SwinEncoder

__all__ = [
    "RAM",
    "VARIANT_CONFIGS",
    "HeadConfig",
    "RAMPlus",
    "RamCheckpointError",
    "RamConfig",
    "RamTaggingModel",
    "SwinConfig",
    "SwinEncoder",
    "TaggingHead",
    "convert_official_key",
    "convert_official_state_dict",
    "create_model",
    "preprocess_batch",
    "preprocess_image",
    "read_checkpoint",
]
