"""Mask secrets in any text that may be printed or logged: URL credentials and ``password=`` pairs.

``postgresql://lf:s3cret@db/x`` -> ``postgresql://lf:***@db/x``; ``redis://:pw@h`` -> ``redis://:***@h``;
``password=pw`` / ``"password": "pw"`` -> masked. Pure ``re``; used by the CLI error handler and logging.
"""

from __future__ import annotations

import re

_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*):(?P<secret>[^\s/'\"]*)@")
_KEY_VALUE = re.compile(r"(?P<head>\b(?:password|passwd|pwd|secret|secret_access_key|token)['\"]?\s*[=:]\s*['\"]?)"
                        r"(?P<secret>[^\s'\",;&]+)", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def redact(text: str) -> str:
    """``text`` with every URL password and ``password=...`` value replaced by ``***``."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:***@", text)
    return _KEY_VALUE.sub(lambda m: f"{m['head']}***", text)


def one_line(text: str, limit: int = 1000) -> str:
    """Redacted, terminal-safe, single-line form of ``text``: escapes and control characters removed,
    line breaks joined with ``"; "``, cut to ``limit`` characters."""
    text = _ANSI.sub("", redact(text))
    parts = [p.strip() for p in text.replace("\r", "\n").splitlines() if p.strip()]
    flat = _CONTROL.sub("", "; ".join(parts))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
