"""Engines and sessions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.errors import ConfigError


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` / ``postgres://`` and use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def sqlite_file(url: str) -> str | None:
    """The file path of a ``sqlite:///path`` URL (None for in-memory or non-SQLite URLs)."""
    if not url.startswith("sqlite:///") or url.startswith("sqlite:///:memory:"):
        return None
    return url.removeprefix("sqlite:///").split("?", 1)[0] or None


def make_engine(url: str, *, read_only: bool = False, **kw: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout.

    ``read_only`` (``status``, ``jobs``...): a SQLite file is opened with ``mode=ro`` and no
    pragma that writes (journal mode), so a read-only file or volume can still be inspected.
    """
    url = normalize_url(url)
    if not (url.startswith("sqlite") or url.startswith("postgresql")):
        raise ConfigError(f"unsupported database URL {url.split(':', 1)[0]!r}: use sqlite:/// or postgresql://")
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        if read_only and path is not None and "?" not in url:
            url = f"sqlite:///file:{path}?mode=ro&uri=true"
        engine = create_engine(url, connect_args={"timeout": 30}, **kw)
        event.listen(engine, "connect", _sqlite_pragmas_ro if read_only else _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kw)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()
    _sqlite_pragmas_ro(dbapi_conn, _record)


def _sqlite_pragmas_ro(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on error."""
    with factory() as session, session.begin():
        yield session
