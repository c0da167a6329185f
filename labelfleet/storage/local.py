"""A local folder as a :class:`~labelfleet.storage.base.Source`, robust against what filesystems hold.

Listing never crashes: symbolic link loops, dangling links, named pipes, sockets, devices and
unreadable files are listed (they become ``failed`` items with the reason when read), unreadable
or symlinked folders, hidden entries and other formats are counted in :attr:`LocalSource.report`.
Reads never open anything but a regular file (a FIFO named ``pipe.jpg`` cannot block) and give up
after ``read_timeout_s`` (slow or hung mounts), or at once after :func:`abort_reads` (Ctrl-C).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from labelfleet.errors import ConfigError, ItemSkipped, PermanentError, StorageError
from labelfleet.images import is_image_key, unsupported_reason
from labelfleet.storage.base import KeyFilter, ListingReport
from labelfleet.types import ImageRef

logger = logging.getLogger(__name__)

#: Default limit of one file read, seconds (``LABELFLEET_READ_TIMEOUT_S``).
READ_TIMEOUT_S = 120.0
_ABORT = threading.Event()
_KINDS = {stat.S_IFIFO: "named pipe (FIFO)", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
          stat.S_IFBLK: "block device", stat.S_IFDIR: "folder"}


def abort_reads() -> None:
    """Make every read still waiting on a slow file give up now (called on Ctrl-C)."""
    _ABORT.set()


def _not_regular(mode: int) -> str | None:
    """None for a regular file, else what it is (``"named pipe (FIFO)"``, ``"socket"``...)."""
    return None if stat.S_ISREG(mode) else _KINDS.get(stat.S_IFMT(mode), "special file")


def _join(rel: Path, name: str) -> str:
    return (rel / name).as_posix() if rel.parts else name


def diagnose(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image file (None when it is a regular file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"dangling symbolic link (points to {os.readlink(path)!r}, which does not exist)"
        return "file was removed after listing"
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop (too many levels of symbolic links)"
        return f"cannot read file information ({exc.strerror or exc})"
    kind = _not_regular(st.st_mode)
    return None if kind is None else f"not a regular file but a {kind}; it is never opened"


class LocalSource:
    """Images under a folder, recursively; keys are POSIX paths relative to the root. Order: sorted by key.

    Hidden rule: a file or folder whose name starts with ``.`` is skipped (and counted) unless
    ``include_hidden``. Only known image extensions are listed; other files count as
    ``unsupported format``. Symlinked files are followed, symlinked folders are not (counted).
    ``ImageRef.etag`` is ``"<size>-<mtime_ns>"`` so ``label --changed`` can find edited files.
    """

    def __init__(self, root: str | Path, key_filter: KeyFilter | None = None, *, include_hidden: bool = False,
                 read_timeout_s: float | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ConfigError(f"source folder {self.root} does not exist or is not a folder")
        self.uri = str(self.root)
        self.key_filter = key_filter or KeyFilter()
        self.include_hidden = include_hidden
        self.read_timeout_s = READ_TIMEOUT_S if read_timeout_s is None else read_timeout_s
        self.report = ListingReport()

    def _walk(self) -> Iterator[str]:
        report = self.report

        def unreadable(err: OSError) -> None:
            where = Path(err.filename or self.root)
            rel = where.relative_to(self.root).as_posix() if where != self.root else "."
            report.skip("unreadable folder", f"{rel}/ ({err.strerror})")
            logger.info("cannot list folder %s: %s", where, err.strerror or err)

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable):
            rel = Path(dirpath).relative_to(self.root)
            kept = []
            for d in sorted(dirnames):
                if d.startswith(".") and not self.include_hidden:
                    report.skip("hidden", _join(rel, d) + "/")
                elif os.path.islink(os.path.join(dirpath, d)):
                    report.skip("symlinked folder (not followed)", _join(rel, d) + "/")
                else:
                    kept.append(d)
            dirnames[:] = kept
            for name in filenames:
                if name.startswith(".") and not self.include_hidden:
                    report.skip("hidden", _join(rel, name))
                elif not is_image_key(name):
                    report.skip(unsupported_reason(name), _join(rel, name))
                else:
                    yield _join(rel, name)

    def list(self, start_after: str | None = None) -> Iterator[ImageRef]:
        """Yield image refs in key order, only those after ``start_after`` if given (fills :attr:`report`)."""
        self.report = report = ListingReport()
        for key in sorted(self._walk()):
            if start_after is not None and key <= start_after:
                continue
            if not self.key_filter(key):
                report.skip("excluded by --include/--exclude", key)
                continue
            path = self.root / key
            problem = diagnose(path)
            if problem == "file was removed after listing":
                continue
            size = etag = None
            if problem is None:
                try:
                    st = path.stat()
                    size, etag = st.st_size, f"{st.st_size}-{st.st_mtime_ns}"
                except OSError as exc:  # changed since diagnose(): the read reports it
                    problem = str(exc.strerror or exc)
            if problem is not None:
                report.problem(problem.split(" (", 1)[0].split(";", 1)[0], key)
            report.images += 1
            yield ImageRef(source_uri=self.uri, key=key, size=size, etag=etag)

    def local_path(self, key: str) -> Path:
        """``root / key``; keys that climb out with ``..`` are refused (symlinked images are fine)."""
        path = Path(os.path.normpath(self.root / key))
        if self.root not in path.parents:
            raise PermanentError(f"key {key!r} points outside the source folder")
        return path

    def read(self, key: str) -> bytes:
        """The file's bytes. Never opens a non-regular file; gives up after ``read_timeout_s``."""
        return read_file(self.local_path(key), self.read_timeout_s)


def read_file(path: Path, timeout_s: float) -> bytes:
    """Read a regular file in a daemon thread, waiting at most ``timeout_s`` (a hung read cannot block exit).

    Raises ItemSkipped (removed), PermanentError (not a regular file, dangling link, loop,
    permission denied) or StorageError (timeout, I/O error: may work later).
    """
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["data"] = _read_regular(path)
        except BaseException as exc:  # handed to the caller's thread
            result["exc"] = exc

    thread = threading.Thread(target=work, name=f"read:{path.name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive():
        left = deadline - time.monotonic()
        if _ABORT.is_set():
            raise StorageError(f"read of {path} abandoned: interrupted")
        if left <= 0:
            raise StorageError(f"reading {path} took longer than {timeout_s:g} s (slow or hung mount?); "
                               "raise LABELFLEET_READ_TIMEOUT_S if the storage is just slow")
        thread.join(min(0.25, left))
    if "exc" in result:
        raise result["exc"]  # type: ignore[misc]
    return result["data"]  # type: ignore[return-value]


def _read_regular(path: Path) -> bytes:
    problem = diagnose(path)
    if problem == "file was removed after listing":
        raise ItemSkipped(f"file was removed after listing: {path}")
    if problem is not None:
        raise PermanentError(problem)
    try:  # O_NONBLOCK: should it have become a FIFO since the check, opening still returns at once
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise ItemSkipped(f"file was removed after listing: {path}") from exc
    except PermissionError as exc:
        raise PermanentError("permission denied") from exc
    except OSError as exc:
        raise StorageError(f"cannot open {path}: {exc.strerror or exc}") from exc
    try:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind is not None:
            raise PermanentError(f"not a regular file but a {kind}; it is never read")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except IsADirectoryError as exc:
        raise PermanentError(f"{path} is a folder, not an image") from exc
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
