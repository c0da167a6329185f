"""Sources: local folder listing/reading, S3 URI parsing and error mapping (skipped / failed / retryable)."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from labelfleet.errors import ConfigError, ItemSkipped, PermanentError, StorageError
from labelfleet.storage import open_source
from labelfleet.storage.s3 import _translate, parse_s3_uri


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


ERRORS = [
    (_client_error("NoSuchKey", 404), ItemSkipped, "object no longer exists: s3://b/k.jpg (NoSuchKey)"),
    (_client_error("AccessDenied", 403), PermanentError, "access denied: s3://b/k.jpg (AccessDenied)"),
    (_client_error("NoSuchBucket", 404), ConfigError, "bucket does not exist: s3://b/k.jpg"),
    (_client_error("SlowDown", 503), StorageError, "S3 temporarily failed on s3://b/k.jpg: SlowDown"),
    (_client_error("InternalError", 500), StorageError, "S3 temporarily failed on s3://b/k.jpg: InternalError"),
    (EndpointConnectionError(endpoint_url="http://x"), StorageError, "cannot reach S3 for s3://b/k.jpg"),
]


@pytest.mark.parametrize(("exc", "kind", "message"), ERRORS, ids=[m[:30] for _, _, m in ERRORS])
def test_s3_error_mapping(exc: Exception, kind: type, message: str) -> None:
    err = _translate(exc, "s3://b/k.jpg")
    assert type(err) is kind and err.message.startswith(message)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("uri", "expected"), [("s3://b", ("b", "")), ("s3://b/p", ("b", "p/")),
                                               ("s3://b/p/q/", ("b", "p/q/"))])
def test_parse_s3_uri(uri: str, expected: tuple[str, str]) -> None:
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize(("uri", "message"), [("s3://", "S3 URI 's3://' has no bucket name"),
                                              ("gs://b/x", "unsupported source 'gs://b/x'")])
def test_bad_uris(uri: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_source(uri)
    assert info.value.message.startswith(message)


def test_local_source(tmp_path: Path) -> None:
    for rel in ("b.jpg", "a/c.PNG", "a/.hidden.jpg", ".cache/d.jpg", "notes.txt", "a/z y é.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    src = open_source(str(tmp_path))
    keys = [r.key for r in src.list()]
    assert keys == ["a/c.PNG", "a/z y é.jpg", "b.jpg"]
    assert [r.key for r in src.list(start_after="a/c.PNG")] == ["a/z y é.jpg", "b.jpg"]
    assert [r.key for r in open_source(str(tmp_path), include=["a/*"], exclude=["*.PNG"]).list()] == ["a/z y é.jpg"]
    assert src.read("b.jpg") == b"x"
    (tmp_path / "b.jpg").unlink()
    with pytest.raises(ItemSkipped, match="file was removed after listing"):
        src.read("b.jpg")
    with pytest.raises(PermanentError, match="points outside the source folder"):
        src.read("../etc/passwd")
    with pytest.raises(ConfigError, match="does not exist or is not a folder"):
        open_source(str(tmp_path / "missing"))


def test_symlinked_image_is_read(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.jpg").write_bytes(b"img")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link.jpg").symlink_to(tmp_path / "elsewhere" / "x.jpg")
    src = open_source(str(tmp_path / "root"))
    assert [r.key for r in src.list()] == ["link.jpg"] and src.read("link.jpg") == b"img"
