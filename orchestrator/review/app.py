"""Launch the FiftyOne App on a job's dataset and wait for Ctrl-C."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from orchestrator.review import import_fiftyone

logger = logging.getLogger(__name__)


def app_url(address: str, port: int, dataset: str) -> str:
    """The browser URL of ``dataset`` in an App served at ``address:port``."""
    host = "127.0.0.1" if address in ("0.0.0.0", "") else address
    return f"http://{host}:{port}/datasets/{dataset}"


def _sigterm_as_interrupt(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def serve(dataset: Any, *, address: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve the App on ``address:port`` (no browser is opened), call ``on_ready(url)``, block until
    Ctrl-C or SIGTERM, then close the App. KeyboardInterrupt is swallowed here.

    SIGINT is handled even when the parent started us with it ignored (``cmd &`` in a script).
    """
    fo = import_fiftyone()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    session_log = logging.getLogger("fiftyone.core.session")
    if not logger.isEnabledFor(logging.INFO):  # FiftyOne's ssh / banner text, unless -v
        session_log.setLevel(logging.WARNING)
    session = None
    try:
        session = fo.launch_app(dataset, address=address, port=port, auto=False, remote=True)
        on_ready(app_url(address, port, dataset.name))
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        logger.info("App stopped by the user")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if session is not None:
            try:
                fo.close_app()
            except Exception:  # the server may already be gone
                logger.debug("closing the App failed", exc_info=True)
