"""Domain types shared by every layer. Pure numpy, no torch.

Coordinate conventions (the same everywhere inside labelfleet):

* boxes are **absolute pixel xyxy** ``[x0, y0, x1, y1]`` in the *upright*
  image frame (after EXIF orientation), float32; x grows to the right and
  y grows downwards; ``x1 >= x0`` and ``y1 >= y0``;
* stored/passed instance masks are *mask records* (see :mod:`labelfleet.masks`):
  COCO RLE of a crop plus its offset in the ``(H, W)`` frame, never a
  full-frame array per detection;
* FiftyOne's relative ``[x, y, w, h]`` boxes appear only in the review adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
#: An RGB image: shape (H, W, 3), dtype uint8, values in [0, 255].
RGBImage = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class ImageRef:
    """A pointer to one image in a source.

    ``key`` is relative to the source root (``"a/b.jpg"``), ``uri`` the
    source root (``/data/imgs`` or ``s3://bucket/prefix``).
    """

    source_uri: str
    key: str
    size: int | None = None
    etag: str | None = None


@dataclass(frozen=True)
class Tag:
    """One image-level tag with its score in [0, 1]."""

    name: str
    score: float


def _check_len(name: str, value: np.ndarray, n: int) -> None:
    if value.ndim != 1 or value.shape[0] != n:
        raise ValueError(f"{name} must be a 1D array with shape ({n},), but got shape {value.shape}")


def _mask_records(mask: Any, n: int) -> npt.NDArray[Any]:
    """Validate ``mask`` as ``n`` mask records and return them as an ``(n,)`` object array."""
    if isinstance(mask, np.ndarray) and mask.dtype != object:
        raise ValueError(f"mask must hold {n} mask records (dicts), not a {mask.dtype} array of shape {mask.shape}")
    out = np.empty((len(mask),), dtype=object)
    for i, rec in enumerate(mask):
        if not isinstance(rec, dict) or "size" not in rec or "counts" not in rec:
            raise ValueError(f"mask[{i}] must be a mask record dict with 'size' and 'counts', got {type(rec).__name__}")
        out[i] = rec
    _check_len("mask", out, n)
    return out


@dataclass
class Detections:
    """Detections of one image as parallel arrays (after supervision's ``Detections``).

    Attributes:
        xyxy: ``(n, 4)`` float32, absolute pixel ``[x0, y0, x1, y1]``.
        confidence: ``(n,)`` float32 scores in [0, 1].
        class_name: ``(n,)`` object array of ``str`` class names.
        mask: optional ``(n,)`` object array of mask records, one per detection:
            ``{"size": [h, w], "counts": str, "offset": [x0, y0], "frame": [H, W]}``
            (box-cropped COCO RLE, :func:`labelfleet.masks.encode_mask_record`;
            read them with the ``mask_record_*`` functions). Full-frame arrays
            are never kept per detection, so memory does not grow with the photo.
        data: extra per-detection columns, each of length ``n``
            (e.g. ``"phrase"``: the text GroundingDINO matched,
            ``"tag"``: the RAM tag the class came from).
    """

    xyxy: FloatArray
    confidence: FloatArray
    class_name: npt.NDArray[Any]
    mask: npt.NDArray[Any] | Sequence[dict[str, Any]] | None = None  # an (n,) object array once built
    data: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4) if np.size(
            self.xyxy
        ) == 0 else np.asarray(self.xyxy, dtype=np.float32)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must be a 2D array with shape (_, 4), but got shape {self.xyxy.shape}")
        n = self.xyxy.shape[0]
        if not np.all(np.isfinite(self.xyxy)):
            raise ValueError("xyxy must be finite")
        if np.any(self.xyxy[:, 2] < self.xyxy[:, 0]) or np.any(self.xyxy[:, 3] < self.xyxy[:, 1]):
            raise ValueError("xyxy must satisfy x1 >= x0 and y1 >= y0")
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        _check_len("confidence", self.confidence, n)
        self.class_name = np.asarray(list(self.class_name), dtype=object).reshape(-1)
        _check_len("class_name", self.class_name, n)
        if self.mask is not None:
            self.mask = _mask_records(self.mask, n)
        for key, col in list(self.data.items()):
            col = np.asarray(list(col), dtype=object) if not isinstance(col, np.ndarray) else col
            _check_len(f"data[{key!r}]", col, n)
            self.data[key] = col

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """A zero-length ``Detections`` with correctly shaped arrays."""
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            confidence=np.zeros((0,), np.float32),
            class_name=np.zeros((0,), object),
        )

    def __getitem__(self, index: int | slice | Sequence[int] | npt.NDArray[Any]) -> Detections:
        """Index every array the same way; ``dets[dets.confidence > 0.5]`` filters."""
        if isinstance(index, int):
            index = [index]
        idx = np.asarray(index) if not isinstance(index, slice) else index
        return Detections(
            xyxy=self.xyxy[idx],
            confidence=self.confidence[idx],
            class_name=self.class_name[idx],
            mask=None if self.mask is None else np.asarray(self.mask, dtype=object)[idx],
            data={k: v[idx] for k, v in self.data.items()},
        )

    @classmethod
    def merge(cls, parts: Iterable[Detections]) -> Detections:
        """Concatenate detections; empty parts are skipped.

        Raises ``ValueError`` if only some parts carry masks or a data column.
        """
        items = [p for p in parts if len(p) > 0]
        if not items:
            return cls.empty()
        has_mask = {p.mask is not None for p in items}
        if len(has_mask) > 1:
            raise ValueError("All or none of the 'mask' fields must be None")
        keys = {frozenset(p.data) for p in items}
        if len(keys) > 1:
            raise ValueError("All parts must have the same data columns")
        return cls(
            xyxy=np.concatenate([p.xyxy for p in items]),
            confidence=np.concatenate([p.confidence for p in items]),
            class_name=np.concatenate([p.class_name for p in items]),
            mask=np.concatenate([p.mask for p in items]) if items[0].mask is not None else None,  # type: ignore[misc]
            data={k: np.concatenate([p.data[k] for p in items]) for k in items[0].data},
        )


def clip_xyxy(xyxy: FloatArray, width: int, height: int) -> FloatArray:
    """Clip absolute xyxy boxes ``(n, 4)`` to the image ``[0, width] x [0, height]``."""
    out = np.asarray(xyxy, dtype=np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def cxcywh_norm_to_xyxy(boxes: npt.NDArray[Any], width: int, height: int) -> FloatArray:
    """Convert normalised ``[cx, cy, w, h]`` in [0, 1] to absolute pixel xyxy.

    Example: ``[[0.5, 0.5, 0.5, 0.5]]`` on a 100x200 (w x h) image gives
    ``[[25, 50, 75, 150]]``.
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    cx, cy, w, h = b[:, 0] * width, b[:, 1] * height, b[:, 2] * width, b[:, 3] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
