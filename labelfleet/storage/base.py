"""The storage interface. Implementations: local folder (here), S3 (``labelfleet.storage.s3``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
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

    def list(self, start_after: str | None = None) -> Iterator[ImageRef]: ...

    def read(self, key: str) -> bytes: ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` when the source is local, else ``None``."""
        ...


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
                s3_endpoint_url: str | None = None) -> Source:
    """Open ``uri``: a local folder path (or ``file://``) or ``s3://bucket/prefix``."""
    keep = KeyFilter(include, exclude)
    if uri.startswith("s3://"):
        from labelfleet.storage.s3 import S3Source

        return S3Source(uri, endpoint_url=s3_endpoint_url, key_filter=keep)
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"unsupported source {uri!r}: use a local folder or s3://bucket/prefix")
    from labelfleet.storage.local import LocalSource

    return LocalSource(uri.removeprefix("file://"), key_filter=keep)
