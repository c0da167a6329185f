"""Shared fixtures: real PostgreSQL / Redis on loopback, SQLite files, tiny models, generated images.

Service rule (as dramatiq's tests): a missing service skips the test locally
and fails it in CI (env ``CI=true``), so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("LABELFLEET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LABELFLEET_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LABELFLEET_SHARED_DIR", REPO.parent / "shared"))


def service_missing(what: str, exc: BaseException) -> None:
    """Skip locally, fail in CI."""
    msg = f"{what} is not reachable: {exc}"
    if CI:
        pytest.fail(msg + " (CI=true: services must be running)")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def pg_admin_engine() -> Iterator[object]:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:
        service_missing("PostgreSQL at " + PG_ADMIN_URL, exc)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin_engine: object) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    from sqlalchemy import text

    name = f"lf_test_{uuid.uuid4().hex[:10]}"
    with pg_admin_engine.connect() as c:  # type: ignore[attr-defined]
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    with pg_admin_engine.connect() as c:  # type: ignore[attr-defined]
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'labels.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on a real SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per test session; tiny random models are generated into it on first use."""
    path = Path(os.environ.get("LABELFLEET_TEST_MODEL_DIR", tmp_path_factory.mktemp("models")))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def lf_env(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point LABELFLEET_MODEL_DIR at the shared test cache and run models on CPU."""
    monkeypatch.setenv("LABELFLEET_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("LABELFLEET_DEVICE", "cpu")
    return model_dir


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto in server mode) on a loopback port, with dummy credentials."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    yield f"http://127.0.0.1:{port}"
    server.stop()


def redis_database(db: int) -> tuple[str, object]:
    """``(url, client)`` of the loopback Redis's logical database ``db``, flushed (skip locally / fail in CI)."""
    import redis

    url = REDIS_URL.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except Exception as exc:
        service_missing("Redis at " + url, exc)
    client.flushdb()
    return url, client
