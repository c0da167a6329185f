"""``labelfleet failures JOB``: which keys failed, were skipped or became poison, and why (no torch)."""

from __future__ import annotations

import json

import typer

from labelfleet.cli.common import DbOpt, console, engine_for, make_settings


def register(app: typer.Typer) -> None:
    app.command("failures")(failures)


def failures(
    job: str = typer.Argument(..., help="Job name."),
    db: str | None = DbOpt,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list of {key, status, reason, attempts, "
                                 "finished_at}."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="At most N keys (default: all)."),
) -> None:
    """List the job's failed, poison and skipped keys with their reasons, in key order."""
    from sqlalchemy import select

    from labelfleet.db.engine import session_factory
    from labelfleet.db.models import Item, ItemStatus
    from labelfleet.db.repository import get_job

    engine = engine_for(make_settings(db_url=db), read_only=True)
    try:
        with session_factory(engine)() as s:
            job_id = get_job(s, job).id
            query = (select(Item.key, Item.status, Item.error, Item.attempts, Item.finished_at)
                     .where(Item.job_id == job_id,
                            Item.status.in_([ItemStatus.FAILED, ItemStatus.POISON, ItemStatus.SKIPPED]))
                     .order_by(Item.key))
            rows = s.execute(query.limit(limit) if limit else query).all()
    finally:
        engine.dispose()
    out = [{"key": k, "status": st, "reason": err, "attempts": int(a or 0),
            "finished_at": f.isoformat() if f else None} for k, st, err, a, f in rows]
    if as_json:
        print(json.dumps(out))
        return
    if not out:
        console.print(f"job {job}: no failed, poison or skipped keys")
        return
    for row in out:  # plain lines (no wrapping) so the output greps and pipes well
        print(f"{row['status']}\t{row['key']}\t{row['reason']}")
