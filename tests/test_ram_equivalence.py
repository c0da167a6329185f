"""labelfleet RAM / RAM++ vs the upstream code, on a reduced configuration.

``tests/data/ram/ref_{variant}.pth`` and ``expected_{variant}.json`` were produced by running the upstream
``RAM`` / ``RAM_plus`` classes (``generate_tag``, ``get_transform``, ``load_checkpoint_swinlarge``) with the
reduced sizes of labelfleet's ``*_tiny`` variants; see ``tests/data/ram/make_reference.py``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.stages.ram.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess_image
from workers.stages.ram_tagger import RamTagger, build_ram_model, load_tag_files

DATA = Path(__file__).parent / "data" / "ram"
VARIANTS = ["ram_tiny", "ram_plus_tiny"]
SCORE_ATOL = 1e-4


def reference_images() -> list[np.ndarray]:
    """Identical copy of ``make_reference.reference_images`` (checked through the sha256 in the JSON)."""
    out = []
    for i, (h, w) in enumerate([(97, 131), (384, 384), (200, 64)]):
        y, x = np.mgrid[0:h, 0:w]
        r = (x * (5 + 2 * i) + y * (3 + i)) % 256
        g = ((x - w // (2 + i)) ** 2 + (y - h // 3) ** 2) * (2 * i + 1) // 9 % 256
        b = ((x // (6 + 3 * i)) ^ (y // (4 + i))) * (41 + 10 * i) % 256
        out.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return out


def _expected(variant: str) -> dict:
    return json.loads((DATA / f"expected_{variant}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=VARIANTS)
def tagger_and_expected(request: pytest.FixtureRequest) -> tuple[RamTagger, dict]:
    variant = request.param
    tags, thresholds, zh = load_tag_files(
        DATA / "ref_tag_list.txt", DATA / "ref_tag_list_threshold.txt", DATA / "ref_tag_list_chinese.txt"
    )
    model = build_ram_model(variant, DATA / f"ref_{variant}.pth")  # strict=True inside
    return RamTagger(model, tags, thresholds, batch_size=2, tag_list_chinese=zh), _expected(variant)


def test_reference_images_are_the_ones_upstream_saw() -> None:
    for variant in VARIANTS:
        for img, ref in zip(reference_images(), _expected(variant)["images"], strict=True):
            assert list(img.shape) == ref["image_shape"]
            assert hashlib.sha256(img.tobytes()).hexdigest() == ref["image_sha256"]


def test_scores_match_upstream(tagger_and_expected: tuple[RamTagger, dict]) -> None:
    tagger, expected = tagger_and_expected
    scores = tagger.scores(reference_images())
    want = np.array([r["scores"] for r in expected["images"]], dtype=np.float64)
    diff = float(np.abs(scores - want).max())
    print(f"{expected['variant']}: max abs score diff vs upstream = {diff:.3g}")
    assert diff < SCORE_ATOL


def test_tags_match_upstream(tagger_and_expected: tuple[RamTagger, dict]) -> None:
    tagger, expected = tagger_and_expected
    images = reference_images()
    got = tagger.tag_strings(images)
    want = [(r["tags"], r["tags_chinese"]) for r in expected["images"]]
    assert got == want
    names = [[t.name for t in tags] for tags in tagger.tag(images)]
    assert names == [[s for s in r["tags"].split(" | ") if s] for r in expected["images"]]
    assert len({tuple(n) for n in names}) > 1, "reference tag sets should differ between images"


def test_reference_scores_keep_clear_of_thresholds() -> None:
    # Guards the reference data: no score within 1e-3 of its threshold, so float noise cannot flip a tag.
    _, thresholds, _ = load_tag_files(DATA / "ref_tag_list.txt", DATA / "ref_tag_list_threshold.txt")
    for variant in VARIANTS:
        scores = np.array([r["scores"] for r in _expected(variant)["images"]])
        assert np.abs(scores - np.array(thresholds)).min() > 1e-3


def test_preprocessing_matches_torchvision_get_transform() -> None:
    tv = pytest.importorskip("torchvision.transforms")
    transform = tv.Compose(
        [
            lambda im: im.convert("RGB"),
            tv.Resize((384, 384)),
            tv.ToTensor(),
            tv.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        ]
    )
    for img in reference_images():
        assert torch.equal(preprocess_image(img, 384), transform(Image.fromarray(img)))
