"""Alembic history == SQLAlchemy models, on real SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from labelfleet.db import migrate
from labelfleet.db.base import Base
from labelfleet.db.engine import make_engine


def test_models_match_migrations_and_round_trip(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_single_head() -> None:
    assert len(ScriptDirectory.from_config(migrate.alembic_config()).get_heads()) == 1


def test_require_head_names_the_fix(sqlite_url: str) -> None:
    import pytest

    from labelfleet.errors import ConfigError

    engine = make_engine(sqlite_url)
    with pytest.raises(ConfigError, match=r"database is at revision none, code needs .*labelfleet db upgrade"):
        migrate.require_head(engine)
