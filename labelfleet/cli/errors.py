"""Every user- or environment-caused failure of a command ends in ONE line on stderr and exit code 2.

``-v`` prints the (redacted) traceback first. Secrets never appear: every text goes
through :func:`labelfleet.redact.one_line`. Unexpected exceptions (bugs) keep their traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

from labelfleet.redact import one_line

#: Set by ``labelfleet -v``: print tracebacks of handled errors too.
VERBOSE = 0
EXIT_USER_ERROR = 2


def settings_error(exc: Any) -> str:
    """One line for a pydantic ``ValidationError`` of :class:`~labelfleet.settings.Settings` (no inputs of
    secret fields or whole-settings inputs are shown)."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not where:
            parts.append(f"settings: {msg}")
            continue
        value = err.get("input")
        secret = any(s in where for s in ("url", "secret", "password", "token"))
        shown = "" if secret or not isinstance(value, str | int | float | bool) or repr(value) in msg \
            else f", got {value!r}"
        parts.append(f"setting {where} (env LABELFLEET_{where.upper()}): {msg}{shown}")
    return "; ".join(parts)


def _database_error(exc: Any) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = one_line(str(orig), 400)
    low = text.lower()
    if "readonly database" in low or "read-only" in low:
        return f"the database is read-only ({text}); use a writable --db, or only read commands such as status"
    if "unable to open database file" in low:
        return f"cannot open the SQLite database ({text}); check the --db path and that its folder is writable"
    if "does not exist" in low and "database" in low:
        return f"{text}; create it first or fix --db / LABELFLEET_DB_URL"
    if "no such table" in low or "undefinedtable" in low:
        return f"{text}; run `labelfleet db upgrade --db URL` first"
    return f"cannot use the database: {text} (check --db / LABELFLEET_DB_URL and that the server is up)"


def describe(exc: BaseException) -> str | None:
    """The one-line message for a user/environment error, or None for a bug (keep its traceback)."""
    from pydantic import ValidationError

    from labelfleet.errors import LabelfleetError

    if isinstance(exc, LabelfleetError):
        return one_line(exc.message)
    if isinstance(exc, ValidationError):
        return one_line(settings_error(exc))
    module = type(exc).__module__.split(".", 1)[0]
    if module == "sqlalchemy":
        from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

        if isinstance(exc, ArgumentError | NoSuchModuleError):
            return one_line(f"invalid database URL: {exc}")
        if isinstance(exc, DBAPIError):
            return _database_error(exc)
        return None
    if module in ("kombu", "redis", "amqp") and ("Operational" in type(exc).__name__
                                                  or "Connection" in type(exc).__name__):
        return one_line(f"cannot reach the broker: {exc} (check --broker / LABELFLEET_BROKER_URL)")
    if isinstance(exc, OSError):
        what = f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc)
        return one_line(what)
    return None


def run_cli(app: Callable[[], Any]) -> None:
    """Run the Typer app; map known failures to one line + exit 2, Ctrl-C to exit 130."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:
        message = describe(exc)
        if message is None:
            raise
        if VERBOSE:
            sys.stderr.write(one_line_traceback(exc))
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        sys.exit(EXIT_USER_ERROR)


def one_line_traceback(exc: BaseException) -> str:
    """The redacted traceback of ``exc`` (many lines, for ``-v``)."""
    from labelfleet.redact import redact

    return redact("".join(traceback.format_exception(exc)))
