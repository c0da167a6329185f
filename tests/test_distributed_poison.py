"""Poison messages against real `celery worker` subprocesses (issue 10, done-when (a)).

Malformed, non-base64, non-JSON, wrong-type and oversize messages are LPUSHed
raw onto the workers' queue ahead of a real job. Stock Celery/kombu exits on
several of them (and every restarted worker dies on the same message); here both
workers stay up, finish the job, and each poison message lands once in lf.dead.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from labelfleet.tasknames import DEAD_LETTER_KEY, queue_for
from tests.poison import protocol_poison, transport_poison
from tests.test_distributed import (  # noqa: F401  (fixtures)
    RedisServer,
    _bucket,
    assert_invariant,
    cluster_factory,
    redis_server,
)

pytestmark = pytest.mark.slow


def test_poison_messages_dead_lettered_while_two_workers_finish(cluster_factory: Any, s3_endpoint: str,  # noqa: F811
                                                                 redis_server: RedisServer) -> None:  # noqa: F811
    import redis

    queue = queue_for("tiny-random")
    poison = transport_poison(queue) + protocol_poison(queue)
    client = redis.Redis.from_url(redis_server.url)
    client.lpush(queue, *[item for _, item, _ in poison])  # consumed first: BRPOP takes the oldest
    _bucket(s3_endpoint, "poison", [f"{i:03d}.jpg" for i in range(100)])  # the 100-image job
    c = cluster_factory(redis_server.url)
    c.cli("submit", "s3://poison", "--job", "poison", "--classes", "cat,dog", "--no-masks")
    workers = [c.worker("w1"), c.worker("w2")]
    c.sweeper()
    summary = c.wait_done("poison", timeout=900)
    assert summary["done"] == 100, summary
    assert_invariant(c, summary)
    assert [w.poll() for w in workers] == [None, None]  # no worker died on a poison message
    dead = [json.loads(r) for r in client.lrange(DEAD_LETTER_KEY, 0, -1)]
    assert len(dead) == len(poison), [d["reason"] for d in dead]
    for case, _, reason in poison:
        assert sum(reason in d["reason"] for d in dead) == 1, (case, [d["reason"] for d in dead])
    status = json.loads(c.cli("status", "poison", "--json"))
    assert status["dead_letters"] == len(poison)
