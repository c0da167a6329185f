"""Every user- or environment-caused failure through the real CLI: exit 2, ONE line on stderr, no secret shown.

Each case runs ``python -m labelfleet ...`` in a subprocess, like a user would. Cases that need the
tiny models (checkpoint and class-name checks) load them, so they take a few seconds each.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL
from tests.imagegen import write_scenes

REPO = Path(__file__).resolve().parents[1]
PLANTED = "Pl4ntedS3cret"  # every URL below carries it; it must never be printed


def lf(*args: str, env: dict[str, str] | None = None, model_dir: Path, timeout: int = 600,
       ) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh process (no GPU visible, tiny models from ``model_dir``)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LABELFLEET_")}
    base.update(PYTHONPATH=str(REPO), LABELFLEET_MODEL_DIR=str(model_dir), LABELFLEET_DEVICE="cpu",
                CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", COLUMNS="200")
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "labelfleet", *args], cwd=REPO, env=base, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class Case:
    args: list[str]
    expect: str  # regex searched in the single stderr line
    env: dict[str, str] = field(default_factory=dict)
    setup: str | None = None  # name of a fixture-like preparation, see _prepare


def _pg(db: str, password: str = "") -> str:
    base = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0]
    return base.replace("://postgres@", f"://postgres:{password}@") + "/" + db if password else base + "/" + db


CLASSES_300_WORDS = " ".join(["word"] * 300)
CLASSES_MANY_PIECES = " ".join(["antidisestablishmentarianism"] * 120)  # < 254 words, > 256 tokens
TINY = ["--models", "tiny-random"]

CASES = {
    "status on a missing SQLite file": Case(
        ["status", "j", "--db", "sqlite:///{tmp}/nope.db"], r"^error: no SQLite database at .*nope\.db"),
    "jobs on an unreachable PostgreSQL": Case(
        ["jobs", "--db", f"postgresql://lfuser:{PLANTED}@127.0.0.1:1/x"],
        r"^error: cannot use the database: connection failed: .*port 1 failed"),
    "jobs on a missing PostgreSQL database": Case(
        ["jobs", "--db", _pg("lf_no_such_database")], r'database "lf_no_such_database" does not exist'),
    "label into a read-only SQLite file": Case(
        ["label", "{folder}", "--db", "sqlite:///{ro_db}", *TINY, "--classes", "cat"],
        r"^error: the SQLite database .*ro\.db is read-only", setup="read_only_db"),
    "SQLite path that cannot be created": Case(
        ["db", "upgrade", "--db", "sqlite:////proc/lf_nope/x.db"],
        r"^error: cannot create the folder /proc/lf_nope for the SQLite database"),
    "SQLite path under a file": Case(
        ["db", "upgrade", "--db", "sqlite:///{tmp}/a_file/x.db"],
        r"^error: cannot create the folder .*a_file for the SQLite database", setup="a_file"),
    "unwritable --out": Case(
        ["segment", "{folder}/img_0000.jpg", "--box", "1,1,20,20", "--out", "/proc/lf_nope/m.png", *TINY],
        r"^error: cannot create the folder /proc/lf_nope for --out"),
    "unwritable model folder": Case(
        ["label", "{folder}", "--db", "sqlite:///{tmp}/m.db", *TINY, "--classes", "cat"],
        r"^error: /proc/lf_models.*: No such file or directory", env={"LABELFLEET_MODEL_DIR": "/proc/lf_models"}),
    "label --device cuda without a GPU": Case(
        ["label", "{folder}", "--db", "sqlite:///{tmp}/c.db", *TINY, "--device", "cuda"],
        r"^error: --device cuda: no CUDA GPU is visible to torch"),
    "worker --device cuda without a GPU": Case(
        ["worker", "--device", "cuda", "--db", "sqlite:///{migrated}"],
        r"^error: --device cuda: no CUDA GPU is visible to torch", setup="migrated"),
    "class name of 300 words": Case(
        ["label", "{folder}", "--db", "sqlite:///{tmp}/w.db", *TINY, "--classes", CLASSES_300_WORDS],
        r"^error: class name 'word word .*' is at least 303 tokens long; GroundingDINO reads at most 256"),
    "class name of too many tokens": Case(
        ["label", "{folder}", "--db", "sqlite:///{tmp}/t.db", *TINY, "--classes", CLASSES_MANY_PIECES],
        r"^error: class name 'antidis.*' is \d{3,} tokens long; GroundingDINO reads at most 256"),
    "RAM++ checkpoint with another class count": Case(
        ["label", "{folder}", "--db", "sqlite:///{tmp}/r.db", *TINY, "--tagger-checkpoint", "{ram16}"],
        r"^error: tagger checkpoint .* does not fit ram_plus_tiny's tag list: tag_list has 32 entries but the "
        r"model has 16 classes", setup="ram16"),
    "checkpoint that needs full unpickling": Case(
        ["label", "{folder}", "--db", "sqlite:///{tmp}/p.db", *TINY, "--tagger-checkpoint", "{pickled}"],
        r"^error: .*pickled\.pth is not a plain weights file: it needs full unpickling.*Re-save it",
        setup="pickled"),
    "segmenter checkpoint of another architecture": Case(
        ["label", "{folder}", "--db", "sqlite:///{tmp}/s.db", *TINY, "--classes", "cat",
         "--segmenter-checkpoint", "{gdino}"], r"^error: SAM checkpoint .*gdino_tiny\.pth does not match the model",
        setup="models"),
    "invalid setting": Case(
        ["status", "x"], r"^error: settings: task_soft_time_limit must be below task_hard_time_limit",
        env={"LABELFLEET_TASK_SOFT_TIME_LIMIT": "2000", "LABELFLEET_DB_URL": f"postgresql://lf:{PLANTED}@h/x"}),
    "invalid setting value": Case(
        ["jobs"], r"^error: setting batch_size \(env LABELFLEET_BATCH_SIZE\): .*greater than or equal to 1",
        env={"LABELFLEET_BATCH_SIZE": "0", "LABELFLEET_DB_URL": f"postgresql://lf:{PLANTED}@h/x"}),
    "unsupported database URL": Case(
        ["jobs", "--db", f"mysql://u:{PLANTED}@h/x"], r"^error: unsupported database URL 'mysql'"),
    "unknown job": Case(
        ["status", "nope", "--db", "sqlite:///{migrated}"], r"^error: no job named 'nope'", setup="migrated"),
    "missing source folder": Case(
        ["label", "{tmp}/no_folder", "--db", "sqlite:///{tmp}/f.db", *TINY],
        r"^error: source folder .*no_folder does not exist"),
    "unreachable broker": Case(
        ["submit", "{folder}", "--db", "sqlite:///{tmp}/b.db", "--broker", f"redis://:{PLANTED}@127.0.0.1:1/0",
         *TINY], r"error: cannot reach the broker: .*127\.0\.0\.1:1"),
}
#: Cases whose stderr also holds progress bars (listing ran before the failure): only the last line counts.
MULTI_LINE_OK = {"unreachable broker"}


def _tiny_files(model_dir: Path) -> dict[str, Path]:
    from labelfleet.settings import Settings
    from workers.models import resolve_model

    settings = Settings(model_dir=model_dir)
    return {"gdino": resolve_model("gdino_tiny", "detector", settings).files["checkpoint"],
            "ram": resolve_model("ram_plus_tiny", "tagger", settings).files["checkpoint"]}


def _prepare(setup: str | None, tmp: Path, model_dir: Path, values: dict[str, str]) -> Callable[[], None]:
    """Create what a case needs; returns a clean-up function."""
    if setup == "a_file":
        (tmp / "a_file").write_text("not a folder")
    if setup in ("migrated", "read_only_db"):
        from labelfleet.db import migrate
        from labelfleet.db.engine import make_engine

        db = tmp / ("ro.db" if setup == "read_only_db" else "migrated.db")
        engine = make_engine(f"sqlite:///{db}")
        migrate.upgrade(engine)
        engine.dispose()
        values["ro_db" if setup == "read_only_db" else "migrated"] = str(db)
        if setup == "read_only_db":
            if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not available here (needs CAP_LINUX_IMMUTABLE on ext4/xfs)")
            return lambda: subprocess.run(["chattr", "-i", str(db)], check=True)
    if setup in ("ram16", "pickled", "models"):
        import torch

        files = _tiny_files(model_dir)
        values["gdino"] = str(files["gdino"])
        if setup == "ram16":
            from workers.stages.ram_tagger import make_tiny_ram_files

            values["ram16"] = str(make_tiny_ram_files(tmp / "ram16", "ram_plus_tiny", num_tags=16)["checkpoint"])
        if setup == "pickled":
            state = torch.load(files["ram"], map_location="cpu", weights_only=True)
            state["config"] = argparse.Namespace(lr=1e-4)  # any non-tensor object needs full unpickling
            torch.save(state, tmp / "pickled.pth")
            values["pickled"] = str(tmp / "pickled.pth")
    return lambda: None


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    write_scenes(root, 2)
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_failure_is_one_line_with_exit_2(name: str, tmp_path: Path, folder: Path, model_dir: Path) -> None:
    case = CASES[name]
    values = {"tmp": str(tmp_path), "folder": str(folder)}
    cleanup = _prepare(case.setup, tmp_path, model_dir, values)
    try:
        proc = lf(*[a.format(**values) for a in case.args], env=case.env, model_dir=model_dir)
    finally:
        cleanup()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    if name not in MULTI_LINE_OK:
        assert len(lines) == 1, proc.stderr
    assert re.search(case.expect, lines[-1]), lines[-1]
    assert "Traceback" not in proc.stderr and "\x1b" not in proc.stderr
    assert "trusted=True" not in proc.stderr  # no CLI flag offers it
    assert PLANTED not in proc.stdout + proc.stderr


def test_no_cuda_is_found_before_anything_is_created(tmp_path: Path, folder: Path, model_dir: Path) -> None:
    proc = lf("label", str(folder), "--db", f"sqlite:///{tmp_path}/c.db", *TINY, "--device", "cuda:0",
              model_dir=model_dir)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr
    assert not (tmp_path / "c.db").exists()  # checked before the database and before any model


def test_read_commands_open_a_read_only_sqlite_file(tmp_path: Path, model_dir: Path) -> None:
    values: dict[str, str] = {}
    cleanup = _prepare("read_only_db", tmp_path, model_dir, values)
    try:
        for args in (["status", "nope"], ["jobs"], ["db", "current"], ["failures", "nope"]):
            proc = lf(*args, "--db", f"sqlite:///{values['ro_db']}", model_dir=model_dir)
            if args[0] in ("status", "failures"):
                assert proc.returncode == 2 and proc.stderr.strip() == "error: no job named 'nope'; the " \
                    "database has no jobs yet", proc.stderr
            else:
                assert proc.returncode == 0, proc.stderr
    finally:
        cleanup()


def test_verbose_shows_the_traceback_then_the_line(tmp_path: Path, model_dir: Path) -> None:
    proc = lf("-v", "jobs", "--db", f"postgresql://lfuser:{PLANTED}@127.0.0.1:1/x", model_dir=model_dir)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot use the database")
    assert PLANTED not in proc.stderr


def test_planted_secrets_never_appear_in_any_output(tmp_path: Path, folder: Path, model_dir: Path) -> None:
    """Misconfigured runs of every command that reads the URLs, with -v too: no password anywhere."""
    db_pw, broker_pw = PLANTED + "db", PLANTED + "broker"
    bad_db = {"LABELFLEET_DB_URL": f"postgresql://lfuser:{db_pw}@127.0.0.1:1/labels",
              "LABELFLEET_BROKER_URL": f"redis://:{broker_pw}@127.0.0.1:1/0"}
    invalid = {**bad_db, "LABELFLEET_TASK_SOFT_TIME_LIMIT": "2000"}
    migrated = tmp_path / "ok.db"
    _prepare("migrated", tmp_path, model_dir, {})
    (tmp_path / "migrated.db").rename(migrated)
    broker_only = {"LABELFLEET_DB_URL": f"sqlite:///{migrated}", "LABELFLEET_BROKER_URL": bad_db[
        "LABELFLEET_BROKER_URL"]}
    commands = [["status", "x"], ["jobs"], ["failures", "x"], ["worker"], ["sweep"], ["submit", str(folder), *TINY],
                ["label", str(folder), *TINY, "--classes", "cat"], ["cancel", "x"], ["db", "upgrade"]]
    outputs = []
    for env in (invalid, bad_db):
        for verbose in ([], ["-v"]):
            for cmd in commands:
                proc = lf(*verbose, *cmd, env=env, model_dir=model_dir)
                assert proc.returncode == 2, (cmd, proc.stderr)
                outputs.append(proc.stdout + proc.stderr)
    for cmd in (["-v", "sweep"], ["-v", "submit", str(folder), *TINY]):  # the database works, the broker not
        proc = lf(*cmd, env=broker_only, model_dir=model_dir)
        assert cmd[1] == "sweep" or (proc.returncode == 2 and "cannot reach the broker" in proc.stderr), proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    text = "\n".join(outputs)
    # the runs did fail as planned
    assert "task_soft_time_limit must be below" in text and "cannot use the database" in text
    assert PLANTED not in text


def test_redact_masks_url_credentials_and_password_pairs() -> None:
    from labelfleet.redact import one_line, redact

    assert redact("postgresql://lf:p@ss:w0rd@db:5432/x") == "postgresql://lf:***@db:5432/x"
    assert redact("redis://:pw@127.0.0.1:6379/0 and amqp://u:v@h//") == "redis://:***@127.0.0.1:6379/0 and " \
        "amqp://u:***@h//"
    assert redact("host=db password=hunter2 user=x") == "host=db password=*** user=x"
    assert redact("{'db_url': 'postgresql+psycopg://a:b@h/x'}") == "{'db_url': 'postgresql+psycopg://a:***@h/x'}"
    assert redact("sqlite:///labels.db http://127.0.0.1:9000/x") == "sqlite:///labels.db http://127.0.0.1:9000/x"
    assert one_line("\x1b[1mbold\x1b[0m\nsecond\tline\x07") == "bold; second\tline"


def test_logs_mask_secrets() -> None:
    import io
    import logging

    from labelfleet.logs import configure_logging

    stream = io.StringIO()
    configure_logging("INFO", handler=logging.StreamHandler(stream))
    try:
        logging.getLogger("lf.test").warning("connecting to %s", f"postgresql://u:{PLANTED}@h/x")
        try:
            raise RuntimeError(f"boom redis://:{PLANTED}@h:6379/0")
        except RuntimeError:
            logging.getLogger("lf.test").exception("failed")
    finally:
        logging.getLogger().handlers.clear()
    assert "postgresql://u:***@h/x" in stream.getvalue() and "redis://:***@h" in stream.getvalue()
    assert PLANTED not in stream.getvalue()


def test_a_running_worker_never_logs_the_broker_password(tmp_path: Path, model_dir: Path) -> None:
    """A worker that started (models loaded) but cannot reach its broker retries and logs it: masked."""
    from tests.waiting import wait_until

    _prepare("migrated", tmp_path, model_dir, {})
    log = tmp_path / "worker.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("LABELFLEET_")}
    base.update(PYTHONPATH=str(REPO), LABELFLEET_MODEL_DIR=str(model_dir), LABELFLEET_DEVICE="cpu",
                CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", LABELFLEET_MODELS="tiny-random",
                LABELFLEET_HEALTH_DIR=str(tmp_path / "health"),
                LABELFLEET_DB_URL=f"sqlite:///{tmp_path / 'migrated.db'}",
                LABELFLEET_BROKER_URL=f"redis://:{PLANTED}@127.0.0.1:1/0")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "labelfleet", "worker", "--loglevel", "DEBUG"], cwd=REPO,
                                env=base, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "Cannot connect to" in log.read_text() or proc.poll() is not None, 300,
                   "the worker to report the unreachable broker")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    text = log.read_text()
    assert "Cannot connect to" in text and ":***@127.0.0.1:1" in text, text[-2000:]
    assert PLANTED not in text
