"""`labelfleet health` (issue 10): the probe side of the worker heartbeat contract, run as a subprocess.

Contract: the worker writes ``$LABELFLEET_HEALTH_DIR/ready`` once models are
loaded and touches ``$LABELFLEET_HEALTH_DIR/alive`` at least every 30 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

CASES = [
    # (files: name -> age in seconds, args, exit code, message)
    ({}, [], 1, "unhealthy: no heartbeat:"),
    ({"alive": 5000, "ready": 5000}, [], 1, "s old (limit 120s): the worker is stuck or dead"),
    ({"alive": 5}, [], 1, "unhealthy: not ready:"),
    ({"alive": 5}, ["--alive-only"], 0, "healthy"),
    ({"alive": 5, "ready": 900}, [], 0, "healthy"),
    ({"alive": 200, "ready": 1}, ["--max-age", "300"], 0, "healthy"),
]


@pytest.mark.parametrize(("files", "args", "code", "message"), CASES, ids=[c[3][:30] + str(c[1]) for c in CASES])
def test_health_probe(tmp_path: Path, files: dict[str, int], args: list[str], code: int, message: str) -> None:
    now = time.time()
    for name, age in files.items():
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (now - age, now - age))
    env = {**os.environ, "LABELFLEET_HEALTH_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "labelfleet", "health", *args], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stdout + out.stderr
    assert message in " ".join((out.stdout + out.stderr).split())
    assert "Traceback" not in out.stderr


def test_health_dir_flag_beats_env(tmp_path: Path) -> None:
    (tmp_path / "alive").write_text("")
    (tmp_path / "ready").write_text("")
    env = {**os.environ, "LABELFLEET_HEALTH_DIR": str(tmp_path / "missing")}
    out = subprocess.run([sys.executable, "-m", "labelfleet", "health", "--dir", str(tmp_path)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "healthy" in out.stdout, out.stderr
