"""Alembic environment: sees exactly labelfleet's models; URL from settings or the caller."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from labelfleet.db import models  # noqa: F401  (registers every table on Base.metadata)
from labelfleet.db.base import Base
from labelfleet.db.engine import make_engine
from labelfleet.db.migrate import migration_connection
from labelfleet.settings import Settings

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or Settings().db_url.get_secret_value()
    engine = make_engine(url)
    with migration_connection(engine) as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
