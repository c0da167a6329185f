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


# --- stored mask records -------------------------------------------------------------------------
# A *mask record* is what a detection row stores. Two shapes are accepted everywhere:
#   legacy full-frame:  {"size": [H, W], "counts": "<rle>"}
#   box-cropped:        {"size": [h, w], "counts": "<rle of the crop>", "offset": [x0, y0], "frame": [H, W]}
# where (x0, y0) is the crop's top-left pixel (column, row) in the upright H x W image frame.
# Every reader goes through the functions below, so the stored form can change in one place.


def encode_mask_record(crop: BoolArray, x0: int, y0: int, frame_hw: tuple[int, int]) -> dict[str, Any]:
    """A box-cropped mask record: ``crop`` is ``(h, w)`` bool whose top-left sits at pixel ``(x0, y0)``
    of an image of ``frame_hw = (H, W)``. The crop must lie inside the frame."""
    c = np.asarray(crop, dtype=bool)
    if c.ndim != 2:
        raise ValueError(f"mask crop must be 2D (h, w), but got shape {c.shape}")
    fh, fw = (int(v) for v in frame_hw)
    x0, y0 = int(x0), int(y0)
    if x0 < 0 or y0 < 0 or x0 + c.shape[1] > fw or y0 + c.shape[0] > fh:
        raise ValueError(f"mask crop {c.shape[1]}x{c.shape[0]} at ({x0}, {y0}) does not fit a {fw}x{fh} frame")
    rec = encode_rle(c)
    rec["offset"] = [x0, y0]
    rec["frame"] = [fh, fw]
    return rec


def mask_record_frame(rec: dict[str, Any]) -> tuple[int, int]:
    """``(H, W)`` of the image frame a mask record belongs to."""
    h, w = rec.get("frame", rec["size"])
    return int(h), int(w)


def mask_record_crop(rec: dict[str, Any]) -> tuple[BoolArray, int, int]:
    """``(crop, x0, y0)``: the stored ``(h, w)`` bool crop and its top-left pixel in the frame.

    A legacy full-frame record returns the whole mask at ``(0, 0)``.
    """
    x0, y0 = rec.get("offset", (0, 0))
    return decode_rle({"size": rec["size"], "counts": rec["counts"]}), int(x0), int(y0)


def mask_record_full(rec: dict[str, Any]) -> BoolArray:
    """The ``(H, W)`` full-frame bool mask of a record (allocates H*W bytes: use for one mask at a time)."""
    crop, x0, y0 = mask_record_crop(rec)
    if "offset" not in rec:
        return crop
    h, w = mask_record_frame(rec)
    full = np.zeros((h, w), dtype=bool)
    full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return full


def mask_record_area(rec: dict[str, Any]) -> int:
    """Foreground pixel count of a mask record (no decoding)."""
    return rle_area({"size": rec["size"], "counts": rec["counts"]})
