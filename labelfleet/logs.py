"""Logging set-up: readable lines, or one JSON object per line (``LABELFLEET_LOG_JSON=true``).

Records may carry ``job_id``, ``item_id``, ``key`` and ``worker`` via ``extra=``;
the JSON formatter emits them as fields so log pipelines can filter by job or item.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

CONTEXT_FIELDS = ("job_id", "item_id", "key", "worker", "status")


class RedactFilter(logging.Filter):
    """Masks URL credentials and ``password=`` values in messages and tracebacks (see :mod:`labelfleet.redact`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from labelfleet.redact import redact

        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", <context fields>, "exc"}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                out[name] = getattr(record, name)
        if record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str | int = "INFO", as_json: bool = False, handler: logging.Handler | None = None) -> None:
    """Install one handler on the root logger (replacing earlier ones); secrets are masked in its output."""
    handler = handler or logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter())
    if as_json:
        handler.setFormatter(JsonFormatter())
    elif handler.formatter is None:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
