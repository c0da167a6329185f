"""``labelfleet status``, ``labelfleet jobs`` and ``labelfleet db ...`` (no torch imported)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from labelfleet.cli.common import DbOpt, console, engine_for, make_settings
from labelfleet.models.catalog import RANDOM_WEIGHTS_WARNING

db_app = typer.Typer(help="Database schema: create or migrate it.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("jobs")(jobs)


def status(
    job: str = typer.Argument(..., help="Job name."),
    db: str | None = DbOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (job, state, total, done, "
                                 "failed, skipped, poison, pending, running, detections, tags, failures, workers, "
                                 "last_listing, dead_letters, unhealthy_workers)."),
    watch: bool = typer.Option(False, "--watch", help="Follow the job with a progress bar until it is done."),
) -> None:
    """Show a job's progress, label counts, failure reasons and throughput per worker."""
    from labelfleet.db.engine import session_factory
    from labelfleet.db.queries import job_summary
    from labelfleet.db.repository import get_job

    settings = make_settings(db_url=db)
    engine = engine_for(settings, read_only=True)
    factory = session_factory(engine)

    def read() -> dict[str, Any]:
        with factory() as s:
            return job_summary(s, get_job(s, job))

    summary = read()
    if watch:
        summary = _watch(read, summary)
    engine.dispose()
    if as_json:
        summary["dead_letters"] = _dead_letters(factory, job, settings)
        summary["unhealthy_workers"] = _unhealthy_workers(factory, job, settings)
        print(json.dumps(summary, default=str))
        return
    print_summary(summary)


def _dead_letters(factory: Any, job: str, settings: Any) -> int | None:
    """Messages in the broker's dead-letter list (all jobs); None for local jobs or an unreachable broker."""
    from labelfleet.db.repository import get_job
    from orchestrator.deadletter import count

    with factory() as s:
        if get_job(s, job).queue is None:
            return None
    return count(settings.broker_url.get_secret_value())


def _unhealthy_workers(factory: Any, job: str, settings: Any) -> list[dict[str, Any]] | None:
    """Workers of the job's queue that stopped unhealthy (see :mod:`labelfleet.fleet`); None for local jobs."""
    from labelfleet.db.repository import get_job
    from labelfleet.fleet import unhealthy_workers

    with factory() as s:
        queue = get_job(s, job).queue
    if queue is None:
        return None
    return unhealthy_workers(settings.broker_url.get_secret_value(), queue)


def _watch(read: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Progress bar over final items (done+failed+skipped+poison) until the job is done or cancelled."""
    import time

    from labelfleet.cli.common import image_progress

    def final(s: dict[str, Any]) -> int:
        return int(s["done"] + s["failed"] + s["skipped"] + s["poison"])

    with image_progress() as progress:
        task = progress.add_task(f"job {summary['job']}", total=summary["total"], completed=final(summary))
        while summary["state"] not in ("done", "cancelled"):
            time.sleep(2)
            summary = read()
            progress.update(task, total=summary["total"], completed=final(summary))
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """Human-readable job summary."""
    table = Table(title=f"job {summary['job']} ({summary['state']})", show_header=False)
    for key in ("source", "total", "done", "failed", "skipped", "poison", "pending", "running",
                "detections", "tags"):
        table.add_row(key, str(summary[key]))
    console.print(table)
    for f in summary["failures"]:
        console.print(f"  {f['count']:>5} {f['status']}: {f['reason']}", highlight=False)
    listing = summary.get("last_listing")
    if listing:
        skipped = ", ".join(f"{n} {r}" for r, n in sorted(listing.get("skipped", {}).items(), key=lambda x: -x[1]))
        changed = f", {listing['changed']} changed ({listing['relabelled']} labelled again)" \
            if listing.get("changed") else ""
        console.file.flush()
        print(f"  last listing ({str(listing.get('at', ''))[:19]}): {listing.get('images', 0)} images, "
              f"{listing.get('added', 0)} added{changed}" + (f"; skipped: {skipped}" if skipped else ""), flush=True)
    for w in summary.get("workers", []):
        console.print(f"  worker {w['worker']}: {w['done']} done in the last 5 min, {w['images_per_s']} img/s "
                      f"over its {w['active_s']:.1f} s of activity", highlight=False)
    if summary.get("random_weights"):
        console.print(f"[bold yellow]{RANDOM_WEIGHTS_WARNING}[/]")


def jobs(db: str | None = DbOpt) -> None:
    """List the jobs in the database, newest first."""
    from labelfleet.db.engine import session_factory
    from labelfleet.db.queries import list_jobs

    engine = engine_for(make_settings(db_url=db), read_only=True)
    with session_factory(engine)() as s:
        rows = list_jobs(s)
    engine.dispose()
    table = Table("job", "state", "total", "done", "failed", "skipped", "detections", "source")
    for r in rows:
        table.add_row(r["job"], r["state"], str(r["total"]), str(r["done"]), str(r["failed"]), str(r["skipped"]),
                      str(r["detections"]), r["source"])
    console.print(table if rows else "no jobs yet")


@db_app.command("upgrade")
def db_upgrade(db: str | None = DbOpt) -> None:
    """Create the schema or migrate it to the newest revision (idempotent; SQLite or PostgreSQL)."""
    from labelfleet.db.migrate import current_revision

    engine = engine_for(make_settings(db_url=db), migrate=True)
    console.print(f"database at revision {current_revision(engine)}")
    engine.dispose()


@db_app.command("current")
def db_current(db: str | None = DbOpt) -> None:
    """Print the database's schema revision and the newest one this code knows."""
    from labelfleet.db.migrate import current_revision, head_revision

    engine = engine_for(make_settings(db_url=db), read_only=True, check_schema=False)
    console.print(f"current {current_revision(engine) or 'none'}, head {head_revision()}")
    engine.dispose()
