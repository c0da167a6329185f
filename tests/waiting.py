"""Waiting on conditions with deadlines that hold on a loaded machine.

Every deadline is multiplied by ``LABELFLEET_TEST_SLOWDOWN`` (default 1; CI
sets it higher when it runs the fault scenarios next to a CPU burner). Never
sleep a fixed time to let something happen: wait until it has happened.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def slowdown() -> float:
    """The factor every test deadline is multiplied by (``LABELFLEET_TEST_SLOWDOWN``, at least 1)."""
    return max(1.0, float(os.environ.get("LABELFLEET_TEST_SLOWDOWN", "1") or 1))


def scaled(seconds: float) -> float:
    """``seconds`` times :func:`slowdown`."""
    return seconds * slowdown()


def wait_until(cond: Callable[[], T], timeout: float, what: str, *, interval: float = 0.5,
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``cond`` until it returns something truthy (returned) or ``scaled(timeout)`` passes.

    Exceptions of the types in ``ignore`` count as "not yet" (a service restarting).
    Raises :class:`AssertionError` naming ``what`` and the last value seen.
    """
    deadline = time.monotonic() + scaled(timeout)
    last: object = None
    while True:
        try:
            last = cond()
        except ignore as exc:
            last = exc
        else:
            if last:
                return last  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {scaled(timeout):.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
