"""``labelfleet dead-letters``: messages the workers refused (malformed, wrong types, oversize).

Reads the broker's Redis through :mod:`orchestrator.deadletter` (never imports workers).
"""

from __future__ import annotations

import json

import typer
from rich.table import Table

from labelfleet.cli.cluster_cmds import BrokerOpt
from labelfleet.cli.common import console, make_settings
from labelfleet.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("dead-letters")(dead_letters)


def dead_letters(
    broker: str | None = BrokerOpt,
    requeue: bool = typer.Option(False, "--requeue", help="Push each message back onto its queue (a message "
                                 "that is still malformed comes back here)."),
    purge: bool = typer.Option(False, "--purge", help="Delete every dead letter."),
    as_json: bool = typer.Option(False, "--json", help='Print one JSON object: {"count", "dead_letters": '
                                 '[{"reason", "queue", "task", "message_id", "worker", "at", ...}]}.'),
    limit: int = typer.Option(50, "--limit", min=1, help="Show the newest N."),
) -> None:
    """List the messages workers dead-lettered, newest first; or requeue / purge them."""
    from orchestrator import deadletter

    if requeue and purge:
        raise ConfigError("--requeue and --purge exclude each other")
    url = make_settings(broker_url=broker).broker_url.get_secret_value()
    try:
        if requeue:
            moved, kept = deadletter.requeue(url)
            _say(as_json, {"requeued": moved, "kept": kept}, f"{moved} dead letters requeued, {kept} kept "
                 "(truncated or without a queue)")
            return
        if purge:
            n = deadletter.purge(url)
            _say(as_json, {"purged": n}, f"{n} dead letters purged")
            return
        total, records = deadletter.list_records(url, limit)
    except ConfigError:
        raise
    except Exception as exc:  # redis.ConnectionError etc.: one line, no URL (it may hold a password)
        raise ConfigError(f"cannot read dead letters from the broker: {type(exc).__name__}: {exc}") from exc
    if as_json:
        for r in records:
            r.pop("raw", None)
        print(json.dumps({"count": total, "dead_letters": records}))
        return
    _table(total, records)


def _say(as_json: bool, obj: dict[str, int], text: str) -> None:
    if as_json:
        print(json.dumps(obj))
    else:
        console.print(text)


def _table(total: int, records: list[dict[str, object]]) -> None:
    if not total:
        console.print("no dead letters")
        return
    table = Table("at", "queue", "task", "message id", "worker", "reason", title=f"{total} dead letters")
    for r in records:
        table.add_row(*(str(r.get(k) or "") for k in ("at", "queue", "task", "message_id", "worker", "reason")))
    console.print(table)
