"""The one FiftyOne converter: pixel xyxy + full-frame mask <-> relative xywh + box-cropped mask."""

from __future__ import annotations

import numpy as np
import pytest

from labelfleet.masks import decode_rle
from tests.test_review_support import H, W, awkward_boxes, det_row, mask_in_box


def test_round_trip_awkward_boxes_within_one_pixel() -> None:
    from orchestrator.review.convert import from_fo_detection, to_fo_detection

    worst = 0.0
    for i, box in enumerate(awkward_boxes()):
        row = {**det_row(box, "cat", 0.5, seed=i), "id": 100 + i}
        det = to_fo_detection(row, (W, H))
        x, y, w, h = det.bounding_box
        assert 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 and 0 <= x + w <= 1.0 + 1e-9 and 0 <= y + h <= 1.0 + 1e-9
        assert det.mask.dtype == bool and det.mask.shape[0] >= 1 and det.mask.shape[1] >= 1
        back = from_fo_detection(det, (W, H))
        err = max(abs(back[k] - row[k]) for k in ("x0", "y0", "x1", "y1"))
        worst = max(worst, err)
        assert err < 1.0, (box, back)
        assert back["lf_id"] == 100 + i and back["class_name"] == "cat" and back["score"] == 0.5
        assert np.array_equal(decode_rle(back["mask"]), mask_in_box(box, seed=i)), box
        assert back["area"] == row["area"]
    print(f"round-trip max box error: {worst:.2e} px over {len(awkward_boxes())} awkward boxes")


def test_crop_is_box_sized_like_fiftyone() -> None:
    from orchestrator.review.convert import to_fo_detection

    det = to_fo_detection(det_row((10.3, 5.7, 30.2, 20.9), "dog", 0.9, seed=1), (W, H))
    assert det.mask.shape == (21 - 6, 30 - 10)  # rows round(5.7)..round(20.9), cols round(10.3)..round(30.2)


def test_edited_box_resizes_the_mask() -> None:
    from orchestrator.review.convert import from_fo_detection, to_fo_detection

    det = to_fo_detection(det_row((8.0, 8.0, 24.0, 24.0), "cat", 0.7, seed=2), (W, H))
    det.bounding_box = [8 / W, 8 / H, 32 / W, 32 / H]  # reviewer doubled the box
    back = from_fo_detection(det, (W, H))
    full = decode_rle(back["mask"])
    assert full.shape == (H, W) and not full[:8].any() and not full[:, :8].any()
    assert (back["x1"], back["y1"]) == (40.0, 40.0)


@pytest.mark.parametrize("bad", [{"x0": 5.0, "x1": 4.0}, {"mask": {"size": [10, 10], "counts": "PPYo1"}}])
def test_bad_input_raises_value_error(bad: dict) -> None:
    from orchestrator.review.convert import to_fo_detection

    with pytest.raises(ValueError):
        to_fo_detection({**det_row((1.0, 1.0, 6.0, 6.0), "cat", 0.5, seed=3), **bad}, (W, H))
