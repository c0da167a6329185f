"""A built wheel, installed outside the source tree, ships its migrations: `labelfleet db upgrade` works."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout


def test_wheel_installs_and_migrates_without_the_source_tree(tmp_path: Path) -> None:
    # Build from a copy (setuptools writes build/ and *.egg-info next to the sources), without isolation
    # (no internet): setuptools comes from the test venv.
    src = tmp_path / "src"
    for part in ("labelfleet", "orchestrator", "workers"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, src / part)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
          str(tmp_path / "dist"), str(src)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("labelfleet-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"labelfleet/alembic.ini", "labelfleet/py.typed", "labelfleet/db/migrations/env.py",
            "labelfleet/db/migrations/script.py.mako",
            "labelfleet/db/migrations/versions/0001_initial_schema.py"} <= names

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "LABELFLEET_"))}
    # A fresh venv without pip; the wheel goes in with the test venv's pip, its dependencies are reused
    # from the test venv's site-packages through a plain path entry (its editable-install hook is not
    # processed, so the code that runs is the wheel's).
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-compile",
          "--ignore-installed", "-q", str(wheel)], cwd=tmp_path, env=env)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path).strip())
    (site / "zz_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = _run([str(py), "-c", "import labelfleet; print(labelfleet.__file__)"], cwd=tmp_path, env=env)
    assert where.startswith(str(site)), where
    db = tmp_path / "fresh.db"
    out = _run([str(venv / "bin" / "labelfleet"), "db", "upgrade", "--db", f"sqlite:///{db}"], cwd=tmp_path,
               env=env)
    assert "database at revision" in out
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        version = conn.execute("select version_num from alembic_version").fetchone()[0]
    assert {"jobs", "items", "detections", "tags"} <= tables
    head = max(p.name.split("_", 1)[0] for p in (REPO / "labelfleet/db/migrations/versions").glob("[0-9]*.py"))
    assert version == head
