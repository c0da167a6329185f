"""Shared CLI helpers: settings from flags + env, database engine, consoles, progress bars."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from labelfleet.errors import ConfigError

if TYPE_CHECKING:  # imported where used: ``labelfleet --help`` loads neither SQLAlchemy nor pydantic
    from sqlalchemy import Engine

    from labelfleet.settings import Settings

console = Console()
console_err = Console(stderr=True)

DB_HELP = ("Database URL: sqlite:///file.db (default sqlite:///labelfleet.db) or postgresql://user@host/db "
           "[env LABELFLEET_DB_URL]")
DbOpt = typer.Option(None, "--db", help=DB_HELP, show_default=False)


def global_options(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-v info, -vv debug)."),
) -> None:
    """Auto-label image datasets with zero-shot models."""
    from labelfleet.cli import errors

    errors.VERBOSE = verbose
    from labelfleet.settings import Settings

    level = logging.WARNING - 10 * min(verbose, 2)
    settings = Settings()
    if not verbose and settings.log_level:  # LABELFLEET_LOG_LEVEL applies when no -v is given
        level = logging.getLevelName(settings.log_level.upper())
    if verbose == 0:  # third-party deprecation noise (timm, torch, transformers) hides the progress bar
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category)
    from labelfleet.logs import configure_logging

    if settings.log_json:
        configure_logging(level, as_json=True)
    else:
        from rich.logging import RichHandler

        configure_logging(level, handler=RichHandler(console=console_err, show_path=False, rich_tracebacks=False))


def make_settings(**overrides: Any) -> Settings:
    """Settings from env vars, with the CLI flags that were given (not None) on top."""
    from labelfleet.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def engine_for(settings: Settings, *, migrate: bool = False, read_only: bool = False,
               check_schema: bool = True) -> Engine:
    """Engine for the configured DB; ``migrate`` upgrades it to the newest schema first.

    ``read_only`` commands never create or write a SQLite file: a missing one is an error.
    """
    from labelfleet.db import migrate as mig
    from labelfleet.db.engine import make_engine, sqlite_file

    url = settings.db_url.get_secret_value()
    path = sqlite_file(url)
    if path is not None:
        file = Path(path).expanduser()
        if read_only and not file.is_file():
            raise ConfigError(f"no SQLite database at {file}; check --db, or create it with `labelfleet label` "
                              "or `labelfleet db upgrade`")
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the folder {file.parent} for the SQLite database: "
                              f"{exc.strerror or exc}") from exc
        query = url.partition("?")[2]
        url = f"sqlite:///{file}" + (f"?{query}" if query else "")
    engine = make_engine(url, read_only=read_only and not migrate)
    if migrate:
        mig.upgrade(engine)
        if path is not None:
            _require_writable_sqlite(Path(path).expanduser())
    elif check_schema:
        mig.require_head(engine)
    return engine


def _require_writable_sqlite(file: Path) -> None:
    """Fail now (before models load) when a SQLite file cannot be written: read-only file, volume or folder."""
    import sqlite3

    try:
        conn = sqlite3.connect(file, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:  # a real write, rolled back: only it fails on a read-only file (SQLite opens those read-only)
                conn.execute("CREATE TABLE _labelfleet_write_probe (x INTEGER)")
            finally:
                conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        raise ConfigError(f"the SQLite database {file} is read-only ({exc}); use a writable --db, or only read "
                          "commands such as status, jobs and failures") from exc


class RateColumn(ProgressColumn):
    """Items per second over the last 30 s (rich's windowed estimate)."""

    def render(self, task: Task) -> Text:
        rate = task.speed or 0.0
        return Text(f"{rate:6.2f} img/s", style="cyan")


def image_progress() -> Progress:
    """Progress bar with count, images/s, elapsed time and ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console_err,
                    transient=False)


def split_csv(value: str | None) -> tuple[str, ...] | None:
    """``"cat, dog,,"`` -> ``("cat", "dog")``; None stays None."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())
