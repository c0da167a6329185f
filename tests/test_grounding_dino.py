"""GroundingDINO stage on a tiny random-weight model built from the real classes."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelfleet.captions import build_caption, split_classes
from labelfleet.errors import ConfigError, ModelUnavailableError, PermanentError
from labelfleet.stages import Detector
from labelfleet.types import Detections
from tests.stages_fixtures import box_iou, synthetic_image, tiny_gdino_files
from workers.stages.grounding_dino import GroundingDinoDetector, preprocess_image, resized_hw
from workers.stages.registry import DETECTOR_BUILDERS, build_detector
from workers.stages.tiny import build_tiny_gdino_model, make_tiny_gdino_files

CLASSES = ["cat", "dog", "person", "traffic light"]


@functools.cache
def tiny_model() -> torch.nn.Module:
    f = tiny_gdino_files()
    return DETECTOR_BUILDERS["gdino_tiny"](f["checkpoint"], f["text_encoder_dir"])


def detector(**kwargs: float | int) -> GroundingDinoDetector:
    """A detector around the cached tiny model (thresholds vary per test)."""
    opts: dict = {"image_size": 256, "max_size": 427, **kwargs}
    return GroundingDinoDetector(tiny_model(), device="cpu", **opts)


def check_detections(dets: Detections, image: np.ndarray, classes: list[str], box_threshold: float) -> None:
    assert image.ndim == 3
    assert dets.xyxy.dtype == np.float32  # unclipped: boxes may extend past the image, as predicted
    assert np.all(dets.xyxy[:, 2] >= dets.xyxy[:, 0]) and np.all(dets.xyxy[:, 3] >= dets.xyxy[:, 1])
    assert set(dets.class_name.tolist()) <= set(classes)
    assert np.all(dets.confidence > box_threshold)
    assert np.all(np.diff(dets.confidence) <= 0)
    assert "phrase" in dets.data and len(dets.data["phrase"]) == len(dets)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((480, 640), (800, 1066)),
        ((640, 480), (1066, 800)),
        ((100, 1000), (133, 1330)),
        ((800, 800), (800, 800)),
    ],
)
def test_preprocess_matches_official_transform(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    import groundingdino.datasets.transforms as T

    image = synthetic_image(*hw)
    official = T.Compose(
        [
            T.RandomResize([800], max_size=1333),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    ref, _ = official(Image.fromarray(image), None)
    ours, padded = preprocess_image(image, 800, 1333)
    assert resized_hw(*hw, 800, 1333) == expected == tuple(ours.shape[1:])
    assert padded == hw
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(1, 1), (1, 10000), (10000, 1), (3, 2000)])
def test_preprocess_pads_extreme_shapes(hw: tuple[int, int]) -> None:
    tensor, (ph, pw) = preprocess_image(synthetic_image(*hw), 256, 427)
    assert ph >= hw[0] and pw >= hw[1]
    assert min(tensor.shape[1:]) >= 64 and max(tensor.shape[1:]) <= 427


def test_detect_end_to_end() -> None:
    det = detector(box_threshold=0.3, text_threshold=0.2)
    assert isinstance(det, Detector)
    images = [synthetic_image(240, 320, 0), synthetic_image(200, 150, 1)]
    out = det.detect(images, [CLASSES, ["Horse", "zebra"]])
    assert len(out) == 2
    assert len(out[0]) > 0 and len(out[1]) > 0
    check_detections(out[0], images[0], CLASSES, 0.3)
    check_detections(out[1], images[1], ["Horse", "zebra"], 0.3)  # original spelling kept
    for dets in out:
        iou = box_iou(dets.xyxy, dets.xyxy)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= 0.5 + 1e-6


def test_thresholds_are_respected() -> None:
    image = synthetic_image(240, 320, 3)
    low = detector(box_threshold=0.2).detect([image], [CLASSES])[0]
    high = detector(box_threshold=0.6).detect([image], [CLASSES])[0]
    assert 0 < len(high) < len(low)
    assert np.all(high.confidence > 0.6)
    none = detector(box_threshold=1.0).detect([image], [CLASSES])[0]
    assert len(none) == 0 and none.xyxy.shape == (0, 4) and none.data["phrase"].shape == (0,)
    no_phrase = detector(box_threshold=0.2, text_threshold=1.0).detect([image], [CLASSES])[0]
    assert len(no_phrase) == len(low) and set(no_phrase.data["phrase"].tolist()) == {""}
    phrases = detector(box_threshold=0.2, text_threshold=0.0).detect([image], [CLASSES])[0].data["phrase"]
    assert set(phrases.tolist()) == {"cat dog person traffic light"}  # every class token above 0


def test_batch_equals_one_by_one() -> None:
    images = [synthetic_image(240, 320, 4), synthetic_image(240, 320, 5), synthetic_image(300, 200, 6)]
    classes = [["cat", "dog"], ["person", "traffic light", "zebra", "car"], ["horse"]]
    batched = detector(batch_size=4, box_threshold=0.3).detect(images, classes)
    for image, cls, got in zip(images, classes, batched, strict=True):
        alone = detector(batch_size=1, box_threshold=0.3).detect([image], [cls])[0]
        assert got.class_name.tolist() == alone.class_name.tolist()
        assert got.data["phrase"].tolist() == alone.data["phrase"].tolist()
        np.testing.assert_allclose(got.xyxy, alone.xyxy, atol=1e-3)
        np.testing.assert_allclose(got.confidence, alone.confidence, atol=1e-5)


def test_long_class_list_is_split_and_merged() -> None:
    det = detector(box_threshold=0.3)
    letters = "bcdfghjklmnpqrstvwxz"
    classes = [f"{a}{b}{c}" for a in letters[:4] for b in letters for c in "aeiou"][:110]
    assert det.count_tokens(build_caption(classes)) > 256
    chunks = split_classes(classes, det.count_tokens)
    assert len(chunks) >= 2 and all(det.count_tokens(build_caption(c)) <= 256 for c in chunks)
    image = synthetic_image(240, 320, 7)
    full = det.detect([image], [classes])[0]
    check_detections(full, image, classes, 0.3)
    # == detecting each chunk separately (no NMS), then merging with NMS
    raw = detector(box_threshold=0.3, nms_iou=1.0).detect([image] * len(chunks), chunks)
    from workers.stages.postprocess import nms_detections

    expected = nms_detections(Detections.merge(raw), 0.5)
    assert sorted(full.class_name.tolist()) == sorted(expected.class_name.tolist())
    np.testing.assert_allclose(np.sort(full.confidence), np.sort(expected.confidence), atol=1e-5)


@pytest.mark.parametrize("hw", [(1, 1), (1, 10000), (10000, 1)])
def test_extreme_shapes(hw: tuple[int, int]) -> None:
    image = synthetic_image(*hw)
    dets = detector(box_threshold=0.2).detect([image], [CLASSES])[0]
    check_detections(dets, image, CLASSES, 0.2)


def test_empty_inputs() -> None:
    det = detector()
    assert det.detect([], []) == []
    empty = det.detect([synthetic_image(64, 64)], [[]])[0]
    assert len(empty) == 0 and "phrase" in empty.data
    with pytest.raises(ValueError, match="got 1 images but 2 class lists"):
        det.detect([synthetic_image(64, 64)], [CLASSES, CLASSES])
    with pytest.raises(ValueError, match=r"image must be \(H, W, 3\) uint8"):
        det.detect([np.zeros((8, 8), np.uint8)], [CLASSES])


def test_registry_build_and_errors(tmp_path: Path) -> None:
    f = tiny_gdino_files()
    det = build_detector(
        "gdino_tiny",
        checkpoint=f["checkpoint"],
        text_encoder_dir=f["text_encoder_dir"],
        device="cpu",
        box_threshold=0.4,
    )
    assert (det.image_size, det.max_size, det.box_threshold) == (256, 427, 0.4)
    with pytest.raises(
        ConfigError,
        match="unknown detector key 'gdino_huge'; valid keys: gdino_swinb_cogcoor, "
        "gdino_swint_ogc, gdino_tiny",
    ):
        build_detector("gdino_huge", checkpoint=None, text_encoder_dir=f["text_encoder_dir"], device="cpu")
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        build_detector(
            "gdino_tiny",
            checkpoint=tmp_path / "nope.pth",
            text_encoder_dir=f["text_encoder_dir"],
            device="cpu",
        )
    with pytest.raises(ConfigError, match=r"must hold vocab\.txt and config\.json"):
        build_detector("gdino_tiny", checkpoint=None, text_encoder_dir=tmp_path, device="cpu")


def _save(tmp_path: Path, obj: object) -> Path:
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    return path


def test_checkpoint_key_checks(tmp_path: Path) -> None:
    f = tiny_gdino_files()
    state = torch.load(f["checkpoint"], map_location="cpu", weights_only=True)["model"]
    build = DETECTOR_BUILDERS["gdino_tiny"]
    # a `module.` prefix and the documented benign extra keys load fine
    benign = {f"module.{k}": v for k, v in state.items()}
    benign["label_enc.weight"] = torch.zeros(3, 4)
    benign["bert.embeddings.position_ids"] = torch.arange(512)[None]
    build(_save(tmp_path, {"model": benign}), f["text_encoder_dir"])
    missing = {k: v for k, v in state.items() if k != "bbox_embed.0.layers.0.weight"}
    with pytest.raises(PermanentError, match=r"missing keys \['bbox_embed.0.layers.0.weight'\]"):
        build(_save(tmp_path, {"model": missing}), f["text_encoder_dir"])
    with pytest.raises(PermanentError, match=r"unexpected keys \['extra.weight'\]"):
        build(_save(tmp_path, {"model": {**state, "extra.weight": torch.zeros(1)}}), f["text_encoder_dir"])
    with pytest.raises(PermanentError, match="must be a dict with a 'model' state dict"):
        build(_save(tmp_path, state), f["text_encoder_dir"])
    with pytest.raises(PermanentError, match="does not fit the model"):
        build(_save(tmp_path, {"model": {**state, "feat_map.bias": torch.zeros(7)}}), f["text_encoder_dir"])


def test_tiny_files_are_deterministic_and_load_back(tmp_path: Path) -> None:
    a = make_tiny_gdino_files(tmp_path / "a", seed=0)
    b = make_tiny_gdino_files(tmp_path / "b", seed=0)

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    assert digest(a["checkpoint"]) == digest(b["checkpoint"]) == digest(tiny_gdino_files()["checkpoint"])
    for name in ("vocab.txt", "config.json", "tokenizer_config.json"):
        assert digest(a["text_encoder_dir"] / name) == digest(b["text_encoder_dir"] / name)
    # official format, and the scaled decoder norm round-trips through the loader
    saved = torch.load(a["checkpoint"], map_location="cpu", weights_only=True)
    assert set(saved) == {"model"}
    model = DETECTOR_BUILDERS["gdino_tiny"](a["checkpoint"], a["text_encoder_dir"])
    torch.testing.assert_close(
        model.state_dict()["transformer.decoder.norm.weight"],
        saved["model"]["transformer.decoder.norm.weight"],
    )
    assert set(build_tiny_gdino_model(a["text_encoder_dir"]).state_dict()) == set(saved["model"])


def test_text_features_are_computed_once_per_caption() -> None:
    """Fixed classes: BERT runs once, later images reuse the cached features; outputs equal uncached BERT."""
    f = tiny_gdino_files()
    fresh = DETECTOR_BUILDERS["gdino_tiny"](f["checkpoint"], f["text_encoder_dir"])
    inner = fresh.bert.forward
    images = [synthetic_image(240, 320, 8), synthetic_image(240, 320, 9)]
    ref = [GroundingDinoDetector(tiny_model(), device="cpu", image_size=256, max_size=427,
                                 box_threshold=0.3).detect([im], [CLASSES])[0] for im in images]
    calls: list[int] = []

    def counting(**kw: torch.Tensor) -> object:
        calls.append(int(kw["input_ids"].shape[0]))
        return inner(**kw)

    fresh.bert.forward = counting
    det = GroundingDinoDetector(fresh, device="cpu", image_size=256, max_size=427, box_threshold=0.3, batch_size=2)
    first = det.detect(images, [CLASSES, CLASSES])  # one forward, two identical captions: one BERT row
    again = det.detect(images[:1], [CLASSES])
    assert calls == [1]
    for got, want in zip([*first, *again], [*ref, ref[0]], strict=True):
        assert got.class_name.tolist() == want.class_name.tolist()
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=1e-2)
        np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-5)
