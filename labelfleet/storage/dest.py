"""Write-once destinations for edit outputs: a local folder or an ``s3://bucket/prefix``.

``put_new`` never overwrites: a key that already exists is left alone and
reported (``False``), so re-running a job or redelivering a chunk rewrites nothing.
Local files appear atomically (written to a temporary name, then hard-linked
into place, which fails if the name exists); on S3 a conditional
``PutObject`` (``If-None-Match: *``) refuses an existing key.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from labelfleet.errors import ConfigError, PermanentError
from labelfleet.storage.s3 import _reraise, parse_s3_uri

logger = logging.getLogger(__name__)


class Destination(Protocol):
    """Where outputs go; keys are POSIX paths relative to ``uri``."""

    uri: str

    def uri_for(self, key: str) -> str: ...

    def exists(self, key: str) -> bool: ...

    def put_new(self, key: str, data: bytes, content_type: str = "image/png") -> bool:
        """Store ``data`` under ``key`` unless the key exists; True if this call wrote it."""
        ...

    def read(self, key: str) -> bytes: ...

    def local_path(self, key: str) -> Path | None:
        """A filesystem path for ``key`` when the destination is local, else ``None``."""
        ...


def _check_key(key: str) -> None:
    if key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise PermanentError(f"unsafe output key {key!r}")


class LocalDestination:
    """A folder (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} exists and is not a folder")
        self.uri = str(self.root)

    def path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def uri_for(self, key: str) -> str:
        return str(self.path(key))

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def put_new(self, key: str, data: bytes, content_type: str = "image/png") -> bool:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def read(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def local_path(self, key: str) -> Path:
        return self.path(key)


class S3Destination:
    """``s3://bucket/prefix`` (boto3 imported lazily; ``endpoint_url`` for MinIO / moto)."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.endpoint_url = endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url)
            return self._client

    def uri_for(self, key: str) -> str:
        _check_key(key)
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        _check_key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            return True
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            _reraise(exc, self.uri_for(key))
            raise

    def put_new(self, key: str, data: bytes, content_type: str = "image/png") -> bool:
        from botocore.exceptions import ClientError

        if self.exists(key):  # also covers stores that ignore If-None-Match
            return False
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, ContentType=content_type,
                                   IfNoneMatch="*")
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("PreconditionFailed", "412",
                                                                   "ConditionalRequestConflict"):
                return False
            _reraise(exc, self.uri_for(key))
        return True

    def read(self, key: str) -> bytes:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read())
        except Exception as exc:
            _reraise(exc, self.uri_for(key))
            raise

    def local_path(self, key: str) -> Path | None:
        return None


def open_destination(uri: str, *, s3_endpoint_url: str | None = None) -> Destination:
    """A local folder path (or ``file://``) or ``s3://bucket/prefix``."""
    if uri.startswith("s3://"):
        return S3Destination(uri, endpoint_url=s3_endpoint_url)
    if "://" in uri and not uri.startswith("file://"):
        raise ConfigError(f"unsupported --out {uri!r}: use a local folder or s3://bucket/prefix")
    return LocalDestination(uri.removeprefix("file://"))
