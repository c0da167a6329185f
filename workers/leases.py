"""Lease heartbeat: a worker renews the leases of the items it is working on (see ``repository.renew_leases``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Heartbeat: renews the leases ``owner`` holds on ``ids`` every ``lease_seconds / 4`` until the block ends.

    Renewal is conditional on the lease owner (:func:`repository.renew_leases`),
    so items another worker took over are never taken back. A failed renewal
    (database down) is retried every few seconds.
    """

    def __init__(self, factory: sessionmaker[Session], ids: Sequence[int], owner: str, lease_seconds: int,
                 every_s: float | None = None) -> None:
        self.factory, self.ids, self.owner, self.lease_seconds = factory, list(ids), owner, lease_seconds
        self.every_s = every_s if every_s is not None else max(lease_seconds / 4, 1.0)
        self.renewals = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lf-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        wait = self.every_s
        while not self._stop.wait(wait):
            try:
                with self.factory() as s:
                    held = repo.renew_leases(s, self.ids, self.owner, lease_seconds=self.lease_seconds)
            except Exception as exc:
                logger.warning("cannot renew leases of %d items (%s); retrying", len(self.ids), type(exc).__name__)
                wait = min(self.every_s, 2.0)
                continue
            self.renewals += 1
            if held == 0:
                return  # every item finished, released or taken over
            wait = self.every_s
