"""Settings: env vars with the LABELFLEET_ prefix, secrets hidden, bad values rejected with a clear reason."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from labelfleet.settings import Settings


def test_env_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELFLEET_DB_URL", "postgresql://u:hunter2@h/db")
    monkeypatch.setenv("LABELFLEET_BATCH_SIZE", "8")
    s = Settings()
    assert s.batch_size == 8 and s.db_url.get_secret_value().endswith("@h/db")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert Settings(batch_size=2).batch_size == 2  # flags beat env


BAD = [
    ({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ({"lease_seconds": 5}, "Input should be greater than or equal to 10"),
    ({"task_soft_time_limit": 1900}, "task_soft_time_limit must be below task_hard_time_limit"),
    ({"box_threshold": 1.5}, "Input should be less than or equal to 1"),
    ({"batch_size": 0}, "Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD, ids=[m[:25] for _, m in BAD])
def test_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**kwargs)
    assert message in str(info.value)
