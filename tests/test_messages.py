"""Poison messages (issue 10): real Redis, real kombu consumers with labelfleet's transport and checks.

Each malformed message is pushed raw onto a Redis queue list (LPUSH, as a
broken producer or a person with redis-cli would) and must end in ``lf.dead``
with the exact reason, never raising into the consumer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from labelfleet.tasknames import DEAD_LETTER_KEY
from tests.conftest import redis_database
from tests.poison import envelope, protocol_poison, raw, transport_poison

QUEUE = "lf.poison-test"


@pytest.fixture
def redis_db() -> Iterator[tuple[str, Any]]:
    url, client = redis_database(11)
    yield url, client
    client.flushdb()  # type: ignore[attr-defined]
    client.close()  # type: ignore[attr-defined]


def _consume_one(url: str, timeout: float = 3.0) -> list[Any]:
    """Deliver what BRPOP gets from QUEUE through SafeRedisTransport; returns the messages delivered."""
    from kombu import Connection, Consumer, Queue

    got: list[Any] = []
    with Connection(url, transport="workers.messages:SafeRedisTransport") as conn, \
            Consumer(conn, [Queue(QUEUE, routing_key=QUEUE)], on_message=got.append, accept=["json"]):
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=timeout)
        for m in got:
            if not m.acknowledged:
                m.ack()
    return got


def _dead(client: Any) -> list[dict[str, Any]]:
    return [json.loads(r) for r in client.lrange(DEAD_LETTER_KEY, 0, -1)]


TRANSPORT = transport_poison(QUEUE)
PROTOCOL = protocol_poison(QUEUE)


@pytest.mark.parametrize(("case", "item", "reason"), TRANSPORT, ids=[c[0] for c in TRANSPORT])
def test_transport_dead_letters_bad_envelopes(redis_db: tuple[str, Any], case: str, item: bytes, reason: str) -> None:
    url, client = redis_db
    client.lpush(QUEUE, item)
    assert _consume_one(url) == []  # nothing reached the consumer, and nothing raised
    dead = _dead(client)
    assert len(dead) == 1 and reason in dead[0]["reason"], dead
    assert dead[0]["queue"] == QUEUE and client.llen(QUEUE) == 0
    assert dead[0]["truncated"] == (len(item) > 64 * 1024)
    assert client.hlen("unacked") == 0  # not left for kombu to restore


def test_transport_delivers_good_envelope_after_bad_one(redis_db: tuple[str, Any]) -> None:
    url, client = redis_db
    good = envelope(QUEUE, {"job_id": 1, "item_ids": [1, 2]})
    client.lpush(QUEUE, b"not json", raw(good))  # BRPOP pops the first pushed first
    first = _consume_one(url)
    second = _consume_one(url)
    assert first == [] and [m.headers["id"] for m in second] == [good["headers"]["id"]]
    assert second[0].decode()[1] == {"job_id": 1, "item_ids": [1, 2]}
    assert len(_dead(client)) == 1


@pytest.mark.parametrize(("case", "item", "reason"), PROTOCOL, ids=[c[0] for c in PROTOCOL])
def test_protocol_checks_refuse_and_dead_letter(redis_db: tuple[str, Any], case: str, item: bytes,
                                                reason: str) -> None:
    from kombu import Connection, Consumer, Queue

    from workers.messages import message_problem, refuse

    url, client = redis_db
    client.lpush(QUEUE, item)
    got: list[Any] = []
    with Connection(url, transport="workers.messages:SafeRedisTransport") as conn, \
            Consumer(conn, [Queue(QUEUE, routing_key=QUEUE)], on_message=got.append, accept=["json", "yaml"]):
        conn.drain_events(timeout=5)
        assert len(got) == 1
        problem = message_problem(got[0])
        assert problem is not None and reason in problem, problem
        refuse(got[0], problem)
        assert got[0].acknowledged
    dead = _dead(client)
    assert len(dead) == 1 and dead[0]["reason"] == problem and dead[0]["queue"] == QUEUE
    assert client.hlen("unacked") == 0 and client.llen(QUEUE) == 0
    assert json.loads(dead[0]["raw"])["properties"]["delivery_tag"] == json.loads(item)["properties"]["delivery_tag"]


def test_good_message_passes_every_check(redis_db: tuple[str, Any]) -> None:
    from kombu import Connection, Consumer, Queue

    from workers.messages import message_problem

    url, client = redis_db
    client.lpush(QUEUE, raw(envelope(QUEUE, {"job_id": 3, "item_ids": list(range(1, 1001))})))
    got: list[Any] = []
    with Connection(url, transport="workers.messages:SafeRedisTransport") as conn, \
            Consumer(conn, [Queue(QUEUE, routing_key=QUEUE)], on_message=got.append):
        conn.drain_events(timeout=5)
        assert message_problem(got[0]) is None
        got[0].ack()
    assert _dead(client) == []


def test_dead_letters_cli_lists_requeues_and_purges(redis_db: tuple[str, Any]) -> None:
    from typer.testing import CliRunner

    from labelfleet.cli import app
    from labelfleet.errors import ConfigError

    url, client = redis_db
    runner = CliRunner()
    client.lpush(QUEUE, b"garbage")
    _consume_one(url)
    assert len(_dead(client)) == 1
    out = runner.invoke(app, ["dead-letters", "--broker", url, "--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    assert listed["count"] == 1 and "envelope is not JSON" in listed["dead_letters"][0]["reason"]
    out = runner.invoke(app, ["dead-letters", "--broker", url])
    assert out.exit_code == 0 and "1 dead letters" in out.output, out.output
    out = runner.invoke(app, ["dead-letters", "--broker", url, "--requeue", "--purge"])
    assert isinstance(out.exception, ConfigError) and "exclude each other" in str(out.exception)
    out = runner.invoke(app, ["dead-letters", "--broker", url, "--requeue", "--json"])
    assert json.loads(out.output) == {"requeued": 1, "kept": 0}
    assert client.lrange(QUEUE, 0, -1) == [b"garbage"] and client.llen(DEAD_LETTER_KEY) == 0
    _consume_one(url)  # still garbage: dead-lettered again, once
    out = runner.invoke(app, ["dead-letters", "--broker", url, "--purge", "--json"])
    assert json.loads(out.output) == {"purged": 1} and client.llen(DEAD_LETTER_KEY) == 0


def test_dead_letters_cli_unreachable_broker_is_one_line() -> None:
    port = _closed_port()
    out = subprocess.run([sys.executable, "-m", "labelfleet", "dead-letters", "--broker",
                          f"redis://:s3cretpw@127.0.0.1:{port}/0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    text = " ".join(out.stderr.split())  # rich wraps long lines at the terminal width
    assert text.startswith("error: cannot read dead letters from the broker: ConnectionError")
    assert "Traceback" not in out.stderr and "s3cretpw" not in out.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_task_kwargs_model_refuses_coercion() -> None:
    from workers.messages import validate_kwargs

    assert validate_kwargs("labelfleet.process_chunk", {"job_id": 2, "item_ids": [5, 6]}).model_dump() == {
        "job_id": 2, "item_ids": [5, 6]}
    for bad in ({"job_id": 2, "item_ids": "123"}, {"job_id": True, "item_ids": [1]}, {"job_id": 2, "item_ids": []},
                {"job_id": 2, "item_ids": [0]}, {"job_id": 2}):
        with pytest.raises(ValueError, match=r"invalid kwargs for labelfleet\.process_chunk"):
            validate_kwargs("labelfleet.process_chunk", bad)
