"""The storage interface. Implementations: local folder (here), S3 (``labelfleet.storage.s3``)."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from labelfleet.errors import ConfigError
from labelfleet.types import ImageRef


@runtime_checkable
class Source(Protocol):
    """A read-only collection of images addressed by keys relative to ``uri``.

    ``list`` yields every image in a stable order (the same order on every
    call, so an interrupted listing can resume with ``start_after``).
    ``read`` returns the raw bytes; it raises :class:`~labelfleet.errors.ItemSkipped`
    when the object vanished after listing, :class:`~labelfleet.errors.StorageError`
    for transient failures and :class:`~labelfleet.errors.PermanentError` otherwise.
    """

    uri: str
    key_filter: KeyFilter
    #: Filled while :meth:`list` runs (reset at each call).
    report: ListingReport

    def list(self, start_after: str | None = None) -> Iterator[ImageRef]: ...

    def read(self, key: str) -> bytes: ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` when the source is local, else ``None``."""
        ...


def is_hidden(key: str) -> bool:
    """The hidden-file rule: a key is hidden when any of its path parts starts with ``.``
    (``.DS_Store``, ``a/.thumbs/b.jpg``). Hidden keys are skipped unless ``--include-hidden``."""
    return any(part.startswith(".") for part in key.split("/"))


@dataclass
class ListingReport:
    """What a listing saw besides the images it yielded: skips by reason, and images that will fail.

    ``skipped`` counts entries that never become items (``"hidden"``, ``"unsupported format"``,
    ``"unreadable folder"``...); ``problems`` counts listed images that cannot be read (they become
    ``failed`` items with the reason). ``examples`` keeps a few paths per reason for the log.
    """

    images: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self._example(reason, where)

    def problem(self, reason: str, where: str) -> None:
        self.problems[reason] += 1
        self._example(reason, where)

    def _example(self, reason: str, where: str) -> None:
        seen = self.examples.setdefault(reason, [])
        if len(seen) < 3:
            seen.append(where)

    def summary(self) -> str:
        """``"8 images (2 unreadable: 1 symbolic link loop, ...), 4 skipped: 3 unsupported format, 1 hidden"``."""
        out = f"{self.images} image{'s' if self.images != 1 else ''}"
        if self.problems:
            out += f" ({sum(self.problems.values())} unreadable: {_counts(self.problems)})"
        total = sum(self.skipped.values())
        out += f", {total} skipped" + (f": {_counts(self.skipped)}" if total else "")
        return out


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counter.most_common())


class KeyFilter:
    """Include/exclude shell globs on keys (``*.jpg``, ``train/**``). Empty include = all."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = tuple(include)
        self.exclude = tuple(exclude)

    def __call__(self, key: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(key, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(key, p) for p in self.exclude)


def open_source(uri: str, *, include: Sequence[str] = (), exclude: Sequence[str] = (),
                s3_endpoint_url: str | None = None, include_hidden: bool = False,
                read_timeout_s: float | None = None) -> Source:
    """Open ``uri``: a local folder path (or ``file://``) or ``s3://bucket/prefix``.

    ``include_hidden`` lists hidden keys too (see :func:`is_hidden`); ``read_timeout_s`` bounds
    one local read (slow or hung mounts), default :data:`labelfleet.storage.local.READ_TIMEOUT_S`.
    """
    keep = KeyFilter(include, exclude)
    if uri.startswith("s3://"):
        from labelfleet.storage.s3 import S3Source

        src = S3Source(uri, endpoint_url=s3_endpoint_url, key_filter=keep)
        src.include_hidden = include_hidden
        return src
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"unsupported source {uri!r}: use a local folder or s3://bucket/prefix")
    from labelfleet.storage.local import LocalSource

    return LocalSource(uri.removeprefix("file://"), key_filter=keep, include_hidden=include_hidden,
                       read_timeout_s=read_timeout_s)
