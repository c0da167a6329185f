"""Fine-tuned checkpoints named by a cluster job: ``s3://bucket/key`` + sha256, verified before loading.

A job may replace a stage's official checkpoint (``labelfleet submit --checkpoint
detector=s3://bucket/gdino-ft.pth@<sha256>``). Each worker downloads the object
once into ``<model_dir>/checkpoints/<sha256>/<name>``, hashing the bytes as they
arrive, and refuses a file whose sha256 differs from the one the job names
(:class:`~labelfleet.errors.ChecksumError`: the job's items fail with the reason).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

from labelfleet.errors import ChecksumError

logger = logging.getLogger(__name__)
_CHUNK = 8 << 20


def fetch_checkpoint(uri: str, sha256: str, root: Path, *, endpoint_url: str | None = None) -> Path:
    """The verified local copy of ``uri`` (downloaded on first use); ChecksumError on a sha256 mismatch."""
    from labelfleet.storage.s3 import S3Source, _translate

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    dest = root / "checkpoints" / sha256 / PurePosixPath(key).name
    if dest.is_file():
        return dest  # only ever renamed into place after its sha256 matched
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        body: Any = S3Source(f"s3://{bucket}/", endpoint_url=endpoint_url).client.get_object(
            Bucket=bucket, Key=key)["Body"]
        with open(tmp, "wb") as out:
            for chunk in iter(lambda: body.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        err = _translate(exc, uri) if not isinstance(exc, OSError) else exc
        raise err from exc
    if digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise ChecksumError(f"checkpoint {uri} has sha256 {digest.hexdigest()}, but the job names {sha256}: "
                            "refusing to load it")
    os.replace(tmp, dest)
    logger.info("fetched checkpoint %s (sha256 %s)", uri, sha256)
    return dest
