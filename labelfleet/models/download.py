"""Resumable, checksummed downloads into the model cache (stdlib + rich, no torch).

Layout: ``<model_dir>/<filename>``; a partial download is ``<filename>.part``
and is resumed with an HTTP ``Range`` request. A finished file is checked
against its pinned sha256 before it is renamed into place. The only files without
a pinned sha256 are small config files of a commit-pinned repository
(:func:`~labelfleet.models.catalog.revision_pinned_config`): they are fetched whole
(checked against Content-Length) and their observed sha256 is written next to them.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from labelfleet.errors import ChecksumError, ModelUnavailableError
from labelfleet.models.catalog import NO_DIGEST, ModelFile, revision_pinned_config

logger = logging.getLogger(__name__)
CHUNK = 1 << 20
#: Called with (bytes_done, bytes_total) while downloading.
ProgressFn = Callable[[int, int], None]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def missing_message(mf: ModelFile, dest: Path, reason: str) -> str:
    """The one message users see when a model file cannot be had."""
    pinned = (f"size {mf.size:,} bytes, sha256 {mf.sha256}" if mf.sha256 != NO_DIGEST
              else "a config file pinned by the repository revision in its URL")
    return (
        f"model file {mf.filename} is not available: {reason}.\n"
        f"  Download it from {mf.url}\n"
        f"  and put it at {dest}\n"
        f"  ({pinned}), or run `labelfleet models fetch` with internet access.\n"
        "  To try labelfleet without any download: --models tiny-random (random weights, meaningless labels)."
    )


def _open(url: str, offset: int, timeout: float) -> tuple[object, int]:
    req = urllib.request.Request(url, headers={"User-Agent": "labelfleet"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    resp = urllib.request.urlopen(req, timeout=timeout)
    status = getattr(resp, "status", 200)
    return resp, (offset if status == 206 else 0)


def download(mf: ModelFile, dest: Path, *, progress: ProgressFn | None = None, timeout: float = 30.0) -> Path:
    """Download ``mf`` to ``dest`` (resuming ``dest.part``), verify sha256, return ``dest``.

    Several processes may call this for the same file at once (workers sharing
    a model volume): an exclusive lock on ``dest.lock`` makes them take turns,
    and the later ones find the finished file.

    Raises :class:`ModelUnavailableError` when offline, the server fails or the
    transfer stops early (the partial file is kept for the next try), and
    :class:`ChecksumError` when the bytes do not match the pinned hash (the
    bad file is removed so the next try starts clean). A file without a pinned
    digest that is not a revision-pinned config file is refused (ChecksumError).
    """
    if mf.sha256 == NO_DIGEST:
        if not revision_pinned_config(mf):
            raise ChecksumError(f"{mf.filename}: the catalog pins no sha256 for it and it is not a config file of "
                                "a commit-pinned repository; refusing to download unverifiable weights")
        return _download_config(mf, dest, timeout)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists() and dest.stat().st_size == mf.size:
            return dest
        part = dest.with_name(dest.name + ".part")
        if not part.exists() or part.stat().st_size < mf.size:
            _fetch(mf, dest, part, progress, timeout)
        digest = sha256_file(part)
        if digest != mf.sha256:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{mf.filename}: sha256 {digest} does not match the pinned {mf.sha256}; "
                                "the partial file was removed, run the command again")
        os.replace(part, dest)
    return dest


def _fetch(mf: ModelFile, dest: Path, part: Path, progress: ProgressFn | None, timeout: float) -> None:
    """Append the missing bytes to ``part`` (HTTP Range); a server that ignores Range restarts the file."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp, offset = _open(mf.url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # our partial file is longer than the server's: start again
            part.unlink(missing_ok=True)
        raise ModelUnavailableError(missing_message(mf, dest, f"{mf.url} answered HTTP {exc.code}")) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ModelUnavailableError(missing_message(mf, dest, f"cannot reach {mf.url} ({exc})")) from exc
    logger.info("downloading %s to %s (resume at %d bytes)", mf.url, dest, offset)
    done = offset
    try:
        with resp, open(part, "ab" if offset else "wb") as out:  # type: ignore[attr-defined]
            while block := resp.read(CHUNK):  # type: ignore[attr-defined]
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, mf.size)
    except (OSError, http.client.HTTPException) as exc:
        raise ModelUnavailableError(missing_message(
            mf, dest, f"download interrupted at {done:,} bytes ({exc}); run the command again to resume")) from exc
    if done < mf.size:
        raise ModelUnavailableError(missing_message(
            mf, dest, f"download stopped at {done:,} of {mf.size:,} bytes; run the command again to resume"))


def _download_config(mf: ModelFile, dest: Path, timeout: float) -> Path:
    """Fetch a small revision-pinned config file whole (Content-Length checked, no resume); its observed
    sha256 goes to ``<file>.sha256``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        resp, _ = _open(mf.url, 0, timeout)
        with resp:  # type: ignore[attr-defined]
            expected = int(resp.headers.get("Content-Length") or 0)  # type: ignore[attr-defined]
            body = resp.read()  # type: ignore[attr-defined]
    except urllib.error.HTTPError as exc:
        raise ModelUnavailableError(missing_message(mf, dest, f"{mf.url} answered HTTP {exc.code}")) from exc
    except http.client.IncompleteRead as exc:
        got, total = len(exc.partial), len(exc.partial) + (exc.expected or 0)
        raise ModelUnavailableError(missing_message(
            mf, dest, f"download stopped at {got:,} of {total:,} bytes; run the command again")) from exc
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        raise ModelUnavailableError(missing_message(mf, dest, f"cannot download {mf.url} ({exc})")) from exc
    if expected and len(body) != expected:
        raise ModelUnavailableError(missing_message(
            mf, dest, f"download stopped at {len(body):,} of {expected:,} bytes; run the command again"))
    part.write_bytes(body)
    os.replace(part, dest)
    digest = hashlib.sha256(body).hexdigest()
    dest.with_name(dest.name + ".sha256").write_text(f"{digest} observed (pinned by the repository revision)\n")
    return dest


def verify(mf: ModelFile, path: Path) -> str | None:
    """Return ``None`` if ``path`` exists with the pinned size and sha256, else a reason.

    A revision-pinned config file (no digest in the catalog) only has to exist and be non-empty.
    """
    if not path.exists():
        return "missing"
    if mf.sha256 == NO_DIGEST and revision_pinned_config(mf):
        return None if path.stat().st_size > 0 else "empty"
    size = path.stat().st_size
    if size != mf.size:
        return f"size {size:,} != expected {mf.size:,}"
    digest = sha256_file(path)
    if digest != mf.sha256:
        return f"sha256 {digest} != expected {mf.sha256}"
    return None
