"""Hand-built kombu/Celery envelopes as they sit in a Redis queue list, good and poisoned (issue 10)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from labelfleet.tasknames import TaskName


def envelope(queue: str, kwargs: Any = None, *, body: bytes | None = None, headers: dict[str, Any] | None = None,
             drop_headers: tuple[str, ...] = (), args: Any = (), **props: Any) -> dict[str, Any]:
    """A kombu envelope of a Celery protocol-2 ``process_chunk`` message (``body`` overrides the triple)."""
    task_id = str(uuid.uuid4())
    raw = body if body is not None else json.dumps([list(args), kwargs, {"callbacks": None, "errbacks": None,
                                                                           "chain": None, "chord": None}]).encode()
    hdrs: dict[str, Any] = {"lang": "py", "task": str(TaskName.PROCESS_CHUNK), "id": task_id, "shadow": None,
                            "eta": None, "expires": None, "group": None, "group_index": None, "retries": 0,
                            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
                            "argsrepr": "()", "kwargsrepr": "{}", "origin": "test@host", "ignore_result": True}
    hdrs.update(headers or {})
    for key in drop_headers:
        hdrs.pop(key, None)
    properties = {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
                  "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                  "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()), **props}
    return {"body": base64.b64encode(raw).decode(), "content-encoding": "utf-8",
            "content-type": "application/json", "headers": hdrs, "properties": properties}


def raw(env: dict[str, Any]) -> bytes:
    return json.dumps(env).encode()


def transport_poison(queue: str) -> list[tuple[str, bytes, str]]:
    """``(case, raw bytes, reason)``: envelopes kombu itself cannot turn into a message."""
    no_info = envelope(queue, {"job_id": 1, "item_ids": [1]})
    del no_info["properties"]["delivery_info"]
    bad_b64 = envelope(queue, {"job_id": 1, "item_ids": [1]})
    bad_b64["body"] = "!!!not base64!!!"
    huge = envelope(queue, {"job_id": 1, "item_ids": list(range(1, 100_001))})
    return [
        ("envelope not JSON", b"this is {not json", "envelope is not JSON"),
        ("envelope a list", b"[1, 2, 3]", "envelope is a JSON list, not an object"),
        ("no delivery_info", raw(no_info), "envelope properties lack 'delivery_info'"),
        ("body not base64", raw(bad_b64), "body does not decode as 'base64'"),
        ("100k ids", raw(huge), "exceeds the 262144-byte limit"),
    ]


def protocol_poison(queue: str) -> list[tuple[str, bytes, str]]:
    """``(case, raw bytes, reason)``: well-formed envelopes whose Celery message or kwargs are poison."""
    ok = {"job_id": 1, "item_ids": [1, 2]}
    cases = [
        ("dict body", envelope(queue, body=b'{"job_id": 1}'), "body is not Celery's [args, kwargs, embed] triple"),
        ("body not JSON", envelope(queue, body=b"{{{"), "body is not valid JSON"),
        ("item_ids string", envelope(queue, {"job_id": 1, "item_ids": "123"}),
         "invalid kwargs for labelfleet.process_chunk: item_ids: Input should be a valid list"),
        ("job_id string", envelope(queue, {"job_id": "1", "item_ids": [1]}),
         "job_id: Input should be a valid integer"),
        ("float id", envelope(queue, {"job_id": 1, "item_ids": [1.5]}), "item_ids.0: Input should be a valid integer"),
        ("1001 ids", envelope(queue, {"job_id": 1, "item_ids": list(range(1, 1002))}),
         "item_ids: List should have at most 1000 items"),
        ("extra kwarg", envelope(queue, {**ok, "rm": "-rf"}), "rm: Extra inputs are not permitted"),
        ("positional args", envelope(queue, ok, args=(1,)), "task takes keyword arguments only"),
        ("unknown task", envelope(queue, ok, headers={"task": "evil.task"}), "unknown task 'evil.task'"),
        ("protocol 1", envelope(queue, ok, drop_headers=("task",)), "not a Celery protocol 2 message"),
        ("bad eta", envelope(queue, ok, headers={"eta": "tomorrow-ish"}), "header 'eta' is not an ISO 8601 date"),
        ("bad timelimit", envelope(queue, ok, headers={"timelimit": "soon"}), "header 'timelimit' is not [soft, hard]"),
        ("yaml content", {**envelope(queue, ok), "content-type": "application/x-yaml"},
         "content type 'application/x-yaml' is not application/json"),
    ]
    return [(name, raw(env), reason) for name, env, reason in cases]
