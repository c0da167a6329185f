"""A folder of everything a filesystem can hold, labelled through the real CLI to ``done``.

Symlink loops, dangling links, a FIFO named ``pipe.jpg``, a socket, a device node, an unreadable
file and folder, hidden files, HEIC/AVIF photos and a decompression bomb: every entry ends as an
item with a reason or as a counted skip in the listing summary, never a crash or a hang.

Unreadable entries: tests run as root here, and root reads any file (CAP_DAC_OVERRIDE). The CLI is
therefore run with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its bounding set
(``setpriv``), so ``chmod 000`` applies to it like to any user. Without setpriv, a root run leaves
those two entries out (they would be read successfully) and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labelfleet.errors import PermanentError, StorageError
from labelfleet.storage import local as local_mod
from labelfleet.storage.base import ListingReport, open_source
from tests.imagegen import bad_inputs, scene, write_scenes

REPO = Path(__file__).resolve().parents[1]
CAN_DROP_ROOT = os.geteuid() != 0 or shutil.which("setpriv") is not None

# key -> (status, start of the reason) of every listed image; the rest must be "done"
EXPECTED_FAILED = {
    "a.jpg": "symbolic link loop",
    "b.jpg": "symbolic link loop",
    "dangling.jpg": "dangling symbolic link (points to 'missing.jpg'",
    "pipe.jpg": "not a regular file but a named pipe (FIFO)",
    "sock.png": "not a regular file but a socket",
    "null.jpg": "not a regular file but a character device",
    "huge.png": "image too large: 400,000,000 pixels exceeds the limit",
    "unreadable.jpg": "permission denied",
}
EXPECTED_DONE = {"img_0000.jpg", "img_0001.jpg", "img_0002.jpg", "nested/img_0100.png", "link.jpg",
                 "photo.heic", "photo.avif"}
EXPECTED_SKIPPED = {"hidden": 2, "unsupported format": 1, "symlinked folder (not followed)": 1,
                    "unreadable folder": 1}


def make_corpus(root: Path) -> None:
    """Write the awkward folder (see the module docstring)."""
    import pillow_heif

    write_scenes(root, 3)
    write_scenes(root / "nested", 1, start=100, fmt="png")
    (root / "a.jpg").symlink_to("b.jpg")
    (root / "b.jpg").symlink_to("a.jpg")
    (root / "dangling.jpg").symlink_to("missing.jpg")
    (root / "link.jpg").symlink_to("img_0000.jpg")
    (root / "linked_dir").symlink_to("nested")
    os.mkfifo(root / "pipe.jpg")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock.png"))
    os.mknod(root / "null.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    shutil.copy(root / "img_0001.jpg", root / "unreadable.jpg")
    os.chmod(root / "unreadable.jpg", 0)
    write_scenes(root / "locked", 1, start=200)
    os.chmod(root / "locked", 0)
    shutil.copy(root / "img_0001.jpg", root / ".hidden.jpg")
    write_scenes(root / ".thumbs", 1, start=300)
    (root / "notes.txt").write_text("not an image")
    pillow_heif.register_heif_opener()
    scene(7).save(root / "photo.heic", format="HEIF")
    scene(8).save(root / "photo.avif", format="AVIF")
    (root / "huge.png").write_bytes(bad_inputs()["bomb.png"])


def lf(*args: str, model_dir: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user who cannot read chmod-000 files (see module docstring)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("LABELFLEET_")}
    full.update(PYTHONPATH=str(REPO), LABELFLEET_MODEL_DIR=str(model_dir), LABELFLEET_DEVICE="cpu",
                OMP_NUM_THREADS="1", COLUMNS="250")
    full.update(env or {})
    cmd = [sys.executable, "-m", "labelfleet", *args]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    proc = subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _items(db: Path) -> dict[str, tuple[str, str | None, str | None]]:
    with sqlite3.connect(db) as conn:
        return {k: (s, e, f) for k, s, e, f in conn.execute("select key, status, error, finished_at from items")}


@pytest.fixture
def corpus(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "corpus"
    make_corpus(root)
    if not CAN_DROP_ROOT:  # root that cannot drop CAP_DAC_OVERRIDE reads these fine: leave them out
        os.remove(root / "unreadable.jpg")
        os.chmod(root / "locked", 0o755)
        shutil.rmtree(root / "locked")
    yield root
    if (root / "locked").exists():
        os.chmod(root / "locked", 0o755)  # so pytest can remove tmp_path (as a non-root user)


def test_corpus_labels_to_done_with_every_entry_accounted_for(corpus: Path, tmp_path: Path,
                                                              model_dir: Path) -> None:
    db = tmp_path / "labels.db"
    args = ["label", str(corpus), "--db", f"sqlite:///{db}", "--models", "tiny-random", "--classes", "cat,dog"]
    out = lf(*args, model_dir=model_dir).stdout
    failed = dict(EXPECTED_FAILED)
    skipped = dict(EXPECTED_SKIPPED)
    if not CAN_DROP_ROOT:
        failed.pop("unreadable.jpg")
        skipped.pop("unreadable folder")
    listing_line = next(ln for ln in out.splitlines() if ln.startswith("listing "))
    assert f"{len(failed) + len(EXPECTED_DONE)} images" in listing_line
    assert f"{sum(skipped.values())} skipped: " in listing_line and "1 unsupported format" in listing_line

    items = _items(db)
    assert set(items) == set(failed) | EXPECTED_DONE  # every image-named entry is an item, nothing else
    for key, reason in failed.items():
        status, error, _ = items[key]
        assert status == "failed" and error is not None and error.startswith(reason), (key, status, error)
    assert {k for k, (s, _, _) in items.items() if s == "done"} == EXPECTED_DONE
    with sqlite3.connect(db) as conn:
        state, finished, report = conn.execute("select state, finished_at, listing_report from jobs").fetchone()
    assert state == "done" and finished is not None  # stored, not only derived
    assert json.loads(report)["skipped"] == skipped

    st = json.loads(lf("status", "corpus", "--db", f"sqlite:///{db}", "--json", model_dir=model_dir).stdout)
    assert st["state"] == "done" and st["pending"] == st["running"] == 0 and st["total"] == len(items)
    assert all(w["active_s"] > 0 and w["images_per_s"] > 0 for w in st["workers"])
    rows = json.loads(lf("failures", "corpus", "--db", f"sqlite:///{db}", "--json", model_dir=model_dir).stdout)
    assert {r["key"]: r["reason"] for r in rows} == {k: items[k][1] for k in failed}

    # A finished job with nothing new exits before any model loads: an unusable model folder proves it.
    no_models = {"LABELFLEET_MODEL_DIR": "/proc/lf_no_models"}
    again = lf(*args, model_dir=model_dir, env=no_models).stdout
    assert "nothing new to label" in again and "0 new" in again

    # New files are found on the next run; changed ones only with --changed.
    write_scenes(corpus / "later", 1, start=400)
    scene(99, 200, 100).save(corpus / "img_0001.jpg")
    before = _items(db)["img_0001.jpg"]
    out = lf(*args, model_dir=model_dir).stdout
    assert "1 new, 1 changed (not labelled again: use --changed)" in out
    after = _items(db)
    assert after["later/img_0400.jpg"][0] == "done" and after["img_0001.jpg"] == before
    out = lf(*args, "--changed", model_dir=model_dir).stdout
    assert "0 new, 1 changed (1 labelled again)" in out
    relabelled = _items(db)["img_0001.jpg"]
    assert relabelled[0] == "done" and relabelled[2] != before[2]
    status_text = lf("status", "corpus", "--db", f"sqlite:///{db}", model_dir=model_dir).stdout
    assert "0 added, 1 changed (1 labelled again)" in status_text


def test_listing_counts_and_never_opens_special_files(tmp_path: Path) -> None:
    root = tmp_path / "c"
    make_corpus(root)
    try:
        src = open_source(str(root))
        keys = [r.key for r in src.list()]
        assert "pipe.jpg" in keys and ".hidden.jpg" not in keys and "notes.txt" not in keys
        assert src.report.skipped["hidden"] == 2 and src.report.problems["symbolic link loop"] == 2
        with_hidden = open_source(str(root), include_hidden=True)
        hidden = {r.key for r in with_hidden.list()} - set(keys)
        assert hidden == {".hidden.jpg", ".thumbs/img_0300.jpg"}
        for key, reason in (("pipe.jpg", "named pipe"), ("a.jpg", "symbolic link loop"),
                            ("dangling.jpg", "dangling"), ("sock.png", "socket")):
            with pytest.raises(PermanentError, match=reason):
                src.read(key)  # a FIFO is never opened, so this cannot block
    finally:
        os.chmod(root / "locked", 0o755)


def test_a_read_that_hangs_times_out_and_ctrl_c_abandons_it(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def stuck(path: Path) -> bytes:  # a read on a hung mount: blocks until released
        release.wait(60)
        return b""

    monkeypatch.setattr(local_mod, "_read_regular", stuck)
    try:
        with pytest.raises(StorageError, match=r"took longer than 0\.2 s"):
            local_mod.read_file(tmp_path / "x.jpg", 0.2)
        threading.Timer(0.2, local_mod.abort_reads).start()
        with pytest.raises(StorageError, match="abandoned: interrupted"):  # not the 1-hour timeout
            local_mod.read_file(tmp_path / "x.jpg", 3600)
    finally:
        local_mod._ABORT.clear()
        release.set()


def test_empty_folder_gives_a_hint(tmp_path: Path, model_dir: Path) -> None:
    from tests.conftest import REDIS_URL

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    out = lf("submit", str(tmp_path / "empty"), "--db", f"sqlite:///{tmp_path}/e.db", "--broker", REDIS_URL,
             "--models", "tiny-random", model_dir=model_dir).stdout
    assert "0 images, 1 skipped: 1 hidden; 0 new" in out and "no images found; listed extensions:" in out


def test_s3_listing_reports_hidden_and_unsupported(s3_endpoint: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="lf-hidden")
    for key in ("p/a.jpg", "p/.trash/b.jpg", "p/notes.txt", "p/c.heic"):
        client.put_object(Bucket="lf-hidden", Key=key, Body=b"x")
    src = open_source("s3://lf-hidden/p", s3_endpoint_url=s3_endpoint)
    assert [r.key for r in src.list()] == ["a.jpg", "c.heic"]
    assert src.report.skipped == {"hidden": 1, "unsupported format": 1}
    src = open_source("s3://lf-hidden/p", s3_endpoint_url=s3_endpoint, include_hidden=True)
    assert [r.key for r in src.list()] == [".trash/b.jpg", "a.jpg", "c.heic"]


def test_listing_summary_line() -> None:
    rep = ListingReport(images=8)
    for reason in ("unsupported format", "unsupported format", "unsupported format", "hidden"):
        rep.skip(reason, "x")
    rep.problem("symbolic link loop", "a.jpg")
    assert rep.summary() == "8 images (1 unreadable: 1 symbolic link loop), 4 skipped: 3 unsupported format, 1 hidden"


_HANGING_CLI = """
import sys, threading
import labelfleet.storage.local as local
real = local._read_regular

def read(path):  # slow.jpg behaves like a file on a dead network mount: its read never returns
    if path.name == "slow.jpg":
        print("READ-HANGS", file=sys.stderr, flush=True)
        threading.Event().wait()
    return real(path)

local._read_regular = read
from labelfleet.cli import main
sys.argv = ["labelfleet", *sys.argv[1:]]
main()
"""


def test_ctrl_c_during_a_hung_read_exits_cleanly(tmp_path: Path, model_dir: Path) -> None:
    import signal

    root = tmp_path / "photos"
    write_scenes(root, 2)
    shutil.copy(root / "img_0000.jpg", root / "slow.jpg")
    db = f"sqlite:///{tmp_path}/h.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELFLEET_")}
    env.update(PYTHONPATH=str(REPO), LABELFLEET_MODEL_DIR=str(model_dir), LABELFLEET_DEVICE="cpu",
               OMP_NUM_THREADS="1", LABELFLEET_BATCH_SIZE="1")
    args = ["label", str(root), "--db", db, "--models", "tiny-random", "--classes", "cat"]
    proc = subprocess.Popen([sys.executable, "-c", _HANGING_CLI, *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any("READ-HANGS" in ln for ln in lines) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any("READ-HANGS" in ln for ln in lines), "".join(lines)
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=120)  # a deadline, not a time limit: a hung exit never returns at all
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("Ctrl-C did not end the process while a read hung:\n" + "".join(lines)) from None
    reader.join(10)
    out = "".join(lines)
    assert rc == 130, out
    assert "is consistent; run the same command again" in out and "Traceback" not in out
    os.remove(root / "slow.jpg")
    again = lf(*args, model_dir=model_dir).stdout  # the job resumes and finishes
    assert "done - 2 done" in again
