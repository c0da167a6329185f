"""Media cache for remote sources: safe names, never outside <root>/media/<job>/, fetched once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from labelfleet.types import ImageRef
from orchestrator.review.media import MediaCache, safe_name


class FakeRemote:
    """A remote-like Source: no local paths, counts reads."""

    uri = "s3://bucket/prefix"

    def __init__(self) -> None:
        self.reads: list[str] = []

    def list(self, start_after: str | None = None) -> Iterator[ImageRef]:
        return iter(())

    def read(self, key: str) -> bytes:
        self.reads.append(key)
        return b"img:" + key.encode()

    def local_path(self, key: str) -> Path | None:
        return None


def test_remote_keys_are_cached_safely_and_once(tmp_path: Path) -> None:
    src = FakeRemote()
    cache = MediaCache(src, tmp_path, "../evil job")
    keys = ["a/b.jpg", "../../etc/passwd", "x/../../y z.png", ".hidden.jpg", "a/b.jpg"]
    paths = [cache.path(k) for k in keys]
    root = (tmp_path / "media").resolve()
    assert all(p.parent == cache.folder and root in p.parents for p in paths)
    assert paths[0] == paths[4] and len(set(paths)) == 4
    assert src.reads == keys[:4]  # the repeated key was not fetched again
    assert paths[1].read_bytes() == b"img:../../etc/passwd"
    assert all(not p.name.startswith(".") for p in paths)
    assert safe_name("a/b.jpg") != safe_name("c/b.jpg")
