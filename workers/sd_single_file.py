"""Load a Stable Diffusion inpainting pipeline from ONE original-format (LDM / CompVis) checkpoint.

The official SD 1.5 inpainting weights are the single file ``sd-v1-5-inpainting.ckpt``
(keys ``model.diffusion_model.*`` = UNet, ``first_stage_model.*`` = VAE,
``cond_stage_model.transformer.*`` = CLIP text model). diffusers converts it while loading
(``StableDiffusionInpaintPipeline.from_single_file``); the pipeline's layout (component
classes, UNet/VAE/text-encoder configs, scheduler, tokenizer) comes from a local folder of
diffusers config files laid out like the diffusers repository (``model_index.json``,
``unet/config.json``...), so nothing is looked up on the Hub.

diffusers loads the converted weights with ``strict=False``: a file lacking a component
would silently leave random weights. :func:`check_checkpoint` therefore reads the file first
(``torch.load(weights_only=True)``, memory-mapped, so the tensors are not read twice) and turns
every unreadable, truncated or foreign file into one :class:`SDCheckpointError` line.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from labelfleet.errors import PermanentError
from labelfleet.redact import one_line

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
#: UNet input conv of an inpainting model: 4 latent + 1 mask + 4 masked-image latent channels.
UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
INPAINT_IN_CHANNELS = 9


class SDCheckpointError(PermanentError):
    """An inpainting checkpoint that cannot be used: unreadable, truncated, or not SD inpainting weights."""


def _reason(exc: BaseException) -> str:
    """A short single line for ``exc`` (torch's weights-only refusal: just its ``WeightsUnpickler error``)."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    first = (found.group(1) if found else text).split(". ")[0]  # torch appends paragraphs of advice
    return one_line(first, 300) or type(exc).__name__


def _load_state_dict(path: Path) -> dict[str, Any]:
    """The checkpoint's state dict (tensors memory-mapped on CPU when the file is a zip archive)."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise SDCheckpointError(f"inpainting checkpoint {path} is not a plain weights file ({_reason(exc)}); "
                                "labelfleet loads checkpoints with torch.load(weights_only=True) only") from exc
    except Exception as exc:  # arbitrary bytes make the unpickler fail in arbitrary ways (IndexError, ...)
        raise SDCheckpointError(f"cannot read inpainting checkpoint {path} ({_reason(exc)}); the file is truncated or "
                                "corrupt: delete it and run `labelfleet models fetch sd15_inpaint` again") from exc
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SDCheckpointError(f"inpainting checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def check_checkpoint(path: Path) -> None:
    """Raise :class:`SDCheckpointError` unless ``path`` is a readable LDM-format SD inpainting checkpoint
    (UNet with a 9-channel input conv, VAE and CLIP text model weights)."""
    path = Path(path)
    if not path.is_file():
        raise SDCheckpointError(f"inpainting checkpoint {path} does not exist")
    state = _load_state_dict(path)
    missing = [p for p in (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX) if not any(k.startswith(p) for k in state)]
    if missing:
        raise SDCheckpointError(f"{path} is not an original-format Stable Diffusion checkpoint: no "
                                f"{', '.join(m + '*' for m in missing)} weights")
    conv = state.get(UNET_IN_KEY)
    channels = int(conv.shape[1]) if conv is not None and getattr(conv, "ndim", 0) == 4 else None
    if channels != INPAINT_IN_CHANNELS:
        raise SDCheckpointError(f"{path} is not an inpainting checkpoint: its UNet takes {channels} input "
                                f"channels, inpainting needs {INPAINT_IN_CHANNELS}")


def load_pipeline(checkpoint: Path, config_dir: Path, torch_dtype: Any) -> Any:
    """``StableDiffusionInpaintPipeline`` from ``checkpoint`` (LDM format) and the diffusers config files in
    ``config_dir``, offline, without safety checker. Bad files raise one :class:`SDCheckpointError` line."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    check_checkpoint(checkpoint)
    if not (Path(config_dir) / "model_index.json").is_file():
        raise SDCheckpointError(f"{config_dir} holds no model_index.json (the pipeline's diffusers config files); "
                                "run `labelfleet models fetch sd15_inpaint`")
    try:
        return StableDiffusionInpaintPipeline.from_single_file(
            str(checkpoint), config=str(config_dir), local_files_only=True, torch_dtype=torch_dtype,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    except (SingleFileComponentError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise SDCheckpointError(f"cannot load inpainting checkpoint {checkpoint} with the configs in {config_dir}: "
                                f"{_reason(exc)}") from exc
