"""RamTagger stage: thresholds, batching, ordering, bad inputs, the real tag lists and tiny files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labelfleet.errors import PermanentError
from labelfleet.stages import Tagger
from labelfleet.types import Tag
from workers.stages.ram.checkpoint import RamCheckpointError
from workers.stages.ram.model import RamTaggingModel
from workers.stages.ram.tiny import TINY_TAGS, probe_images
from workers.stages.ram_tagger import (
    RAM_VARIANTS,
    RamTagger,
    build_ram_model,
    build_ram_tagger,
    load_tag_files,
    make_tiny_ram_files,
)

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]
SHARED_RAM = Path(os.environ.get("LABELFLEET_SHARED_DIR", REPO.parent / "shared")) / "data" / "ram"
OFFICIAL_SHA256 = {
    "ram_tag_list.txt": "5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b",
    "ram_tag_list_chinese.txt": "c912657a0f30be7b2f5df6ccffa17e1d84561d0bea508528e38b6d0d711bcfbe",
    "ram_tag_list_threshold.txt": "b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447",
}


def _tagger(files: dict[str, Path], variant: str, **kw: Any) -> RamTagger:
    return build_ram_tagger(
        variant,
        files["checkpoint"],
        files["tag_list"],
        files["thresholds"],
        chinese=files["tag_list_chinese"],
        **kw,
    )


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_ram_files(tmp_path_factory.mktemp("ram_plus_tiny"), "ram_plus_tiny")


@pytest.fixture(scope="module")
def tagger(tiny_files: dict[str, Path]) -> RamTagger:
    return _tagger(tiny_files, "ram_plus_tiny", batch_size=2)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return probe_images(4)


@pytest.fixture(scope="module")
def scores(tagger: RamTagger, images: list[np.ndarray]) -> np.ndarray:
    return tagger.scores(images)


@pytest.fixture(scope="module")
def tags(tagger: RamTagger, images: list[np.ndarray]) -> list[list[Tag]]:
    return tagger.tag(images)


def _names(result: list[list[Tag]]) -> list[list[str]]:
    return [[t.name for t in tags] for tags in result]


def _fixed(tagger: RamTagger, thresholds: list[float], scores: np.ndarray, **kw: object) -> RamTagger:
    """A tagger on the same model whose ``scores()`` returns ``scores`` (thresholding tests, no forward)."""
    out = RamTagger(tagger.model, tagger.tag_list, thresholds, **kw)  # type: ignore[arg-type]
    out.scores = lambda _images: scores  # type: ignore[method-assign,assignment]
    return out


def test_is_a_tagger(tagger: RamTagger) -> None:
    assert isinstance(tagger, Tagger)
    assert len(tagger.tag_list) == 32


def test_scores_shape_and_range(scores: np.ndarray) -> None:
    assert scores.shape == (4, 32) and scores.dtype == np.float32
    assert np.all((scores > 0) & (scores < 1))


def test_per_class_thresholds_from_file(tagger: RamTagger, tiny_files, scores, tags) -> None:
    _, thresholds, _ = load_tag_files(tiny_files["tag_list"], tiny_files["thresholds"])
    assert len(set(thresholds)) > 1
    for row, got in zip(scores, tags, strict=True):
        want = [tagger.tag_list[i] for i in range(32) if row[i] > np.float32(thresholds[i])]
        assert [t.name for t in got] == want
        assert all(isinstance(t, Tag) and t.score == row[tagger.tag_list.index(t.name)] for t in got)


def test_threshold_is_strict(tagger: RamTagger, scores) -> None:
    cls = int(np.argmax(scores[0]))
    exact = [1.0] * 32
    exact[cls] = float(scores[0, cls])  # score == threshold -> not a tag
    assert _fixed(tagger, exact, scores[:1]).tag([None]) == [[]]  # type: ignore[list-item]
    below = list(exact)
    below[cls] = float(np.nextafter(scores[0, cls], np.float32(0)))
    assert _names(_fixed(tagger, below, scores[:1]).tag([None])) == [[tagger.tag_list[cls]]]  # type: ignore[list-item]


def test_threshold_override(tagger: RamTagger, images, scores) -> None:
    half = [0.5] * 32
    assert all(len(t) == 32 for t in _fixed(tagger, half, scores, threshold_override=0.0).tag(images))
    assert all(t == [] for t in _fixed(tagger, half, scores, threshold_override=1.0).tag(images))
    mid = float(np.median(scores))
    got = _fixed(tagger, [1.0] * 32, scores, threshold_override=mid).tag(images)
    assert [len(t) for t in got] == [int((row > np.float32(mid)).sum()) for row in scores]
    real = RamTagger(tagger.model, tagger.tag_list, [1.0] * 32, threshold_override=0.0)  # type: ignore[arg-type]
    assert _names(real.tag(images[:1])) == [tagger.tag_list]


def test_batching_equals_one_at_a_time(tagger: RamTagger, images, scores, tags) -> None:
    single = RamTagger(tagger.model, tagger.tag_list, list(tagger.thresholds), batch_size=1)  # type: ignore[arg-type]
    whole = RamTagger(tagger.model, tagger.tag_list, list(tagger.thresholds), batch_size=16)  # type: ignore[arg-type]
    one = single.scores(images)
    np.testing.assert_allclose(scores, one, atol=1e-5, rtol=0)  # fixture: batches of 2
    np.testing.assert_allclose(whole.scores(images), one, atol=1e-5, rtol=0)
    assert _names(single.tag(images)) == _names(tags)


def test_tags_follow_tag_list_order(tagger: RamTagger, images, scores, tags) -> None:
    everything = _fixed(tagger, [0.0] * 32, scores).tag(images)
    assert _names(everything) == [tagger.tag_list] * len(images)
    reverse = scores[:, ::-1].copy()  # high scores at the end of the list must not come first
    for got in _fixed(tagger, [0.5] * 32, reverse).tag(images) + tags:
        idx = [tagger.tag_list.index(t.name) for t in got]
        assert idx == sorted(idx)


def test_tag_strings_official_format(tagger: RamTagger, images, tags) -> None:
    zh_list = tagger.tag_list_chinese
    assert zh_list is not None
    for (en, zh), got in zip(tagger.tag_strings(images), tags, strict=True):
        assert en == " | ".join(t.name for t in got)
        assert zh == " | ".join(zh_list[tagger.tag_list.index(t.name)] for t in got)


def test_empty_batch_and_bad_images(tagger: RamTagger) -> None:
    assert tagger.tag([]) == []
    assert tagger.scores([]).shape == (0, 32)
    gray = np.full((20, 30), 128, np.uint8)
    rgba = np.dstack([probe_images(1)[0], np.zeros((100, 140), np.uint8)])
    np.testing.assert_allclose(tagger.scores([rgba]), tagger.scores(probe_images(1)), atol=1e-6)
    assert tagger.scores([gray]).shape == (1, 32)
    for bad in (
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 5), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
    ):
        with pytest.raises(ValueError):
            tagger.tag([bad])


def test_constructor_validation(tagger: RamTagger) -> None:
    with pytest.raises(ValueError, match="31 entries"):
        RamTagger(tagger.model, tagger.tag_list[:31], [0.5] * 32)
    with pytest.raises(ValueError, match="thresholds"):
        RamTagger(tagger.model, tagger.tag_list, [0.5] * 3)
    with pytest.raises(ValueError, match="batch_size"):
        RamTagger(tagger.model, tagger.tag_list, [0.5] * 32, batch_size=0)
    with pytest.raises(ValueError, match="threshold_override"):
        RamTagger(tagger.model, tagger.tag_list, [0.5] * 32, threshold_override=1.5)
    with pytest.raises(ValueError, match="RamTaggingModel"):
        RamTagger(torch.nn.Linear(2, 2), tagger.tag_list, [0.5] * 32)


def test_wrong_variant_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        build_ram_model("ram_large")
    assert all(v in str(err.value) for v in RAM_VARIANTS)
    with pytest.raises(ValueError, match="ram_plus_tiny"):
        make_tiny_ram_files(tmp_path, "swin_l")


def test_wrong_checkpoint_keys_are_named(tiny_files, tmp_path: Path) -> None:
    state = torch.load(tiny_files["checkpoint"], weights_only=True)["model"]
    state.pop("fc.bias")
    state["tagging_head.pooler.dense.weight"] = torch.zeros(2, 2)
    state["image_proj.weight"] = torch.zeros(7, 7)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(RamCheckpointError) as err:
        build_ram_model("ram_plus_tiny", path)
    msg = str(err.value)
    assert isinstance(err.value, PermanentError)
    assert "missing keys [fc.bias]" in msg
    assert "unexpected keys [tagging_head.pooler.dense.weight]" in msg
    assert "image_proj.weight: checkpoint (7, 7)" in msg


def test_wrong_variant_for_checkpoint(tiny_files) -> None:
    with pytest.raises(RamCheckpointError, match="reweight_scale"):
        build_ram_model("ram_tiny", tiny_files["checkpoint"])


@pytest.mark.parametrize("variant", ["ram_plus_tiny", "ram_tiny"])
def test_make_tiny_ram_files_is_non_degenerate(variant: str, tiny_files, tmp_path: Path) -> None:
    files = tiny_files if variant == "ram_plus_tiny" else make_tiny_ram_files(tmp_path, variant)
    state = torch.load(files["checkpoint"], weights_only=True)
    assert set(state) == {"model"} and "label_embed" in state["model"]
    names = files["tag_list"].read_text(encoding="utf-8").splitlines()
    assert names == [en for en, _ in TINY_TAGS[:32]] and "cat" in names and "person" in names
    result = _tagger(files, variant, batch_size=8).tag(probe_images(6))
    counts = [len(t) for t in result]
    assert all(1 <= c <= 12 for c in counts), counts
    assert len({tuple(t.name for t in tags) for tags in result}) >= 3


def test_make_tiny_ram_files_is_deterministic(tiny_files, tmp_path: Path) -> None:
    again = make_tiny_ram_files(tmp_path / "again", "ram_plus_tiny")  # same defaults as the fixture
    sa, sb = (torch.load(p["checkpoint"], weights_only=True)["model"] for p in (tiny_files, again))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for name in ("tag_list", "thresholds", "tag_list_chinese"):
        assert tiny_files[name].read_bytes() == again[name].read_bytes()
    with pytest.raises(ValueError, match="num_tags"):
        make_tiny_ram_files(tmp_path / "c", num_tags=1000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(tiny_files, images, scores) -> None:
    gpu = _tagger(tiny_files, "ram_plus_tiny", device="cuda")
    np.testing.assert_allclose(gpu.scores(images), scores, atol=1e-4)


# --- the official 4585-entry lists -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def official_lists() -> tuple[list[str], list[float], list[str] | None]:
    if not (SHARED_RAM / "ram_tag_list.txt").is_file():
        msg = f"official RAM tag lists not found in {SHARED_RAM} (set LABELFLEET_SHARED_DIR)"
        if CI:
            pytest.fail(msg + " (CI=true: shared data must be present)")
        pytest.skip(msg)
    return load_tag_files(
        SHARED_RAM / "ram_tag_list.txt",
        SHARED_RAM / "ram_tag_list_threshold.txt",
        SHARED_RAM / "ram_tag_list_chinese.txt",
    )


def test_official_lists_read_like_upstream(official_lists) -> None:
    for name, digest in OFFICIAL_SHA256.items():
        assert hashlib.sha256((SHARED_RAM / name).read_bytes()).hexdigest() == digest, name
    tags, thresholds, zh = official_lists
    assert zh is not None
    assert len(tags) == len(thresholds) == len(zh) == 4585
    assert len(set(tags)) == 4585 and all(t and t == t.strip() for t in tags)
    assert sum(z.endswith(" ") for z in zh) == 2579  # kept: official output has the double space
    assert thresholds.count(0.65) == 3414
    assert min(thresholds) == 0.45 and tags[thresholds.index(0.45)] == "nebula"
    never = {tags[i] for i, t in enumerate(thresholds) if t == 1.0}
    assert never == {"body", "cocktail table", "French", "group", "lie", "show", "see", "set", "stop", "use"}
    assert tags.index("lamp") < tags.index("carpet")  # tag-list order, not alphabetical


def test_tagger_with_official_lists(official_lists) -> None:
    tags, thresholds, zh = official_lists
    model = build_ram_model("ram_tiny", num_classes=4585)
    assert isinstance(model, RamTaggingModel)
    with torch.no_grad():
        model.label_embed.normal_()  # zeros by default: every tag would get the same score
    tagger = RamTagger(model, tags, thresholds, tag_list_chinese=zh)
    scores = tagger.scores(probe_images(1))
    mid = float(np.median(scores))  # random weights: about half of the 4585 tags pass
    fixed = _fixed(tagger, thresholds, scores, tag_list_chinese=zh, threshold_override=mid)
    (got,), ((en, cn),) = fixed.tag([None]), fixed.tag_strings([None])  # type: ignore[list-item]
    idx = [tags.index(t.name) for t in got]
    assert idx == sorted(idx) and len(idx) == int((scores > np.float32(mid)).sum()) > 0
    assert cn is not None and en.count(" | ") == cn.count(" | ")
    with pytest.raises(ValueError, match="4585"):
        RamTagger(model, tags[:-1], thresholds[:-1])
