"""A local folder as a :class:`~labelfleet.storage.base.Source`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from labelfleet.errors import ConfigError, ItemSkipped, PermanentError, StorageError
from labelfleet.images import is_image_key
from labelfleet.storage.base import KeyFilter
from labelfleet.types import ImageRef


class LocalSource:
    """Images under a folder, recursively; keys are POSIX paths relative to the root.

    Hidden files and folders (names starting with ``.``) are ignored; only
    known image extensions are listed. Order: sorted by key.
    """

    def __init__(self, root: str | Path, key_filter: KeyFilter | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ConfigError(f"source folder {self.root} does not exist or is not a folder")
        self.uri = str(self.root)
        self.key_filter = key_filter or KeyFilter()

    def _walk(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if name.startswith(".") or not is_image_key(name):
                    continue
                yield (rel / name).as_posix() if rel.parts else name

    def list(self, start_after: str | None = None) -> Iterator[ImageRef]:
        """Yield image refs in key order, only those after ``start_after`` if given."""
        for key in sorted(self._walk()):
            if (start_after is not None and key <= start_after) or not self.key_filter(key):
                continue
            path = self.root / key
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            yield ImageRef(source_uri=self.uri, key=key, size=size)

    def local_path(self, key: str) -> Path:
        """``root / key``; keys that climb out with ``..`` are refused (symlinked images are fine)."""
        path = Path(os.path.normpath(self.root / key))
        if self.root not in path.parents:
            raise PermanentError(f"key {key!r} points outside the source folder")
        return path

    def read(self, key: str) -> bytes:
        path = self.local_path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ItemSkipped(f"file was removed after listing: {path}") from exc
        except PermissionError as exc:
            raise PermanentError(f"permission denied reading {path}") from exc
        except IsADirectoryError as exc:
            raise PermanentError(f"{path} is a folder, not an image") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
