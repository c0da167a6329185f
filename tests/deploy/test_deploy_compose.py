"""`docker-compose config` on deploy/docker-compose.yml (no engine needed) plus assertions on the result."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import DEPLOY

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
PROFILES = ["gpu", "cpu", "review", "cli"]
ONE_SHOTS = {"minio-init", "migrate", "fetch-models", "cli"}
HARD_TIME_LIMIT = 1800


def _compose(
    compose_bin: Path, *args: str, profiles: list[str] = PROFILES
) -> subprocess.CompletedProcess[str]:
    cmd = [str(compose_bin), "--file", str(COMPOSE_FILE), "--env-file", str(DEPLOY / ".env.example")]
    for p in profiles:
        cmd += ["--profile", p]
    # A clean environment: the developer's own POSTGRES_PASSWORD etc. must not leak into the check.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
    env["DOCKER_CONFIG"] = str(Path(env.get("TMPDIR", "/tmp")) / "labelfleet-compose-test")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def services(compose_bin: Path) -> dict[str, Any]:
    proc = _compose(compose_bin, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["services"]


@pytest.mark.parametrize("profiles", [[], ["gpu"], ["cpu"], PROFILES], ids=["base", "gpu", "cpu", "all"])
def test_compose_config_quiet(compose_bin: Path, profiles: list[str]) -> None:
    proc = _compose(compose_bin, "config", "--quiet", profiles=profiles)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warnings (obsolete keys, unset variables)


def test_all_services_present(services: dict[str, Any]) -> None:
    assert set(services) == {
        "redis",
        "postgres",
        "minio",
        "minio-init",
        "migrate",
        "fetch-models",
        "worker-gpu",
        "worker-cpu",
        "sweeper",
        "flower",
        "review",
        "cli",
    }


def test_health_checks_on_every_long_running_service(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOTS:
            assert svc["restart"] == "no", name
        else:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"
            assert svc["restart"] == "unless-stopped", name


def test_workers_wait_for_migrations(services: dict[str, Any]) -> None:
    for name in ("worker-gpu", "worker-cpu", "sweeper", "review", "cli"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    for name in ("worker-gpu", "worker-cpu"):
        deps = services[name]["depends_on"]
        assert deps["fetch-models"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in " ".join(services["minio-init"]["command"])


def test_gpu_worker_reserves_a_gpu(services: dict[str, Any]) -> None:
    gpu = services["worker-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert len(device["device_ids"]) == 1  # one process per GPU
    assert gpu["environment"]["LABELFLEET_DEVICE"] == "cuda:0"
    assert gpu["profiles"] == ["gpu"]
    cpu = services["worker-cpu"]
    assert "deploy" not in cpu or not cpu["deploy"].get("resources")
    assert cpu["environment"]["LABELFLEET_DEVICE"] == "cpu"
    assert cpu["profiles"] == ["cpu"]


def _seconds(duration: str) -> float:
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for ch in duration:
        if ch.isdigit() or ch == ".":
            number += ch
        else:
            total += float(number) * units[ch]
            number = ""
    return total


def test_worker_stop_grace_exceeds_hard_time_limit(services: dict[str, Any]) -> None:
    for name in ("worker-gpu", "worker-cpu"):
        assert _seconds(services[name]["stop_grace_period"]) > HARD_TIME_LIMIT, name


def test_published_ports_bound_to_localhost(services: dict[str, Any]) -> None:
    published = {}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
            published[int(port["published"])] = name
    assert published == {9000: "minio", 9001: "minio", 5555: "flower", 5151: "review"}
    review = services["review"]["command"]
    assert review[0] == "review" and review[review.index("--port") + 1] == "5151"


def test_review_media_cache_is_in_a_writable_volume(services: dict[str, Any]) -> None:
    """S3/MinIO jobs: `review` caches images under --media-dir, which must be a mounted volume."""
    svc = services["review"]
    media = svc["command"][svc["command"].index("--media-dir") + 1]
    mounts = [v["target"] for v in svc["volumes"] if v["type"] == "volume"]
    assert any(media == m or media.startswith(m + "/") for m in mounts), (media, mounts)


def test_labelfleet_containers_are_hardened(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if name in ("redis", "postgres", "minio", "minio-init"):
            continue  # upstream images manage their own users
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        if name != "review":  # FiftyOne's bundled MongoDB writes under $HOME
            assert svc["read_only"] is True, name


def test_env_points_at_stack_services(services: dict[str, Any]) -> None:
    env = services["migrate"]["environment"]
    assert env["LABELFLEET_DB_URL"].startswith("postgresql+psycopg://labelfleet:")
    assert env["LABELFLEET_DB_URL"].endswith("@postgres:5432/labelfleet")
    assert env["LABELFLEET_BROKER_URL"].endswith("@redis:6379/0")
    assert env["LABELFLEET_S3_ENDPOINT_URL"] == "http://minio:9000"
    # Passwords come from the env file, not from the compose file.
    assert "change-me-postgres" in env["LABELFLEET_DB_URL"]
    assert "change-me-postgres" not in COMPOSE_FILE.read_text()


def test_worker_healthcheck_is_the_chart_probe(services: dict[str, Any]) -> None:
    """Compose and Helm both ask `labelfleet health` (heartbeat files), not the broker."""
    for name in ("worker-gpu", "worker-cpu"):
        check = services[name]["healthcheck"]
        assert check["test"] == ["CMD", "labelfleet", "health", "--max-age", "120"], name
