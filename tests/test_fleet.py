"""The fleet's unhealthy-worker registry on a real Redis (what `status --json` lists)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labelfleet import fleet
from tests.conftest import REDIS_URL, service_missing


@pytest.fixture
def broker() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:
        service_missing("Redis at " + REDIS_URL, exc)
    client.delete(fleet.UNHEALTHY_KEY)
    yield REDIS_URL
    client.delete(fleet.UNHEALTHY_KEY)
    client.close()


def test_unhealthy_workers_are_listed_per_queue_and_cleared_when_ready(broker: str) -> None:
    assert fleet.unhealthy_workers(broker) == []
    assert fleet.record_unhealthy(broker, "gpu-1@node", "device fault: CUDA error: illegal memory access\nmore",
                                  ["lf.default"])
    assert fleet.record_unhealthy(broker, "cpu-1@node", "cannot load models: truncated", ["lf.tiny-random"])
    listed = fleet.unhealthy_workers(broker, "lf.default")
    assert [(w["worker"], w["reason"], w["queues"]) for w in listed] == [
        ("gpu-1@node", "device fault: CUDA error: illegal memory access", ["lf.default"])]
    assert {w["worker"] for w in fleet.unhealthy_workers(broker) or []} == {"gpu-1@node", "cpu-1@node"}
    fleet.clear(broker, "gpu-1@node")  # restarted and ready again
    assert fleet.unhealthy_workers(broker, "lf.default") == []


@pytest.mark.parametrize("url", ["amqp://guest@127.0.0.1//", "redis://127.0.0.1:1/0"])
def test_a_broker_that_cannot_tell_gives_none(url: str) -> None:
    assert fleet.unhealthy_workers(url) is None
    assert fleet.record_unhealthy(url, "w@h", "x", []) is False
