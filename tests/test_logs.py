"""JSON logs carry job and item ids."""

from __future__ import annotations

import io
import json
import logging

from labelfleet.logs import configure_logging


def test_json_lines_with_context() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", as_json=True, handler=logging.StreamHandler(stream))
        logging.getLogger("labelfleet.test").info("item %s done", 7, extra={"job_id": 3, "item_id": 7})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    record = json.loads(stream.getvalue().strip())
    assert record["msg"] == "item 7 done" and record["job_id"] == 3 and record["item_id"] == 7
    assert record["level"] == "INFO" and record["logger"] == "labelfleet.test"
