"""``labelfleet health``: the worker's liveness/readiness probe (Helm and docker compose use it).

Contract with the worker: it writes ``$LABELFLEET_HEALTH_DIR/ready`` once its
models are loaded and touches ``$LABELFLEET_HEALTH_DIR/alive`` at least every
30 s. The probe only reads those two files (no broker, no database, no torch),
so it is cheap enough to run every few seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from labelfleet.cli.common import console, console_err, make_settings


def register(app: typer.Typer) -> None:
    app.command("health")(health)


def check(health_dir: Path, *, max_age_s: float, ready: bool, now: float | None = None) -> str | None:
    """Why the worker is unhealthy, or None when healthy.

    ``alive`` must exist and be at most ``max_age_s`` seconds old (mtime);
    with ``ready`` the file ``ready`` must exist too.
    """
    now = time.time() if now is None else now
    alive = health_dir / "alive"
    try:
        age = now - alive.stat().st_mtime
    except FileNotFoundError:
        return f"no heartbeat: {alive} does not exist (worker not started or crashed)"
    if age > max_age_s:
        return f"heartbeat is {age:.0f}s old (limit {max_age_s:.0f}s): the worker is stuck or dead"
    if ready and not (health_dir / "ready").exists():
        return f"not ready: {health_dir / 'ready'} does not exist (models still loading or failed)"
    return None


def health(
    max_age: float = typer.Option(120.0, "--max-age", min=1, help="Oldest acceptable heartbeat, seconds."),
    ready: bool = typer.Option(True, "--ready/--alive-only", help="Also require models loaded (readiness) "
                               "or only a fresh heartbeat (liveness)."),
    health_dir: Path | None = typer.Option(None, "--dir", help="Health directory [env LABELFLEET_HEALTH_DIR]."),
) -> None:
    """Exit 0 when this pod's worker is healthy, 1 (with the reason) when not."""
    folder = health_dir or make_settings().health_dir
    reason = check(folder, max_age_s=max_age, ready=ready)
    if reason is not None:
        console_err.print(f"unhealthy: {reason}", highlight=False)
        raise typer.Exit(1)
    console.print("healthy", highlight=False)
