"""Model downloads against a real HTTP server on loopback: resume, checksum, offline message."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labelfleet.errors import ChecksumError, ModelUnavailableError
from labelfleet.models.catalog import ModelFile
from labelfleet.models.download import download, verify

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
RANGES: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        RANGES.append(rng or "")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _mf(url: str, sha: str | None = None) -> ModelFile:
    return ModelFile("checkpoint", "w.pth", url + "/w.pth", len(PAYLOAD), sha or hashlib.sha256(PAYLOAD).hexdigest())


def test_download_and_verify(server: str, tmp_path: Path) -> None:
    RANGES.clear()
    seen: list[int] = []
    dest = download(_mf(server), tmp_path / "w.pth", progress=lambda done, total: seen.append(done))
    assert dest.read_bytes() == PAYLOAD and seen[-1] == len(PAYLOAD) and RANGES == [""]
    assert verify(_mf(server), dest) is None
    assert verify(_mf(server, "0" * 64), dest).startswith("sha256 ")  # type: ignore[union-attr]


def test_resume_from_partial_file(server: str, tmp_path: Path) -> None:
    RANGES.clear()
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD[:300_000])
    dest = download(_mf(server), tmp_path / "w.pth")
    assert RANGES == ["bytes=300000-"] and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "w.pth.part").exists()


def test_checksum_mismatch_removes_the_file(server: str, tmp_path: Path) -> None:
    with pytest.raises(ChecksumError, match=r"w\.pth: sha256 .* does not match the pinned 0000"):
        download(_mf(server, "0" * 64), tmp_path / "w.pth")
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.pth.part").exists()


def test_offline_message_names_file_url_and_destination(tmp_path: Path) -> None:
    mf = ModelFile("checkpoint", "w.pth", "http://127.0.0.1:9/w.pth", 10, "0" * 64)
    with pytest.raises(ModelUnavailableError) as info:
        download(mf, tmp_path / "w.pth", timeout=5)
    msg = info.value.message
    assert "model file w.pth is not available" in msg and "http://127.0.0.1:9/w.pth" in msg
    assert str(tmp_path / "w.pth") in msg


def test_models_fetch_offline_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labelfleet.cli import app

    monkeypatch.setenv("LABELFLEET_MODEL_DIR", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: offline, deterministically
    result = CliRunner().invoke(app, ["models", "fetch", "ram_plus"])
    assert isinstance(result.exception, ModelUnavailableError)
    msg = result.exception.message
    assert "ram_plus_swin_large_14m.pth" in msg and "huggingface.co/xinyu1205/recognize-anything-plus-model" in msg
    assert str(tmp_path / "ram_plus_swin_large_14m.pth") in msg


def test_models_list_shows_every_stage() -> None:
    from labelfleet.cli import app

    out = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "200"}).output
    for key in ("ram ", "ram_plus", "gdino_swint_ogc", "sam_vit_h", "5.6 GB", "3.0 GB", "694.7 MB", "2.6 GB"):
        assert key in out, key


def test_complete_part_file_is_verified_without_a_request(server: str, tmp_path: Path) -> None:
    RANGES.clear()
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD)  # crashed after the last write, before the rename
    assert download(_mf(server), tmp_path / "w.pth").read_bytes() == PAYLOAD
    assert RANGES == []


def test_short_transfer_keeps_the_partial_file(server: str, tmp_path: Path) -> None:
    big = ModelFile("checkpoint", "w.pth", server + "/w.pth", len(PAYLOAD) + 10, "0" * 64)  # server sends less
    with pytest.raises(ModelUnavailableError, match="download stopped at 1,048,576 of 1,048,586 bytes"):
        download(big, tmp_path / "w.pth")
    assert (tmp_path / "w.pth.part").stat().st_size == len(PAYLOAD)


def test_concurrent_downloads_take_turns(server: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: download(_mf(server), tmp_path / "w.pth"), range(4)))
    assert all(p.read_bytes() == PAYLOAD for p in paths)
