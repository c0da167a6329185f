"""Reading official RAM / RAM++ checkpoints into the labelfleet modules.

Official files (``ram_swin_large_14m.pth``, ``ram_plus_swin_large_14m.pth``) are ``torch.save`` dicts whose
``'model'`` entry is the state dict of the upstream ``RAM`` / ``RAM_plus`` module (the training scripts also
store ``optimizer``, ``config`` and ``epoch``; they are ignored).

Every key change between an official state dict and :class:`~workers.stages.ram.model.RamTaggingModel` is
listed here, in :func:`convert_official_state_dict`, and nowhere else:

1. **Dropped, like the official loader** (``load_checkpoint_swinlarge``): every key containing
   ``relative_position_index`` or ``attn_mask``. They are derived buffers; labelfleet registers them as
   non-persistent and rebuilds them from the configuration.
2. **Renamed, like the official loader**: ``vision_multi`` -> ``tagging_head`` (legacy name; a key that is
   also a bias table or an index/mask is not renamed, as in the official ``elif`` chain).
3. **Dropped by labelfleet only** (RAM; the official loader loads them): keys starting with ``tag_encoder.``
   or ``text_decoder.``, the Tag2Text-style captioning modules that tagging never runs.
4. ``relative_position_bias_table`` entries are *not* resampled. The official loader resamples them to
   ``(2 * window - 1) ** 2`` rows, which is a no-op for the released 384 px checkpoints; a table of another
   size is reported as a shape mismatch instead.

After conversion the state dict must match the model exactly (``strict=True``).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelfleet.errors import ModelUnavailableError, PermanentError

logger = logging.getLogger(__name__)

#: Substrings of keys that the official loader deletes (derived buffers).
OFFICIAL_DROPPED_SUBSTRINGS = ("relative_position_index", "attn_mask")
#: Official key renames (old substring -> new substring).
OFFICIAL_RENAMES = (("vision_multi", "tagging_head"),)
#: Key prefixes that labelfleet drops on top of the official loader (RAM's captioning modules).
LABELFLEET_DROPPED_PREFIXES = ("tag_encoder.", "text_decoder.")
#: sha256 of the released checkpoints (``shared/specs/ram.md`` section 6), for callers that verify downloads.
KNOWN_CHECKPOINT_SHA256 = {
    "ram_swin_large_14m.pth": "15c729c793af28b9d107c69f85836a1356d76ea830d4714699fb62e55fcc08ed",
    "ram_plus_swin_large_14m.pth": "497c178836ba66698ca226c7895317e6e800034be986452dbd2593298d50e87d",
}
_MAX_LISTED_KEYS = 10


class RamCheckpointError(PermanentError):
    """Raised when a RAM checkpoint cannot be read or does not fit the model."""


def convert_official_key(key: str) -> str | None:
    """Labelfleet name of an official state-dict key, or ``None`` if the key is dropped (rules 1-3 above)."""
    if "relative_position_bias_table" not in key:
        if any(s in key for s in OFFICIAL_DROPPED_SUBSTRINGS):
            return None
        for old, new in OFFICIAL_RENAMES:
            key = key.replace(old, new)
    if key.startswith(LABELFLEET_DROPPED_PREFIXES):
        return None
    return key


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Apply :func:`convert_official_key` to every key; values are passed through untouched."""
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        new_key = convert_official_key(key)
        if new_key is not None:
            out[new_key] = value
    return out


def read_checkpoint(path: Path, *, trusted: bool = False) -> dict[str, torch.Tensor]:
    """Read the ``'model'`` state dict of an official-format checkpoint (tensors on CPU, memory-mapped if
    possible).

    ``torch.load(weights_only=True)`` is tried first. If the file needs arbitrary unpickling (official files
    store a ``config`` object next to the weights), it is re-read with ``weights_only=False`` only when
    ``trusted`` is true, i.e. the caller has checked the file's sha256 against a known value.

    Raises:
        ModelUnavailableError: the file does not exist.
        RamCheckpointError: unreadable, untrusted pickle, or no ``'model'`` state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailableError(f"RAM checkpoint not found: {path}")
    try:
        obj = _torch_load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trusted:
            raise RamCheckpointError(
                f"{path} is not a plain weights file: it needs full unpickling, which can run arbitrary code, "
                "so labelfleet does not load it (only official checkpoints with a verified sha256 are unpickled). "
                "Re-save it as plain tensors: torch.save({'model': model.state_dict()}, path)"
            ) from exc
        logger.info("re-reading trusted checkpoint %s with weights_only=False", path)
        try:
            obj = _torch_load(path, weights_only=False)
        except pickle.UnpicklingError as exc2:
            raise RamCheckpointError(f"cannot read RAM checkpoint {path}: {exc2}") from exc2
    return _model_state_dict(obj, path)


def _torch_load(path: Path, *, weights_only: bool) -> Any:
    """``torch.load`` on CPU, memory-mapped when the file format allows; read errors -> RamCheckpointError."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            # legacy (non-zip) files cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise RamCheckpointError(f"cannot read RAM checkpoint {path}: {exc}") from exc


def _model_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        kind = type(obj).__name__ if not isinstance(obj, Mapping) else f"dict with keys {sorted(obj)[:8]}"
        raise RamCheckpointError(
            f"{path} is not an official RAM checkpoint ({{'model': state_dict}}); got {kind}"
        )
    state = dict(obj["model"])
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise RamCheckpointError(f"{path}: non-tensor entries in 'model': {bad[:_MAX_LISTED_KEYS]}")
    return state


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = f" (+{len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"[{shown}]{more}"


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`RamCheckpointError` naming missing, unexpected and mis-shaped keys, if any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys {_format_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {_format_keys(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches {_format_keys(shapes)}")
    raise RamCheckpointError(f"checkpoint {source} does not fit the model: " + "; ".join(parts))


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Convert ``state`` (official names) and load it into ``model`` with ``strict=True``."""
    converted = convert_official_state_dict(state)
    check_state_dict(model, converted, source)
    model.load_state_dict(converted, strict=True)
