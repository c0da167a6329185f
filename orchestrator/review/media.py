"""Local file paths for a job's images: the source file itself, or a copy in a media cache.

FiftyOne serves media from the local filesystem. Local sources are used in place;
remote ones (``s3://``) are fetched once into ``<media_root>/media/<job>/`` under
safe file names (hash of the key + sanitized base name), never outside that folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from labelfleet.errors import PermanentError
from labelfleet.storage.base import Source

logger = logging.getLogger(__name__)


def safe_name(key: str) -> str:
    """A flat, safe, collision-free file name for a source key: ``a/../b c.jpg`` -> ``<hash16>_b_c.jpg``."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", key.rsplit("/", 1)[-1]).lstrip(".")[-100:] or "image"
    return f"{hashlib.sha256(key.encode()).hexdigest()[:16]}_{base}"


class MediaCache:
    """Resolves item keys of one job to local image paths.

    Args:
        source: the job's opened :class:`~labelfleet.storage.base.Source`.
        media_root: folder holding ``media/<job>/`` (e.g. the model dir); only used for remote sources.
        job_name: the job, used as a (sanitized) sub-folder name.
    """

    def __init__(self, source: Source, media_root: Path, job_name: str) -> None:
        self.source = source
        self.folder = (Path(media_root).expanduser() / "media" / safe_name(job_name)).resolve()

    def path(self, key: str) -> Path:
        """Local path of ``key``: the source file, or the cached copy (fetched if missing)."""
        local = self.source.local_path(key)
        if local is not None:
            return Path(local)
        target = (self.folder / safe_name(key)).resolve()
        if target.parent != self.folder:
            raise PermanentError(f"refusing to cache {key!r} outside {self.folder}")
        if not target.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            data = self.source.read(key)
            tmp = target.with_name(target.name + f".{os.getpid()}.part")
            tmp.write_bytes(data)
            tmp.replace(target)
            logger.debug("cached %s -> %s (%d bytes)", key, target, len(data))
        return target
