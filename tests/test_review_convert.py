"""The one FiftyOne converter: pixel xyxy + full-frame mask <-> relative xywh + box-cropped mask."""

from __future__ import annotations

import numpy as np
import pytest

from labelfleet.masks import encode_mask_record, mask_record_full
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
        assert np.array_equal(mask_record_full(back["mask"]), mask_in_box(box, seed=i)), box
        assert back["area"] == row["area"]
    print(f"round-trip max box error: {worst:.2e} px over {len(awkward_boxes())} awkward boxes")


def test_crop_is_box_sized_like_fiftyone() -> None:
    from orchestrator.review.convert import to_fo_detection

    det = to_fo_detection(det_row((10.3, 5.7, 30.2, 20.9), "dog", 0.9, seed=1), (W, H))
    assert det.mask.shape == (21 - 6, 30 - 10)  # rows round(5.7)..round(20.9), cols round(10.3)..round(30.2)


def test_moved_box_drops_the_mask_instead_of_stretching_it() -> None:
    from orchestrator.review.convert import from_fo_detection, to_fo_detection

    det = to_fo_detection(det_row((8.0, 8.0, 24.0, 24.0), "cat", 0.7, seed=2), (W, H))
    det.bounding_box = [8 / W, 8 / H, 32 / W, 32 / H]  # reviewer doubled the box
    back = from_fo_detection(det, (W, H))
    assert back["mask"] is None and back["area"] is None and back["mask_stale"] is True
    assert (back["x1"], back["y1"]) == (40.0, 40.0)


def test_box_cropped_mask_records_convert_like_full_frame_ones() -> None:
    from orchestrator.review.convert import from_fo_detection, pixel_span, to_fo_detection

    for i, box in enumerate(awkward_boxes()):
        row = det_row(box, "dog", 0.4, seed=50 + i)
        full = mask_record_full(row["mask"])
        x_lo, x_hi = pixel_span(box[0], box[2], W)
        y_lo, y_hi = pixel_span(box[1], box[3], H)
        cropped = {**row, "mask": encode_mask_record(full[y_lo:y_hi, x_lo:x_hi], x_lo, y_lo, (H, W))}
        a, b = to_fo_detection(row, (W, H)), to_fo_detection(cropped, (W, H))
        assert np.array_equal(a.mask, b.mask), box
        assert np.array_equal(mask_record_full(from_fo_detection(b, (W, H))["mask"]), full), box


@pytest.mark.parametrize("bad", [{"x0": 5.0, "x1": 4.0}, {"mask": {"size": [10, 10], "counts": "PPYo1"}}])
def test_bad_input_raises_value_error(bad: dict) -> None:
    from orchestrator.review.convert import to_fo_detection

    with pytest.raises(ValueError):
        to_fo_detection({**det_row((1.0, 1.0, 6.0, 6.0), "cat", 0.5, seed=3), **bad}, (W, H))
