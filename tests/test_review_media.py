"""Media cache for remote sources: safe names, never outside <root>/media/<job>/, fetched once."""

from __future__ import annotations

from pathlib import Path

from labelfleet.storage.s3 import S3Source
from orchestrator.review.media import MediaCache, safe_name


class CountingS3(S3Source):
    """The real S3 source (moto server on loopback) that also counts its reads."""

    def __init__(self, uri: str, endpoint: str) -> None:
        super().__init__(uri, endpoint_url=endpoint)
        self.reads: list[str] = []

    def read(self, key: str) -> bytes:
        self.reads.append(key)
        return super().read(key)


def test_remote_keys_are_cached_safely_and_once(tmp_path: Path, s3_endpoint: str) -> None:
    import boto3

    keys = ["a/b.jpg", "../../etc/passwd", "x/../../y z.png", ".hidden.jpg", "a/b.jpg"]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="media-cache")
    for key in keys:
        s3.put_object(Bucket="media-cache", Key="prefix/" + key, Body=b"img:" + key.encode())
    src = CountingS3("s3://media-cache/prefix", s3_endpoint)
    cache = MediaCache(src, tmp_path, "../evil job")
    paths = [cache.path(k) for k in keys]
    root = (tmp_path / "media").resolve()
    assert all(p.parent == cache.folder and root in p.parents for p in paths)
    assert paths[0] == paths[4] and len(set(paths)) == 4
    assert src.reads == keys[:4]  # the repeated key was not fetched again
    assert paths[1].read_bytes() == b"img:../../etc/passwd"
    assert all(not p.name.startswith(".") for p in paths)
    assert safe_name("a/b.jpg") != safe_name("c/b.jpg")
