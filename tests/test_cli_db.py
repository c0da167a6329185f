"""`labelfleet db upgrade|current`, `jobs`, `--help` on real SQLite and PostgreSQL."""

from __future__ import annotations

from typer.testing import CliRunner

from labelfleet.cli import app
from labelfleet.db.migrate import head_revision

runner = CliRunner()


def test_db_upgrade_current_and_jobs(db_url: str) -> None:
    before = runner.invoke(app, ["status", "x", "--db", db_url])
    assert "labelfleet db upgrade --db URL" in getattr(before.exception, "message", "")
    out = runner.invoke(app, ["db", "upgrade", "--db", db_url], env={"COLUMNS": "200"})
    head = head_revision()  # every branch adds a migration; the lead re-chains them
    assert out.exit_code == 0 and f"database at revision {head}" in out.output
    again = runner.invoke(app, ["db", "upgrade", "--db", db_url])  # idempotent
    assert again.exit_code == 0
    cur = runner.invoke(app, ["db", "current", "--db", db_url])
    assert f"current {head}, head {head}" in cur.output
    jobs = runner.invoke(app, ["jobs", "--db", db_url])
    assert jobs.exit_code == 0 and "no jobs yet" in jobs.output


def test_help_lists_every_command() -> None:
    out = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    for cmd in ("label", "segment", "status", "jobs", "models", "db", "submit", "worker", "sweep", "cancel",
                "resume", "retry-failed", "review", "export", "preview"):
        assert f" {cmd} " in out, cmd
