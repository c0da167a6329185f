"""Run Alembic migrations programmatically (``labelfleet db upgrade``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from labelfleet.errors import ConfigError

#: The migration scripts, shipped inside the package (so an installed wheel can migrate).
SCRIPTS = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    """Config pointing at ``labelfleet/db/migrations`` (override: ``LABELFLEET_ALEMBIC_DIR``)."""
    script_dir = Path(os.environ.get("LABELFLEET_ALEMBIC_DIR") or SCRIPTS)
    if not (script_dir / "env.py").exists():
        raise ConfigError(f"migration scripts not found at {script_dir}; set LABELFLEET_ALEMBIC_DIR")
    cfg = Config()
    cfg.set_main_option("script_location", str(script_dir))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction for migrations; on SQLite with foreign keys OFF meanwhile.

    SQLite's batch mode rebuilds a table to drop or alter a column (copy, DROP, rename); with
    foreign keys ON, dropping the old ``jobs`` or ``items`` table would fire ``ON DELETE
    CASCADE`` and delete every item, label and review decision below it. The pragma is a no-op
    inside a transaction, so it is set before the transaction starts and restored after it.
    """
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                yield conn
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` to ``revision`` (idempotent)."""
    cfg = alembic_config(engine)
    with migration_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    cfg = alembic_config(engine)
    with migration_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def require_head(engine: Engine) -> None:
    """Raise :class:`ConfigError` unless the database is migrated to the newest revision."""
    cur, head = current_revision(engine), head_revision()
    if cur != head:
        raise ConfigError(f"database is at revision {cur or 'none'}, code needs {head}; "
                          "run `labelfleet db upgrade --db URL` first")
