"""Poison-message containment: every queue message is checked before Celery or our task sees it.

Two layers, both wired from :mod:`workers.celeryconfig`:

* :class:`SafeRedisTransport` (``broker_transport``): the kombu envelope popped
  from the Redis list must be JSON with the fields kombu reads (``properties``
  with ``delivery_tag`` and ``delivery_info``, a ``body`` that decodes with its
  ``body_encoding``), and at most :data:`MAX_MESSAGE_BYTES` long. Stock kombu
  raises on such a message inside the event loop, which kills the worker.
* :class:`SafeConsumer` (``worker_consumer``): a delivered message must be
  Celery protocol 2 for one of our task names, its body the JSON triple
  ``[args, kwargs, embed]`` with ``args == []`` and ``kwargs`` valid for the
  task's pydantic model (e.g. :class:`ChunkKwargs`); headers Celery parses
  (``eta``, ``expires``, ``timelimit``, ``retries``) must have the right types.

A refused message is logged once and pushed onto the Redis list
:data:`labelfleet.tasknames.DEAD_LETTER_KEY` with its reason (the record format
is documented there); it is removed from the queue and the worker goes on
consuming. ``labelfleet dead-letters`` lists, requeues or purges them.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labelfleet.tasknames import DEAD_LETTER_KEY, MAX_CHUNK_ITEMS, TaskName

logger = logging.getLogger(__name__)

#: Largest kombu envelope accepted (bytes); a full 1,000-ID chunk is ~15 KB.
MAX_MESSAGE_BYTES = 256 * 1024
#: Dead-letter records keep at most this much of the raw envelope.
MAX_STORED_RAW = 64 * 1024
#: The dead-letter list is trimmed to the newest this many records.
MAX_DEAD_LETTERS = 10_000

PositiveInt = Annotated[int, Field(ge=1)]


class ChunkKwargs(BaseModel):
    """kwargs of ``labelfleet.process_chunk``: strict JSON ints (``"123"`` and ``1.0`` are refused)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    job_id: PositiveInt
    item_ids: list[PositiveInt] = Field(min_length=1, max_length=MAX_CHUNK_ITEMS)


#: Task name -> model of its kwargs. A task name not listed here is dead-lettered as unknown.
TASK_KWARGS: dict[str, type[BaseModel]] = {TaskName.PROCESS_CHUNK: ChunkKwargs, TaskName.EDIT_CHUNK: ChunkKwargs}


def validate_kwargs(task: str, kwargs: Any) -> BaseModel:
    """The parsed kwargs of ``task``; raises ``ValueError`` with a one-line reason."""
    model = TASK_KWARGS.get(task)
    if model is None:
        raise ValueError(f"unknown task {task!r}")
    try:
        return model.model_validate(kwargs)
    except ValidationError as exc:
        raise ValueError(f"invalid kwargs for {task}: {_errors(exc)}") from None


def _errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "kwargs"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


# ---------------------------------------------------------------- envelope (transport level)

def envelope_problem(payload: Any, decode_body: Callable[[Any, Any], Any]) -> str | None:
    """Why a decoded kombu envelope cannot be turned into a message, or None when it can."""
    if not isinstance(payload, dict):
        return f"envelope is a JSON {type(payload).__name__}, not an object"
    props = payload.get("properties")
    if not isinstance(props, dict):
        return "envelope has no 'properties' object"
    if "delivery_tag" not in props:
        return "envelope properties lack 'delivery_tag'"
    info = props.get("delivery_info")
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        return "envelope properties lack 'delivery_info' with exchange and routing_key"
    if payload.get("headers") is not None and not isinstance(payload["headers"], dict):
        return "envelope 'headers' is not an object"
    body = payload.get("body")
    if body:
        try:
            decode_body(body, props.get("body_encoding"))
        except Exception as exc:
            return f"body does not decode as {props.get('body_encoding')!r}: {exc}"
    return None


def parse_envelope(item: bytes | str, decode_body: Callable[[Any, Any], Any]) -> tuple[Any, str | None]:
    """``(payload, None)`` for a good envelope, ``(None, reason)`` for a poison one."""
    if len(item) > MAX_MESSAGE_BYTES:
        return None, f"message of {len(item)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"
    try:
        payload = json.loads(bytes_to_str(item))
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"envelope is not JSON: {exc}"
    return payload, envelope_problem(payload, decode_body)


def dead_letter(client: Any, *, reason: str, raw: bytes | str, queue: str | None, task: str | None = None,
                message_id: str | None = None) -> None:
    """Log once and LPUSH one dead-letter record (format: :data:`DEAD_LETTER_KEY`) with redis-py ``client``."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    record = {"reason": reason, "queue": queue, "task": task, "message_id": message_id,
              "worker": socket.gethostname(), "at": datetime.now(UTC).isoformat(),
              "raw": text[:MAX_STORED_RAW], "truncated": len(text) > MAX_STORED_RAW}
    logger.error("dead-lettered a message from queue %s (task %s, id %s): %s", queue, task, message_id, reason)
    try:
        with client.pipeline() as pipe:
            pipe.lpush(DEAD_LETTER_KEY, json.dumps(record))
            pipe.ltrim(DEAD_LETTER_KEY, 0, MAX_DEAD_LETTERS - 1)
            pipe.execute()
    except Exception as exc:  # the message is dropped either way; never crash the consumer
        logger.error("could not write dead letter to %s: %s", DEAD_LETTER_KEY, exc)


class SafeRedisChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that a malformed envelope is dead-lettered instead of raising."""

    def _deliver_checked(self, item: bytes, dest: str) -> None:
        payload, reason = parse_envelope(item, self.decode_body)
        if reason is not None:
            with self.conn_or_acquire() as client:
                dead_letter(client, reason=reason, raw=item, queue=dest)
            return
        self.connection._deliver(payload, dest)

    def _brpop_read(self, **options: Any) -> bool:
        """As kombu's, with the envelope checked before it is delivered (kombu 5.7)."""
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise kombu_redis.Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            self._deliver_checked(item, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        """Synchronous get (``basic_get``): poison envelopes are dead-lettered and skipped."""
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                while (item := client.rpop(self._q_for_pri(queue, pri))) is not None:
                    payload, reason = parse_envelope(item, self.decode_body)
                    if reason is None:
                        return payload
                    dead_letter(client, reason=reason, raw=item, queue=queue)
        raise kombu_redis.Empty()


class SafeRedisTransport(kombu_redis.Transport):
    """``broker_transport = "workers.messages:SafeRedisTransport"`` for ``redis://`` and ``rediss://``."""

    Channel = SafeRedisChannel


# ---------------------------------------------------------------- message (Celery protocol level)

_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "task": (str,), "eta": (str, type(None)), "expires": (str, type(None)),
    "retries": (int, type(None)), "root_id": (str, type(None)), "parent_id": (str, type(None)),
    "group": (str, type(None)), "lang": (str, type(None)), "argsrepr": (str, type(None)),
    "kwargsrepr": (str, type(None)), "origin": (str, type(None)), "ignore_result": (bool, type(None)),
}


def headers_problem(headers: Any) -> str | None:
    """Why Celery's protocol-2 headers are unusable (missing, wrong types, bad dates), or None."""
    if not isinstance(headers, dict) or "task" not in headers:
        return "not a Celery protocol 2 message (no 'task' header)"
    for key, types in _HEADER_TYPES.items():
        if key in ("id", "task") and key not in headers:
            return f"header {key!r} is missing"
        if key in headers and (not isinstance(headers[key], types) or (isinstance(headers[key], bool)
                               and bool not in types)):
            return f"header {key!r} has type {type(headers[key]).__name__}"
    for key in ("eta", "expires"):
        if isinstance(headers.get(key), str):
            try:
                datetime.fromisoformat(headers[key])
            except ValueError:
                return f"header {key!r} is not an ISO 8601 date: {headers[key][:40]!r}"
    limit = headers.get("timelimit")
    if limit is not None and not (isinstance(limit, list | tuple) and len(limit) == 2 and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in limit)):
        return "header 'timelimit' is not [soft, hard]"
    return None


def message_problem(message: Any) -> str | None:
    """Why a delivered kombu message must not reach Celery's strategy (see module doc), or None."""
    headers = message.headers
    reason = headers_problem(headers)
    if reason is not None:
        return reason
    if message.content_type != "application/json":
        return f"content type {message.content_type!r} is not application/json"
    try:
        body = message.decode()
    except Exception as exc:
        return f"body is not valid JSON: {exc}"
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[0], list)
            and isinstance(body[1], dict) and isinstance(body[2], dict | type(None))):
        return f"body is not Celery's [args, kwargs, embed] triple: {_short(body)}"
    if body[0]:
        return f"task takes keyword arguments only, got args {_short(body[0])}"
    try:
        validate_kwargs(headers["task"], body[1])
    except ValueError as exc:
        return str(exc)
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def refuse(message: Any, reason: str) -> None:
    """Dead-letter a delivered ``message`` and ack it, so it is neither redelivered nor restored."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    raw = getattr(message, "_raw", None)
    raw_text = json.dumps(raw, default=str) if raw is not None else bytes_to_str(message.body or b"")
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    channel = message.channel
    task = headers.get("task") if isinstance(headers.get("task"), str) else None
    msg_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    if hasattr(channel, "conn_or_acquire"):
        with channel.conn_or_acquire() as client:
            dead_letter(client, reason=reason, raw=raw_text, queue=info.get("routing_key"), task=task,
                        message_id=msg_id)
    else:
        logger.error("dropping message %s (no Redis for dead letters): %s", msg_id, reason)
    if not message.acknowledged:
        message.ack()


class SafeConsumer(Consumer):
    """Celery's consumer (``worker_consumer``); checks each message with :func:`message_problem` first."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handle = super().create_task_handler(*args, **kwargs)

        def on_task_received(message: Any) -> Any:
            try:
                reason = message_problem(message)
            except Exception as exc:  # a check that itself fails still must not kill the consumer
                reason = f"message could not be checked: {exc!r}"
            if reason is not None:
                return refuse(message, reason)
            try:
                return handle(message)
            except self.connection_errors:
                raise
            except Exception as exc:
                logger.exception("message %s broke Celery's handler", message.headers.get("id"))
                return refuse(message, f"Celery could not accept the message: {exc!r}")

        return on_task_received


__all__ = ["ChunkKwargs", "SafeConsumer", "SafeRedisTransport", "dead_letter", "message_problem",
           "parse_envelope", "validate_kwargs"]
