"""Masks as COCO RLE (pycocotools), the format stored in the database.

An RLE is the JSON-friendly dict ``{"size": [H, W], "counts": "<str>"}``
(compressed COCO counts, column-major as pycocotools defines it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from labelfleet.types import BoolArray


def encode_rle(mask: BoolArray) -> dict[str, Any]:
    """Encode one ``(H, W)`` bool mask as a JSON-ready COCO RLE dict."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W), but got shape {m.shape}")
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> BoolArray:
    """Decode a COCO RLE dict (compressed string or uncompressed list counts) to ``(H, W)`` bool."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        obj = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return np.asarray(mask_utils.decode(obj), dtype=bool)


def rle_area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of an RLE."""
    counts = rle["counts"]
    obj = {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return int(mask_utils.area(obj))


def mask_to_xyxy(mask: BoolArray) -> tuple[float, float, float, float] | None:
    """Tight pixel box ``(x0, y0, x1, y1)`` (x1/y1 exclusive edges) of a mask, or None if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
