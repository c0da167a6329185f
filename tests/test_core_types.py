"""Detections validation, indexing and merging; RLE round trip; catalog lookups."""

from __future__ import annotations

import re

import numpy as np
import pytest

from labelfleet.errors import ConfigError
from labelfleet.masks import decode_rle, encode_mask_record, encode_rle, mask_to_xyxy, rle_area
from labelfleet.models.catalog import (
    MODELS,
    NO_DIGEST,
    PRESETS,
    SD_INPAINT_REPO,
    SD_INPAINT_REVISION,
    ModelFile,
    get_model,
    get_preset,
    revision_pinned_config,
)
from labelfleet.types import Detections, cxcywh_norm_to_xyxy


def _dets(n: int = 3, with_mask: bool = False) -> Detections:
    xyxy = np.array([[0, 0, 10, 10], [5, 5, 20, 30], [1, 2, 3, 4]], np.float32)[:n]
    mask = [encode_mask_record(np.ones((2, 3), bool), i, 0, (40, 50)) for i in range(n)] if with_mask else None
    return Detections(xyxy=xyxy, confidence=np.array([0.9, 0.5, 0.3][:n]), class_name=["a", "b", "c"][:n],
                      mask=mask, data={"phrase": ["pa", "pb", "pc"][:n]})


BAD_DETECTIONS = [
    ({"xyxy": np.zeros((2, 3))}, "xyxy must be a 2D array with shape (_, 4), but got shape (2, 3)"),
    ({"confidence": np.zeros(2)}, "confidence must be a 1D array with shape (3,), but got shape (2,)"),
    ({"class_name": ["a"]}, "class_name must be a 1D array with shape (3,), but got shape (1,)"),
    ({"mask": [{"size": [1, 1], "counts": "01"}] * 2}, "mask must be a 1D array with shape (3,), but got shape (2,)"),
    ({"mask": np.zeros((3, 4, 4), bool)}, "mask must hold 3 mask records (dicts), not a bool array of shape (3, 4, 4)"),
    ({"mask": [{"size": [1, 1]}] * 3}, "mask[0] must be a mask record dict with 'size' and 'counts', got dict"),
    ({"xyxy": np.array([[5, 0, 1, 1]] * 3)}, "xyxy must satisfy x1 >= x0 and y1 >= y0"),
    ({"xyxy": np.array([[0, 0, np.nan, 1]] * 3)}, "xyxy must be finite"),
    ({"data": {"phrase": ["x"]}}, "data['phrase'] must be a 1D array with shape (3,), but got shape (1,)"),
]


@pytest.mark.parametrize(("change", "message"), BAD_DETECTIONS, ids=[m[:30] for _, m in BAD_DETECTIONS])
def test_detections_validation(change: dict, message: str) -> None:
    kw = {"xyxy": np.zeros((3, 4)), "confidence": np.zeros(3), "class_name": ["a", "b", "c"], **change}
    with pytest.raises(ValueError) as info:
        Detections(**kw)
    assert str(info.value) == message


def test_detections_filter_and_merge() -> None:
    d = _dets(with_mask=True)
    high = d[d.confidence > 0.4]
    assert len(high) == 2 and list(high.class_name) == ["a", "b"] and high.mask is not None
    assert list(high.data["phrase"]) == ["pa", "pb"]
    merged = Detections.merge([high, Detections.empty().__class__(xyxy=np.zeros((0, 4)), confidence=[],
                                                                  class_name=[]), d[[2]]])
    assert list(merged.class_name) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="All or none of the 'mask' fields must be None"):
        Detections.merge([_dets(1, True), _dets(1, False)])
    assert len(Detections.merge([])) == 0 and Detections.empty().xyxy.shape == (0, 4)


def test_cxcywh_conversion() -> None:
    out = cxcywh_norm_to_xyxy(np.array([[0.5, 0.5, 0.5, 0.5]]), 100, 200)
    np.testing.assert_allclose(out, [[25, 50, 75, 150]])


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (240, 320), (1, 10000)])
def test_rle_round_trip(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random(shape) > 0.6
    rle = encode_rle(mask)
    assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    assert rle_area(rle) == int(mask.sum())


def test_rle_uncompressed_counts_and_bad_shape() -> None:
    mask = np.zeros((3, 2), bool)
    mask[1:, 1] = True
    # column-major runs: 4 zeros, then 2 ones
    np.testing.assert_array_equal(decode_rle({"size": [3, 2], "counts": [4, 2]}), mask)
    with pytest.raises(ValueError, match=r"mask must be 2D \(H, W\), but got shape \(2, 2, 2\)"):
        encode_rle(np.zeros((2, 2, 2), bool))


def test_mask_to_xyxy() -> None:
    m = np.zeros((10, 10), bool)
    m[2:5, 3:8] = True
    assert mask_to_xyxy(m) == (3.0, 2.0, 8.0, 5.0)
    assert mask_to_xyxy(np.zeros((4, 4), bool)) is None


def test_catalog() -> None:
    assert {"ram", "ram_plus", "gdino_swint_ogc", "sam_vit_h", "sam_vit_b"} <= set(MODELS)
    weights = (".pth", ".ckpt", ".safetensors", ".bin", ".pt")
    for spec in MODELS.values():
        for f in spec.files:
            assert f.url.startswith("https://")
            if f.sha256 == NO_DIGEST:  # only small config files of a repository pinned by commit
                assert revision_pinned_config(f) and not f.filename.endswith(weights), f
                assert re.search(r"/resolve/[0-9a-f]{40}/", f.url), f
                continue
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256) and f.size > 0, f
    # the revision-pinned rule is narrow: weights, other roles, branch names never qualify
    pinned = f"https://huggingface.co/o/r/resolve/{'0' * 40}"
    assert revision_pinned_config(ModelFile("config/unet/config.json", "x/config.json", f"{pinned}/c.json", 0, ""))
    assert not revision_pinned_config(ModelFile("config/unet/w.safetensors", "x/w.safetensors", f"{pinned}/w", 0, ""))
    assert not revision_pinned_config(ModelFile("checkpoint", "x/a.json", f"{pinned}/a.json", 0, ""))
    assert not revision_pinned_config(ModelFile("config/a.json", "x/a.json", "https://h/o/r/resolve/main/a.json", 0,
                                                ""))
    sd = MODELS["sd15_inpaint"]
    assert re.fullmatch(r"[0-9a-f]{40}", SD_INPAINT_REVISION)
    assert all(f"/{SD_INPAINT_REPO}/resolve/{SD_INPAINT_REVISION}/" in f.url for f in sd.files)
    ckpt = next(f for f in sd.files if f.role == "checkpoint")
    assert (ckpt.size, ckpt.sha256[:10]) == (4265437280, "c6bbc15e32")  # the published A1111 short hash
    assert {f.role for f in sd.files if f.sha256 == NO_DIGEST} == {f"config/{r}" for r in (
        "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
        "unet/config.json", "vae/config.json")}
    assert "VERIFIED" not in sd.description.upper()
    assert PRESETS["tiny-random"].random_weights and not PRESETS["default"].random_weights
    with pytest.raises(ConfigError, match="unknown model preset 'nope'; choose one of: default, fast"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="unknown detector model 'sam_vit_h'; choose one of: gdino_swint_ogc"):
        get_model("sam_vit_h", "detector")
