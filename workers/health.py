"""Worker health files, read by the probes (``labelfleet health``; Helm and compose probes).

Contract (``$LABELFLEET_HEALTH_DIR``, default ``/tmp/labelfleet-health``):

* ``ready`` -- written once this worker's models are loaded (readiness);
* ``alive`` -- touched at least every 30 s while the worker is healthy (liveness: its mtime is fresh);
* ``unhealthy`` -- written (with the one-line reason) when the worker cannot go on; ``ready`` and
  ``alive`` are removed at the same moment, and the worker exits non-zero.

The files are plain text: ``<pid> <unix time>`` (ready/alive) or the reason (unhealthy).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)
#: How often a healthy worker touches ``alive`` (the probes allow 30 s and more).
ALIVE_EVERY_S = 10.0


class HealthFiles:
    """The three health files of one worker under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.ready_path = self.root / "ready"
        self.alive_path = self.root / "alive"
        self.unhealthy_path = self.root / "unhealthy"

    def _write(self, path: Path, text: str) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)  # atomic: a probe never reads a half-written file
        except OSError as exc:
            logger.warning("cannot write health file %s: %s", path, exc)

    def reset(self) -> None:
        """Remove the files a previous run of this worker left behind (at worker start)."""
        for path in (self.ready_path, self.alive_path, self.unhealthy_path):
            path.unlink(missing_ok=True)

    def mark_ready(self) -> None:
        if self.unhealthy_path.exists():
            return  # another process of this worker already gave up: never report ready again
        self.touch_alive()
        self._write(self.ready_path, f"{os.getpid()} {time.time():.0f}\n")

    def touch_alive(self) -> None:
        self._write(self.alive_path, f"{os.getpid()} {time.time():.0f}\n")

    def mark_unhealthy(self, reason: str) -> None:
        self._write(self.unhealthy_path, reason.strip().splitlines()[0][:2000] + "\n")
        self.ready_path.unlink(missing_ok=True)
        self.alive_path.unlink(missing_ok=True)


class AliveTicker:
    """A daemon thread touching ``alive`` every :data:`ALIVE_EVERY_S` seconds until stopped."""

    def __init__(self, files: HealthFiles, every_s: float = ALIVE_EVERY_S) -> None:
        self.files = files
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lf-alive", daemon=True)

    def start(self) -> None:
        self.files.touch_alive()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.files.unhealthy_path.exists():
                return
            self.files.touch_alive()
