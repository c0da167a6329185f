"""Configuration is one story: every LABELFLEET_* setting is documented once, in deploy/CONFIG.md."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from deploy_helpers import CHART, CI_VALUES, DEPLOY, SCENARIOS, containers, pod_spec

CONFIG_MD = (DEPLOY / "CONFIG.md").read_text()


def _settings_table() -> dict[str, bool]:
    """Env var -> secret? from the "Settings" table."""
    section = CONFIG_MD.split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(LABELFLEET_[A-Z0-9_]+)` \|[^|]*\| *(yes)? *\|", line)
        if m:
            rows[m.group(1)] = bool(m.group(2))
    return rows


TABLE = _settings_table()


def test_table_parsed() -> None:
    assert {
        "LABELFLEET_DB_URL",
        "LABELFLEET_BROKER_URL",
        "LABELFLEET_MODEL_DIR",
        "LABELFLEET_MODELS",
        "LABELFLEET_DEVICE",
        "LABELFLEET_S3_ENDPOINT_URL",
        "LABELFLEET_TASK_SOFT_TIME_LIMIT",
        "LABELFLEET_TASK_HARD_TIME_LIMIT",
        "LABELFLEET_LEASE_SECONDS",
        "LABELFLEET_LOG_LEVEL",
        "LABELFLEET_LOG_JSON",
        "LABELFLEET_BATCH_SIZE",
    } <= set(TABLE)
    assert {k for k, secret in TABLE.items() if secret} == {"LABELFLEET_DB_URL", "LABELFLEET_BROKER_URL"}


def test_every_application_setting_is_documented() -> None:
    settings = pytest.importorskip("labelfleet.settings", reason="application settings not importable")
    prefix = settings.Settings.model_config.get("env_prefix", "LABELFLEET_")
    fields = {f"{prefix}{name}".upper() for name in settings.Settings.model_fields}
    assert fields - set(TABLE) == set(), "settings missing from deploy/CONFIG.md"
    assert set(TABLE) - fields == set(), "deploy/CONFIG.md documents settings that do not exist"


def test_compose_uses_only_documented_variables() -> None:
    used = set(re.findall(r"\b(LABELFLEET_[A-Z0-9_]+)\s*:", (DEPLOY / "docker-compose.yml").read_text()))
    compose_only = {"LABELFLEET_BUCKET", "LABELFLEET_VERSION", "LABELFLEET_REVIEW_JOB", "LABELFLEET_GPU_ID"}
    assert used - compose_only <= set(TABLE), used - compose_only - set(TABLE)


def test_chart_config_keys_are_documented_non_secret_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    keys = set(schema["properties"]["config"]["properties"])
    assert keys <= set(TABLE), keys - set(TABLE)
    assert not {k for k in keys if TABLE[k]}, "secret settings must not be plain chart values"
    for values_file in CI_VALUES.glob("*.yaml"):
        config = (yaml.safe_load(values_file.read_text()) or {}).get("config", {})
        assert set(config) <= set(TABLE), values_file.name


def test_rendered_chart_sets_only_documented_labelfleet_variables(render_chart) -> None:
    for files in SCENARIOS.values():
        for doc in render_chart(files).docs:
            pod = pod_spec(doc)
            for c in containers(pod) if pod else []:
                for entry in c.get("env") or []:
                    if entry["name"].startswith("LABELFLEET_"):
                        assert entry["name"] in TABLE, entry["name"]
