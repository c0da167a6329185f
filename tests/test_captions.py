"""Caption building, splitting and token-score → class mapping (pure python, no torch)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from labelfleet.captions import assign_classes, build_caption, class_spans, normalize_class, split_classes


def word_count(caption: str) -> int:
    """Toy tokenizer: whitespace tokens + [CLS] + [SEP]."""
    return len(caption.split()) + 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cat", "cat"),
        ("Cat", "cat"),
        ("  Traffic   Light ", "traffic light"),
        ("t.v.", "tv"),
        ("st. bernard", "st bernard"),
        ("hot\tdog\n", "hot dog"),
        ("Ünïcode Näme", "ünïcode näme"),
    ],
)
def test_normalize_class(name: str, expected: str) -> None:
    assert normalize_class(name) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "class name '' is empty after normalization"),
        ("   ", "class name '   ' is empty after normalization"),
        (" . ", "class name ' . ' is empty after normalization"),
        (3, "class name must be a str, got int"),
        (None, "class name must be a str, got NoneType"),
    ],
)
def test_normalize_class_rejects(name: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_class(name)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("classes", "caption"),
    [
        (["cat"], "cat ."),
        (["cat", "dog", "person"], "cat . dog . person ."),
        (["Cat", " Traffic  Light"], "cat . traffic light ."),
        (("a.b", "c"), "ab . c ."),
    ],
)
def test_build_caption(classes: list[str], caption: str) -> None:
    assert build_caption(classes) == caption


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "classes must not be empty"),
        ("cat", "classes must be a sequence of str, not a single str"),
        (["cat", " "], "class name ' ' is empty after normalization"),
    ],
)
def test_build_caption_rejects(classes: list[str], message: str) -> None:
    with pytest.raises(ValueError) as info:
        build_caption(classes)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("classes", "spans"),
    [
        (["cat"], [(0, 3)]),
        (["cat", "big dog"], [(0, 3), (6, 13)]),
        (["A", "B.", "c  d"], [(0, 1), (4, 5), (8, 11)]),
    ],
)
def test_class_spans(classes: list[str], spans: list[tuple[int, int]]) -> None:
    assert class_spans(classes) == spans
    caption = build_caption(classes)
    assert [caption[s:e] for s, e in spans] == [normalize_class(c) for c in classes]


@pytest.mark.parametrize(
    ("classes", "max_tokens", "chunks"),
    [
        ([], 10, []),
        (["cat"], 10, [["cat"]]),
        # "cat . dog ." = 4 words + 2 specials = 6 tokens
        (["cat", "dog", "cow"], 6, [["cat", "dog"], ["cow"]]),
        (["cat", "dog", "cow"], 8, [["cat", "dog", "cow"]]),
        (["cat", "Cat", "dog", "cat "], 100, [["cat", "dog"]]),
        (["big dog", "cat", "red big car"], 7, [["big dog", "cat"], ["red big car"]]),
        (["a", "b", "c", "d", "e"], 4, [["a"], ["b"], ["c"], ["d"], ["e"]]),
    ],
)
def test_split_classes(classes: list[str], max_tokens: int, chunks: list[list[str]]) -> None:
    assert split_classes(classes, word_count, max_tokens) == chunks


@pytest.mark.parametrize(
    ("classes", "max_tokens", "message"),
    [
        (
            ["cat", "a very long class name"],
            6,
            "class 'a very long class name' alone needs 8 tokens, more than max_tokens=6",
        ),
        (["cat"], 2, "max_tokens must be >= 3, got 2"),
        ("cat", 10, "classes must be a sequence of str, not a single str"),
        (["cat", ""], 10, "class name '' is empty after normalization"),
    ],
)
def test_split_classes_rejects(classes: list[str], max_tokens: int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        split_classes(classes, word_count, max_tokens)
    assert str(info.value) == message


def test_split_classes_random_lists_fit_and_keep_order() -> None:
    rng = random.Random(0)
    for _ in range(50):
        classes = [" ".join(f"w{rng.randrange(30)}" for _ in range(rng.randint(1, 3))) for _ in range(40)]
        max_tokens = rng.randint(8, 40)
        chunks = split_classes(classes, word_count, max_tokens)
        assert all(word_count(build_caption(c)) <= max_tokens for c in chunks)
        flat = [c for chunk in chunks for c in chunk]
        expected = list(dict.fromkeys(normalize_class(c) for c in classes))
        assert [normalize_class(c) for c in flat] == expected
        # greedy: the first class of each following chunk would not have fitted
        for a, b in itertools.pairwise(chunks):
            assert word_count(build_caption([*a, b[0]])) > max_tokens


# caption "cat . big dog ." tokenized as [CLS] cat . big dog . [SEP]
CAPTION = "cat . big dog ."
TOKENS = [(0, 0), (0, 3), (4, 5), (6, 9), (10, 13), (14, 15), (0, 0)]
CLASSES = [(0, 3), (6, 13)]


@pytest.mark.parametrize(
    ("scores", "text_threshold", "class_idx", "phrase"),
    [
        # strongest token "cat" → class 0
        ([0.1, 0.9, 0.1, 0.2, 0.3, 0.1, 0.1], 0.5, 0, "cat"),
        # strongest token "dog" → class 1, phrase only the token above threshold
        ([0.1, 0.2, 0.1, 0.3, 0.8, 0.1, 0.1], 0.5, 1, "dog"),
        ([0.1, 0.2, 0.1, 0.6, 0.8, 0.1, 0.1], 0.5, 1, "big dog"),
        # strongest on "." → class with the best class-token score
        ([0.1, 0.3, 0.95, 0.4, 0.2, 0.1, 0.1], 0.35, 1, "big"),
        # strongest on [CLS]/[SEP] → same rule
        ([0.99, 0.6, 0.1, 0.2, 0.3, 0.1, 0.97], 0.5, 0, "cat"),
        # phrase may span classes (as GroundingDINO's get_phrases_from_posmap)
        ([0.1, 0.7, 0.9, 0.6, 0.65, 0.9, 0.1], 0.5, 0, "cat big dog"),
        # nothing above text threshold → empty phrase; tie → earlier class
        ([0.1, 0.3, 0.1, 0.3, 0.3, 0.1, 0.1], 0.5, 0, ""),
    ],
)
def test_assign_classes(scores: list[float], text_threshold: float, class_idx: int, phrase: str) -> None:
    idx, phrases = assign_classes(
        np.asarray([scores]), TOKENS, CLASSES, caption=CAPTION, text_threshold=text_threshold
    )
    assert idx.dtype == np.int64
    assert idx.tolist() == [class_idx]
    assert phrases == [phrase]


def test_assign_classes_word_pieces_are_joined() -> None:
    caption = "zebra . cat ."  # [CLS] ze ##bra . cat . [SEP]
    tokens = [(0, 0), (0, 2), (2, 5), (6, 7), (8, 11), (12, 13), (0, 0)]
    scores = np.asarray([[0.0, 0.8, 0.9, 0.0, 0.1, 0.0, 0.0], [0.0, 0.1, 0.1, 0.0, 0.7, 0.0, 0.0]])
    idx, phrases = assign_classes(
        scores, tokens, class_spans(["zebra", "cat"]), caption=caption, text_threshold=0.5
    )
    assert idx.tolist() == [0, 1]
    assert phrases == ["zebra", "cat"]


def test_assign_classes_no_boxes() -> None:
    idx, phrases = assign_classes(np.zeros((0, 7)), TOKENS, CLASSES, caption=CAPTION, text_threshold=0.5)
    assert idx.shape == (0,)
    assert phrases == []


@pytest.mark.parametrize(
    ("scores", "tokens", "classes", "message"),
    [
        (np.zeros(7), TOKENS, CLASSES, "token_scores must be 2D (n_boxes, n_tokens), got shape (7,)"),
        (np.zeros((2, 6)), TOKENS, CLASSES, "token_char_spans has 7 spans but token_scores has 6 tokens"),
        (np.zeros((2, 7)), TOKENS, [], "class_char_spans must not be empty"),
    ],
)
def test_assign_classes_rejects(scores: np.ndarray, tokens: list, classes: list, message: str) -> None:
    with pytest.raises(ValueError) as info:
        assign_classes(scores, tokens, classes, caption=CAPTION, text_threshold=0.5)
    assert str(info.value) == message
