"""Bulk item inserts for PostgreSQL (issue 13: submit throughput). No torch, no workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from labelfleet.db.models import ItemStatus


def copy_items(session: Session, job_id: int, rows: Sequence[dict[str, Any]]) -> int:
    """PostgreSQL: ``COPY`` the rows' ``key``/``size``/``etag`` into a session temp table, then ONE
    ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` (ids in key order); returns rows inserted. No commit.

    The temp table empties itself at commit (``ON COMMIT DELETE ROWS``) and vanishes on rollback.
    """
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur:  # type: ignore[union-attr]
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS lf_items_in (key text, size bigint, etag varchar(200)) "
                    "ON COMMIT DELETE ROWS")
        with cur.copy("COPY lf_items_in (key, size, etag) FROM STDIN") as copy:
            for r in rows:
                copy.write_row((r["key"], r["size"], r["etag"]))
        cur.execute("INSERT INTO items (job_id, key, size, etag, status, attempts) "
                    "SELECT %s, key, size, etag, %s, 0 FROM lf_items_in ORDER BY key "
                    "ON CONFLICT (job_id, key) DO NOTHING", (job_id, str(ItemStatus.PENDING)))
        added = int(cur.rowcount)
        cur.execute("TRUNCATE lf_items_in")  # the caller may add another batch before it commits
    return added


__all__ = ["copy_items"]
