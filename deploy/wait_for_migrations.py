#!/usr/bin/env python3
"""Block until the labelfleet database is at the Alembic head (init container of workers/sweeper).

Installed in both images as ``labelfleet-wait-for-migrations``. Reads ``LABELFLEET_DB_URL`` like the
application does and the migration scripts from ``ALEMBIC_CONFIG`` (default: the ``alembic.ini`` shipped
inside the installed labelfleet package, next to ``labelfleet/db/migrations``).
Never migrates: only the migration Job (``labelfleet db upgrade``) does. Exit 0 when up to date,
1 on timeout, so Kubernetes restarts the pod and tries again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _db_url() -> str:
    try:  # the application's own settings (same env var, same defaults)
        from labelfleet.settings import Settings

        return Settings().db_url.get_secret_value()
    except ImportError:
        return os.environ["LABELFLEET_DB_URL"]


def _default_ini() -> str:
    """``ALEMBIC_CONFIG`` if set, else the installed package's ``labelfleet/alembic.ini``."""
    if os.environ.get("ALEMBIC_CONFIG"):
        return os.environ["ALEMBIC_CONFIG"]
    import importlib.util

    spec = importlib.util.find_spec("labelfleet")
    if spec is None or spec.origin is None:
        return "/app/alembic.ini"
    return os.path.join(os.path.dirname(spec.origin), "alembic.ini")


def _state(db_url: str, alembic_ini: str) -> tuple[set[str], set[str]]:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    heads = set(ScriptDirectory.from_config(Config(alembic_ini)).get_heads())
    engine = create_engine(db_url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    finally:
        engine.dispose()
    return heads, current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait in total")
    parser.add_argument("--interval", type=float, default=5, help="seconds between checks")
    parser.add_argument("--alembic-ini", default=_default_ini())
    args = parser.parse_args(argv)

    deadline = time.monotonic() + args.timeout
    db_url = _db_url()
    while True:
        try:
            heads, current = _state(db_url, args.alembic_ini)
            if current == heads:
                print(f"database is at the migration head {sorted(heads)}", flush=True)
                return 0
            reason = f"database at {sorted(current) or 'no revision'}, waiting for {sorted(heads)}"
        except Exception as exc:  # database not reachable yet: keep waiting
            reason = f"database not ready: {type(exc).__name__}: {exc}".splitlines()[0]
        if time.monotonic() >= deadline:
            print(f"timed out after {args.timeout:.0f}s; {reason}", file=sys.stderr, flush=True)
            return 1
        print(reason, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
