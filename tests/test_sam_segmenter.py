"""SAM stage on a tiny random-weight model; reference = segment_anything's own SamPredictor."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from labelfleet.errors import ConfigError, ModelUnavailableError, PermanentError
from labelfleet.masks import mask_record_crop, mask_record_frame, mask_record_full
from labelfleet.stages import Segmenter
from tests.stages_fixtures import synthetic_image, tiny_sam_files
from workers.stages.registry import SEGMENTER_BUILDERS, build_segmenter
from workers.stages.sam_segmenter import SamSegmenter
from workers.stages.tiny import make_tiny_sam_files

BOXES = np.array(
    [[10, 20, 200, 180], [0, 0, 320, 240], [150, 100, 160, 110], [50.5, 60.2, 90.7, 230.9]], np.float32
)


@functools.cache
def segmenter() -> SamSegmenter:
    return build_segmenter("sam_tiny", checkpoint=tiny_sam_files()["checkpoint"], device="cpu")


def predictor_masks(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Reference: SamPredictor.set_image + predict_torch(multimask_output=False)."""
    predictor = SamPredictor(segmenter().model)
    predictor.set_image(image)
    boxes_t = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes), image.shape[:2])
    masks, _, _ = predictor.predict_torch(None, None, boxes=boxes_t, multimask_output=False)
    return masks[:, 0].numpy()


def full_masks(records: list[dict]) -> np.ndarray:
    """``(n, H, W)`` bool from mask records (read back through labelfleet.masks)."""
    return np.stack([mask_record_full(r) for r in records])


def assert_masks_close(ours: np.ndarray, ref: np.ndarray) -> None:
    """Equal up to float rounding of the windowed resize: a handful of pixels at |logit| < 1e-4."""
    assert ours.shape == ref.shape and ours.dtype == ref.dtype == np.bool_
    assert (ours != ref).sum() <= max(2, ref.size // 100_000), (ours != ref).sum()


def test_segment_boxes_records_equal_predictor() -> None:
    seg = segmenter()
    assert isinstance(seg, Segmenter)
    images = [synthetic_image(240, 320, 0), synthetic_image(100, 60, 1), synthetic_image(50, 50, 2)]
    boxes: list[np.ndarray] = [BOXES, BOXES[:1] / 4, np.zeros((0, 4), np.float32)]
    out = seg.segment_boxes(images, boxes)
    assert [len(m) for m in out] == [4, 1, 0]
    assert {mask_record_frame(r) for r in out[0]} == {(240, 320)} and mask_record_frame(out[1][0]) == (100, 60)
    # small frames are resized whole, one mask at a time: bit-identical to SamPredictor
    np.testing.assert_array_equal(full_masks(out[0]), predictor_masks(images[0], BOXES))
    np.testing.assert_array_equal(full_masks(out[1]), predictor_masks(images[1], BOXES[:1] / 4))
    for rec in out[0]:  # each record holds its mask's extent (plus a pixel or two), not the frame
        crop, _, _ = mask_record_crop(rec)
        ys, xs = np.nonzero(crop)
        if ys.size:
            assert ys.min() <= 3 and xs.min() <= 3 and crop.shape[0] - ys.max() <= 4 and crop.shape[1] - xs.max() <= 4


def test_large_frame_chunks_and_strips_equal_predictor() -> None:
    """A frame 20x the encoder size, boxes past the border, tiny chunks/strips: same masks as SamPredictor."""
    image = synthetic_image(1500, 2100, 8)
    boxes = np.array([[-50, -20, 900, 700], [1000, 800, 2300, 1600], [10, 10, 30, 40]], np.float32)
    seg = SamSegmenter(segmenter().model, decoder_chunk=2, upscale_chunk=1, strip_pixels=5000)
    out = seg.segment_boxes([image], [boxes])[0]
    assert_masks_close(full_masks(out), predictor_masks(image, boxes))


def test_batched_encoder_equals_single() -> None:
    images = [synthetic_image(240, 320, 3), synthetic_image(320, 240, 4), synthetic_image(64, 128, 5)]
    boxes: list[np.ndarray] = [BOXES, BOXES[:2], BOXES[2:3] / 3]
    single = segmenter().segment_boxes(images, boxes)
    batched = SamSegmenter(segmenter().model, encoder_batch_size=3, upscale_chunk=1).segment_boxes(
        images, boxes
    )
    for a, b in zip(single, batched, strict=True):
        fa, fb = full_masks(a), full_masks(b)
        assert fa.shape == fb.shape
        assert (fa != fb).mean() < 1e-3  # batched matmuls may flip a few boundary pixels


def test_no_boxes_costs_no_encoder_run(monkeypatch: pytest.MonkeyPatch) -> None:
    seg = segmenter()
    calls = []
    monkeypatch.setattr(seg, "_encode", lambda prepared: calls.append(prepared))
    out = seg.segment_boxes([synthetic_image(30, 40)], [np.zeros((0, 4), np.float32)])
    assert out == [[]] and calls == []


@pytest.mark.parametrize("hw", [(1, 1), (1, 10000), (10000, 1)])
def test_extreme_shapes(hw: tuple[int, int]) -> None:
    h, w = hw
    boxes = np.array([[0, 0, w, h], [0, 0, max(1, w // 2), h]], np.float32)
    records = segmenter().segment_boxes([synthetic_image(h, w)], [boxes])[0]
    assert len(records) == 2 and {mask_record_frame(r) for r in records} == {(h, w)}
    assert full_masks(records).shape == (2, h, w)


@pytest.mark.parametrize(
    ("box", "points", "labels"),
    [
        (BOXES[0], None, None),
        (None, [[100, 120]], [1]),
        (None, [[100, 120], [30, 30], [300, 200]], [1, 0, 1]),
        (BOXES[3], [[70, 150], [60, 70]], [1, 0]),
    ],
)
def test_segment_prompts_equals_predictor(
    box: np.ndarray | None, points: list | None, labels: list | None
) -> None:
    image = synthetic_image(240, 320, 6)
    mask = segmenter().segment_prompts(image, box=box, points=points, point_labels=labels)
    predictor = SamPredictor(segmenter().model)
    predictor.set_image(image)
    ref, _, _ = predictor.predict(
        point_coords=None if points is None else np.asarray(points, np.float32),
        point_labels=None if labels is None else np.asarray(labels),
        box=box,
        multimask_output=False,
    )
    assert_masks_close(mask, ref[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "segment_prompts needs a box, points, or both"),
        ({"points": [[1, 2]]}, r"points must be \(k, 2\) with point_labels \(k,\)"),
        ({"points": [[1, 2]], "point_labels": [2]}, r"point_labels must be 1 \(include\) or 0 \(exclude\)"),
        ({"box": [1, 2, 3]}, "cannot reshape"),
    ],
)
def test_segment_prompts_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        segmenter().segment_prompts(synthetic_image(20, 20), **kwargs)


def test_bad_inputs() -> None:
    seg = segmenter()
    with pytest.raises(ValueError, match="got 1 images but 2 box arrays"):
        seg.segment_boxes([synthetic_image(20, 20)], [BOXES, BOXES])
    with pytest.raises(ValueError, match=r"boxes must have shape \(n, 4\) xyxy"):
        seg.segment_boxes([synthetic_image(20, 20)], [np.zeros((2, 3), np.float32)])
    with pytest.raises(ValueError, match=r"image must be an \(H, W, 3\) uint8 array"):
        seg.segment_boxes([np.zeros((20, 20, 3), np.float32)], [BOXES])


def test_segment_everything() -> None:
    image = synthetic_image(120, 160, 7)
    results = segmenter().segment_everything(
        image, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.9
    )
    assert len(results) > 0
    scores = [s for _, _, s in results]
    assert scores == sorted(scores, reverse=True)
    for mask, xyxy, _ in results:
        assert mask.shape == (120, 160) and mask.dtype == np.bool_ and mask.any()
        assert xyxy.dtype == np.float32 and xyxy.shape == (4,)
        assert 0 <= xyxy[0] <= xyxy[2] <= 160 and 0 <= xyxy[1] <= xyxy[3] <= 120
    with pytest.raises(ValueError, match="only output_mode='binary_mask'"):
        segmenter().segment_everything(image, output_mode="coco_rle")


def test_registry_and_checkpoint_errors(tmp_path: Path) -> None:
    ckpt = tiny_sam_files()["checkpoint"]
    with pytest.raises(
        ConfigError,
        match="unknown segmenter key 'sam_vit_x'; valid keys: sam_tiny, sam_vit_b, sam_vit_h, sam_vit_l",
    ):
        build_segmenter("sam_vit_x", checkpoint=None, device="cpu")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        build_segmenter("sam_tiny", checkpoint=tmp_path / "missing.pth", device="cpu")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    missing = {k: v for k, v in state.items() if k != "mask_decoder.iou_token.weight"}
    torch.save(missing, tmp_path / "bad.pth")
    with pytest.raises(PermanentError, match=r"Missing key.*mask_decoder\.iou_token\.weight"):
        build_segmenter("sam_tiny", checkpoint=tmp_path / "bad.pth", device="cpu")
    torch.save({"model": state}, tmp_path / "wrapped.pth")
    with pytest.raises(PermanentError, match="does not match the model"):
        build_segmenter("sam_tiny", checkpoint=tmp_path / "wrapped.pth", device="cpu")


def test_tiny_keys_are_official_keys() -> None:
    """Tiny SAM uses the official key names (vit_b has the same keys plus more ``blocks.N``)."""
    vit_b = SEGMENTER_BUILDERS["sam_vit_b"](None)
    assert set(torch.load(tiny_sam_files()["checkpoint"], weights_only=True)) <= set(vit_b.state_dict())


def test_tiny_sam_file_is_deterministic(tmp_path: Path) -> None:
    a = make_tiny_sam_files(tmp_path / "a", seed=0)["checkpoint"]
    b = make_tiny_sam_files(tmp_path / "b", seed=0)["checkpoint"]
    c = make_tiny_sam_files(tmp_path / "c", seed=1)["checkpoint"]
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]
    loaded = SEGMENTER_BUILDERS["sam_tiny"](a)
    ref = torch.load(a, map_location="cpu", weights_only=True)
    torch.testing.assert_close(loaded.state_dict(), ref)
