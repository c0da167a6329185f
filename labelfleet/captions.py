"""GroundingDINO text prompts: class lists ⇄ captions, and token scores → classes.

Pure python + numpy (no torch, no tokenizer import): the tokenizer enters only
as a ``count_tokens`` callable and as token character spans, so this module is
testable with toy tokenizers.

A *caption* is the GroundingDINO prompt for a list of classes::

    build_caption(["Cat", "traffic  light"]) == "cat . traffic light ."

GroundingDINO scores every (query, text token) pair. :func:`assign_classes`
turns those token scores back into one class per box plus the matched
"phrase", using character spans: ``class_spans`` gives where each class sits
in the caption, and the tokenizer's offset mapping gives where each token sits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

#: Separator between classes inside a caption (GroundingDINO's convention).
SEPARATOR = " . "
#: GroundingDINO's hard limit on text tokens, [CLS] and [SEP] included.
MAX_TEXT_TOKENS = 256

_WS = re.compile(r"\s+")


def normalize_class(name: str) -> str:
    """Canonical caption form of a class name.

    Lower-cases, removes ``.`` (the caption separator), strips and collapses
    whitespace: ``"  Traffic   Light. "`` → ``"traffic light"``.

    Raises:
        ValueError: if ``name`` is not a ``str`` or nothing is left.
    """
    if not isinstance(name, str):
        raise ValueError(f"class name must be a str, got {type(name).__name__}")
    out = _WS.sub(" ", name.replace(".", "")).strip().lower()
    if not out:
        raise ValueError(f"class name {name!r} is empty after normalization")
    return out


def _dedupe(classes: Sequence[str]) -> list[str]:
    """Drop classes whose normalized form was already seen; keep first spelling and order."""
    if isinstance(classes, str):
        raise ValueError("classes must be a sequence of str, not a single str")
    seen: set[str] = set()
    out: list[str] = []
    for c in classes:
        key = normalize_class(c)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def build_caption(classes: Sequence[str]) -> str:
    """``["Cat", "dog"]`` → ``"cat . dog ."`` (normalized, ``" . "``-separated, ending in ``" ."``).

    Classes are used as given (no dedupe), so indexes line up with
    :func:`class_spans`.

    Raises:
        ValueError: on an empty list, a bare string, or an empty class name.
    """
    if isinstance(classes, str):
        raise ValueError("classes must be a sequence of str, not a single str")
    if len(classes) == 0:
        raise ValueError("classes must not be empty")
    return SEPARATOR.join(normalize_class(c) for c in classes) + " ."


def class_spans(classes: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of each class inside ``build_caption(classes)``.

    Example: ``class_spans(["cat", "big dog"]) == [(0, 3), (6, 13)]`` for the
    caption ``"cat . big dog ."``.
    """
    build_caption(classes)  # validates
    spans: list[tuple[int, int]] = []
    pos = 0
    for c in classes:
        name = normalize_class(c)
        spans.append((pos, pos + len(name)))
        pos += len(name) + len(SEPARATOR)
    return spans


def split_classes(
    classes: Sequence[str], count_tokens: Callable[[str], int], max_tokens: int = MAX_TEXT_TOKENS
) -> list[list[str]]:
    """Split classes greedily into chunks whose caption fits in ``max_tokens``.

    Args:
        classes: class names; duplicates (after :func:`normalize_class`) are
            dropped, keeping the first spelling and the order.
        count_tokens: number of tokens of a caption *including* [CLS]/[SEP],
            e.g. ``lambda s: len(tokenizer(s).input_ids)``.
        max_tokens: token budget per caption (GroundingDINO: 256).

    Returns:
        Non-empty chunks (original spellings) in order; ``[]`` for no classes.

    Raises:
        ValueError: if ``max_tokens < 3`` or one class alone does not fit.
    """
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be >= 3, got {max_tokens}")
    chunks: list[list[str]] = []
    current: list[str] = []
    for c in _dedupe(classes):
        if current and count_tokens(build_caption([*current, c])) <= max_tokens:
            current.append(c)
            continue
        alone = count_tokens(build_caption([c]))
        if alone > max_tokens:
            raise ValueError(f"class {c!r} alone needs {alone} tokens, more than max_tokens={max_tokens}")
        if current:
            chunks.append(current)
        current = [c]
    if current:
        chunks.append(current)
    if len(chunks) > 1:
        logger.debug("split %d classes into %d captions", sum(map(len, chunks)), len(chunks))
    return chunks


def _token_class_matrix(
    token_char_spans: Sequence[tuple[int, int]], class_char_spans: Sequence[tuple[int, int]]
) -> npt.NDArray[np.bool_]:
    """``(n_classes, n_tokens)`` bool: token lies inside the class span (empty spans never do)."""
    tok = np.asarray(token_char_spans, dtype=np.int64).reshape(-1, 2)
    cls = np.asarray(class_char_spans, dtype=np.int64).reshape(-1, 2)
    nonempty = tok[:, 1] > tok[:, 0]
    inside = (tok[None, :, 0] >= cls[:, None, 0]) & (tok[None, :, 1] <= cls[:, None, 1])
    return inside & nonempty[None, :]


def _phrase(caption: str, spans: npt.NDArray[np.int64]) -> str:
    """Join the caption text of ``spans`` (k, 2); adjacent spans (word pieces) join without a space."""
    parts: list[str] = []
    prev_end = -1
    for start, end in spans:
        text = caption[int(start) : int(end)]
        if parts and int(start) == prev_end:
            parts[-1] += text
        else:
            parts.append(text)
        prev_end = int(end)
    return " ".join(parts)


def assign_classes(
    token_scores: npt.NDArray[Any],
    token_char_spans: Sequence[tuple[int, int]],
    class_char_spans: Sequence[tuple[int, int]],
    *,
    caption: str,
    text_threshold: float,
) -> tuple[npt.NDArray[np.int64], list[str]]:
    r"""Map each box to one class and extract its matched phrase.

    Args:
        token_scores: ``(n_boxes, n_tokens)`` float sigmoid scores per box and
            caption token (token ``j`` = ``j``-th token of the tokenized caption,
            [CLS] at 0).
        token_char_spans: ``n_tokens`` ``(start, end)`` character offsets of each
            token in ``caption`` (the fast tokenizer's ``offset_mapping``);
            specials have an empty span ``(0, 0)``.
        class_char_spans: :func:`class_spans` of the caption's classes.
        caption: the caption text (for phrases).
        text_threshold: tokens scoring above it form the phrase.

    Returns:
        ``class_idx``: ``(n_boxes,)`` int64 index into the class list — the class
        whose tokens hold the highest score for that box (so a box whose
        overall best token is "." or a special still gets the class with the
        best class-token score; ties → the earlier class);
        ``phrases``: per box, the caption text of its *class* tokens scoring
        above ``text_threshold`` (``""`` if none), cut from the caption by
        character spans (word pieces re-joined).

    This deliberately differs from GroundingDINO's ``get_phrases_from_posmap``
    (used by Grounded-SAM's demos), which ``tokenizer.decode``\ s *every*
    token above the threshold, [CLS], [SEP] and the ``.`` separators
    included (e.g. ``"[CLS] cat . dog"``), and lower-cases through the
    tokenizer. Here the phrase only holds class text, and the class is the
    one whose tokens score highest, not the one the phrase names.

    Raises:
        ValueError: on shape mismatches or an empty class list.
    """
    scores = np.asarray(token_scores, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"token_scores must be 2D (n_boxes, n_tokens), got shape {scores.shape}")
    if len(token_char_spans) != scores.shape[1]:
        raise ValueError(
            f"token_char_spans has {len(token_char_spans)} spans "
            f"but token_scores has {scores.shape[1]} tokens"
        )
    if len(class_char_spans) == 0:
        raise ValueError("class_char_spans must not be empty")
    member = _token_class_matrix(token_char_spans, class_char_spans)  # (C, T)
    masked = np.where(member[None, :, :], scores[:, None, :], -np.inf)  # (B, C, T)
    per_class = masked.max(axis=2) if scores.shape[1] else np.full((len(scores), len(member)), -np.inf)
    class_idx = per_class.argmax(axis=1).astype(np.int64)
    tok_spans = np.asarray(token_char_spans, dtype=np.int64).reshape(-1, 2)
    in_any_class = member.any(axis=0)
    phrases = [_phrase(caption, tok_spans[(row > text_threshold) & in_any_class]) for row in scores]
    return class_idx, phrases
