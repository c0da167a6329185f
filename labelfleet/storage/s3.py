"""S3 (or MinIO / any S3-compatible store) as a :class:`~labelfleet.storage.base.Source`.

boto3 is imported lazily, so the core stays importable without it. Keys are
relative to the prefix (``s3://bucket/photos/`` + ``a/b.jpg``). Listing is
paginated and streamed (never all keys in memory) in S3's lexicographic key
order, so ``start_after`` resumes an interrupted listing; sub-prefixes are fetched
in parallel (:mod:`labelfleet.storage.s3_listing`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from labelfleet.errors import ConfigError, ItemSkipped, PermanentError, StorageError
from labelfleet.images import is_image_key, unsupported_reason
from labelfleet.storage.base import KeyFilter, ListingReport, is_hidden
from labelfleet.storage.s3_listing import list_objects
from labelfleet.types import ImageRef

logger = logging.getLogger(__name__)
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "AllAccessDisabled", "InvalidObjectState"}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")`` (prefix empty or ending in ``/``)."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(f"S3 URI {uri!r} has no bucket name")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


class S3Source:
    """Images under ``s3://bucket/prefix`` (default AWS credential chain; ``endpoint_url`` for MinIO)."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None, key_filter: KeyFilter | None = None,
                 client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}"
        self.key_filter = key_filter or KeyFilter()
        self._client = client
        self._lock = threading.Lock()
        self.endpoint_url = endpoint_url
        self.include_hidden = False  # see labelfleet.storage.base.is_hidden
        self.list_workers = 4  # threads listing sub-prefixes at once (1: one sequential stream)
        self.report = ListingReport()

    @property
    def client(self) -> Any:
        with self._lock:  # boto3's default session is not thread-safe; decode threads share this client
            if self._client is None:
                import boto3
                from botocore.config import Config

                cfg = Config(retries={"max_attempts": 8, "mode": "adaptive"}, connect_timeout=10, read_timeout=60,
                             max_pool_connections=32)
                session = boto3.session.Session()
                # Timestamps (LastModified) stay the strings S3 sent: nothing reads them, and parsing one
                # with dateutil per listed key was 60% of a listing's client time.
                session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
                self._client = session.client("s3", endpoint_url=self.endpoint_url, config=cfg)
            return self._client

    def list(self, start_after: str | None = None) -> Iterator[ImageRef]:
        """Yield image refs in key order, after ``start_after`` (a relative key).

        Sub-prefixes are listed in parallel (``list_workers`` threads) and merged back into key
        order, see :mod:`labelfleet.storage.s3_listing`.
        """
        self.report = report = ListingReport()
        objects = list_objects(self.client, self.bucket, self.prefix, workers=self.list_workers,
                               start_after=self.prefix + start_after if start_after else None)
        try:
            for obj in objects:
                key = obj["Key"][len(self.prefix):]
                if not key or key.endswith("/"):
                    continue
                reason = ("hidden" if is_hidden(key) and not self.include_hidden else
                          unsupported_reason(key) if not is_image_key(key) else
                          "excluded by --include/--exclude" if not self.key_filter(key) else None)
                if reason is not None:
                    report.skip(reason, key)
                    continue
                report.images += 1
                yield ImageRef(self.uri, key, int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'))
        except Exception as exc:
            _reraise(exc, f"listing {self.uri}")
        finally:
            objects.close()

    def read(self, key: str) -> bytes:
        return self.read_versioned(key)[0]

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and the ETag S3 returned with them (unquoted).

        The object may have been overwritten since it was listed; callers record
        this ETag (and the bytes' sha256) so the database says what was labelled.
        """
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            return bytes(resp["Body"].read()), str(resp.get("ETag", "")).strip('"')
        except Exception as exc:
            _reraise(exc, f"s3://{self.bucket}/{self.prefix}{key}")
            raise  # unreachable: _reraise always raises

    def local_path(self, key: str) -> Path | None:
        return None


def _reraise(exc: Exception, what: str) -> None:
    err = _translate(exc, what)
    if err is exc:
        raise exc
    raise err from exc


def _translate(exc: Exception, what: str) -> Exception:
    """Map botocore errors to skipped / permanent / retryable labelfleet errors."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _MISSING:
            return ItemSkipped(f"object no longer exists: {what} ({code})")
        if code in _DENIED:
            return PermanentError(f"access denied: {what} ({code})")
        if code == "NoSuchBucket":
            return ConfigError(f"bucket does not exist: {what}")
        if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout", "ThrottlingException"):
            return StorageError(f"S3 temporarily failed on {what}: {code}")
        return PermanentError(f"S3 error on {what}: {code}: {exc}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"cannot reach S3 for {what}: {exc}")
    return exc
