"""Browser test: `labelfleet review` on a tiny-random job, the App rendered by headless Chromium.

tiny-random labels are MEANINGLESS (random weights); this only proves the App shows the job.
Chromium missing: skipped locally, failed when CI=true (`apt-get install -y chromium`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelfleet.cli import app
from tests.conftest import CI, REPO
from tests.imagegen import write_scenes
from tests.test_review_support import unique_job

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,800", "--virtual-time-budget=15000"]
ARTIFACTS = REPO / "test-artifacts"


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed (apt-get install -y chromium); the App browser test needs it"
        if CI:
            pytest.fail(msg + " (CI=true)")
        pytest.skip(msg)
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_url(proc: subprocess.Popen[str], log: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"FiftyOne App: (http://\S+)", log.read_text())
        if m:
            return m.group(1)
        if proc.poll() is not None:
            pytest.fail(f"labelfleet review exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.5)
    pytest.fail(f"no App URL within {timeout}s:\n{log.read_text()}")


def _chrome(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}", *args], capture_output=True,
                          text=True, timeout=120)


def _page_text(exe: str, tmp: Path, url: str, want: list[str]) -> str:
    """Visible text of the rendered page (retried: the App loads its data asynchronously)."""
    text = ""
    for attempt in range(3):
        dom = _chrome(exe, tmp / f"profile-dom-{attempt}", "--dump-dom", url).stdout
        visible = re.sub(r"<(script|style).*?</\1>", "", dom, flags=re.S)
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", visible))
        if all(w in text for w in want):
            break
    return text


def test_review_app_renders_the_job(tmp_path: Path, sqlite_url: str, lf_env: Path) -> None:
    exe = _chromium()
    job = unique_job("app")
    write_scenes(tmp_path / "photos", 4)
    label = ["label", str(tmp_path / "photos"), "--db", sqlite_url, "--job", job, "--models", "tiny-random",
             "--classes", "cat,dog"]
    result = CliRunner().invoke(app, label, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    log = tmp_path / "review.log"
    cmd = [sys.executable, "-m", "labelfleet", "review", job, "--db", sqlite_url, "--port", str(_free_port())]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "COLUMNS": "200"}, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    try:
        url = _wait_for_url(proc, log)
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/datasets/labelfleet-{job}")
        assert "meaningless" in log.read_text().lower()
        text = _page_text(exe, tmp_path, url, [f"labelfleet-{job}", "4 samples"])
        assert f"labelfleet-{job}" in text and "4 samples" in text, text[:2000]
        assert "detections" in text and "ram_tags" in text
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "review-app.png"
        _chrome(exe, tmp_path / "profile-shot", f"--screenshot={shot}", url)
        assert shot.stat().st_size > 10_000
        docs_png = REPO / "docs" / "review-app.png"
        if os.environ.get("LABELFLEET_UPDATE_DOCS") == "1" or not docs_png.exists():  # README screenshot
            docs_png.parent.mkdir(exist_ok=True)
            shutil.copyfile(shot, docs_png)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, log.read_text()
    assert "review saved: 0 accepted, 0 rejected, 0 edited" in log.read_text()
