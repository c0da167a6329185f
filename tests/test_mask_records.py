"""Stored mask records: legacy full-frame RLE and box-cropped RLE read the same way."""

from __future__ import annotations

import numpy as np
import pytest

from labelfleet.masks import (
    encode_mask_record,
    encode_rle,
    mask_record_area,
    mask_record_crop,
    mask_record_frame,
    mask_record_full,
)


def _full() -> np.ndarray:
    m = np.zeros((40, 60), bool)
    m[10:20, 30:45] = True
    m[12, 31] = False
    return m


def test_crop_record_round_trips_to_the_full_frame() -> None:
    full = _full()
    rec = encode_mask_record(full[8:22, 28:50], 28, 8, (40, 60))
    assert mask_record_frame(rec) == (40, 60)
    np.testing.assert_array_equal(mask_record_full(rec), full)
    crop, x0, y0 = mask_record_crop(rec)
    assert (x0, y0) == (28, 8) and crop.shape == (14, 22)
    assert mask_record_area(rec) == int(full.sum())


def test_legacy_full_frame_record_is_read_unchanged() -> None:
    full = _full()
    rec = encode_rle(full)
    assert mask_record_frame(rec) == (40, 60)
    np.testing.assert_array_equal(mask_record_full(rec), full)
    assert mask_record_crop(rec)[1:] == (0, 0)
    assert mask_record_area(rec) == int(full.sum())


@pytest.mark.parametrize(("shape", "x0", "y0", "error"), [
    ((5, 5), 58, 0, "does not fit a 60x40 frame"),
    ((5, 5), -1, 0, "does not fit a 60x40 frame"),
    ((5,), 0, 0, "mask crop must be 2D"),
])
def test_bad_crops_are_refused(shape: tuple[int, ...], x0: int, y0: int, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        encode_mask_record(np.ones(shape, bool), x0, y0, (40, 60))
