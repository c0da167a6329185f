"""Edit-job building blocks (issue 14): mask prep, crop geometry, names, queues, write-once destinations,
revision-pinned config downloads. Real S3 via the moto server, a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from labelfleet.edit import EditParams, output_key, plan_units
from labelfleet.errors import ChecksumError, ModelUnavailableError, PermanentError
from labelfleet.models.catalog import NO_DIGEST, SD_INPAINT_REVISION, ModelFile, ModelSpec
from labelfleet.storage.dest import LocalDestination, S3Destination
from labelfleet.tasknames import edit_queue_for, queue_for, task_for_queue


def _disk(h: int, w: int, cx: int, cy: int, r: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return (x - cx) ** 2 + (y - cy) ** 2 < r * r


def test_prepare_mask_dilates_and_feathers_only_inside() -> None:
    from workers.inpaint import prepare_mask

    mask = _disk(100, 120, 60, 50, 20)
    region, alpha = prepare_mask(mask, dilate=5, feather=4)
    assert region[mask].all() and region.sum() > mask.sum()
    assert not region[50, 60 + 26] and region[50, 60 + 24]  # grown by ~5 px, not more
    assert (alpha[~region] == 0).all() and alpha.max() == 1.0
    assert 0 < alpha[50, 60 + 24] < 1  # ramps up over the feather width at the edge
    hard_region, hard = prepare_mask(mask, dilate=0, feather=0)
    assert np.array_equal(hard_region, mask) and set(np.unique(hard)) == {0.0, 1.0}


@pytest.mark.parametrize(("shape", "disk", "native", "box"), [
    ((600, 800), (400, 300, 30), 64, (356, 256, 444, 344)),  # 59 px box + 25% context each side = 88 px square
    ((600, 800), (400, 300, 200), 64, (101, 1, 699, 599)),  # 399 px box + context: 598 px square, inside
    ((600, 800), (10, 10, 8), 64, (0, 0, 64, 64)),  # at a corner: shifted inside the image
    ((40, 800), (400, 20, 10), 64, (368, 0, 432, 40)),  # image thinner than native: full height
])
def test_crop_box(shape: tuple[int, int], disk: tuple[int, int, int], native: int,
                  box: tuple[int, int, int, int]) -> None:
    from workers.inpaint import crop_box

    region = _disk(*shape, *disk)
    x0, y0, x1, y1 = crop_box(region, native)
    assert (x0, y0, x1, y1) == box
    assert region[y0:y1, x0:x1].sum() == region.sum()  # the whole mask is inside the crop


@pytest.mark.parametrize(("crop", "native", "size"), [((64, 64), 64, (64, 64)), ((800, 600), 512, (512, 384)),
                                                      ((100, 30), 64, (64, 16)), ((10, 1000), 512, (8, 512))])
def test_model_size_keeps_aspect_in_multiples_of_8(crop: tuple[int, int], native: int, size: tuple[int, int]) -> None:
    from workers.inpaint import model_size

    assert model_size(*crop, native) == size


def test_output_names_units_and_queues() -> None:
    p = EditParams(prompt="a corgi", out="/o", targets=("dog",))
    assert output_key("photos/a.b.jpg", "all", 1, 7, p.digest) == f"photos/a.b__all_v1_s7_{p.digest}.png"
    assert output_key("noext", "i3", 0, 0, "d") == "noext__i3_v0_s0_d.png"
    assert p.digest != EditParams(prompt="a corgi", out="/o", targets=("dog",), steps=31).digest
    assert p.digest == EditParams(prompt="a corgi", out="/elsewhere", targets=("dog",), seed=9).digest
    assert p.seeds() == [0, 1, 2, 3]
    assert [u.instance for u in plan_units([0, 2], True)] == ["i0", "i2"]
    assert plan_units([0, 2], False)[0].detection_idx == (0, 2) and plan_units([], False) == []
    assert edit_queue_for("tiny-random") == "lf.edit.tiny-random"
    assert task_for_queue(edit_queue_for("x y")) == "labelfleet.edit_chunk"
    assert task_for_queue(queue_for("default")) == "labelfleet.process_chunk"


def test_local_destination_never_overwrites(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path / "out")
    assert dest.put_new("a/b.png", b"one") and not dest.put_new("a/b.png", b"two")
    assert dest.read("a/b.png") == b"one" and sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == ["b.png"]
    for bad in ("../x.png", "/abs.png", "a//b.png", "a/./b.png"):
        with pytest.raises(PermanentError, match="unsafe output key"):
            dest.put_new(bad, b"x")


def test_s3_destination_never_overwrites(s3_endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="dest-once")
    s3.put_bucket_versioning(Bucket="dest-once", VersioningConfiguration={"Status": "Enabled"})
    dest = S3Destination("s3://dest-once/pre", endpoint_url=s3_endpoint)
    assert not dest.exists("k.png")
    assert dest.put_new("k.png", b"one") and not dest.put_new("k.png", b"two")
    assert dest.read("k.png") == b"one" and dest.uri_for("k.png") == "s3://dest-once/pre/k.png"
    versions = s3.list_object_versions(Bucket="dest-once")["Versions"]
    assert [v["Key"] for v in versions] == ["pre/k.png"]


BODY = b"weights" * 1000


class _Handler(BaseHTTPRequestHandler):
    hits: list[str] = []  # noqa: RUF012

    def do_GET(self) -> None:
        self.hits.append(self.path)
        short = self.path.rsplit("/", 1)[-1].startswith("short")  # announces 100 bytes more than it sends
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY) + (100 if short else 0)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_revision_pinned_config_files_are_fetched_with_their_observed_digest_recorded(server: str, tmp_path: Path
                                                                                       ) -> None:
    from labelfleet.models.download import download
    from workers.models import _fetch_official

    pinned = f"{server}/repo/resolve/{'a' * 40}"
    spec = ModelSpec("x", "inpainter", "test", (ModelFile("config/unet/config.json", "sd/unet/config.json",
                                                          f"{pinned}/unet/config.json", 0, NO_DIGEST),))
    files = _fetch_official(spec, tmp_path, allow_download=True, progress=None, skip_roles=set())
    assert files["config/unet/config.json"] == tmp_path / "sd" / "unet" / "config.json"
    assert files["config/unet/config.json"].read_bytes() == BODY
    marker = (tmp_path / "sd" / "unet" / "config.json.sha256").read_text()
    assert marker == f"{hashlib.sha256(BODY).hexdigest()} observed (pinned by the repository revision)\n"
    n = len(_Handler.hits)
    _fetch_official(spec, tmp_path, allow_download=False, progress=None, skip_roles=set())  # cached: no request
    assert len(_Handler.hits) == n
    short = ModelFile("config/a.json", "sd2/a.json", f"{pinned}/short.json", 0, NO_DIGEST)
    with pytest.raises(ModelUnavailableError, match="download stopped at"):
        download(short, tmp_path / short.filename)
    assert not (tmp_path / "sd2" / "a.json").exists()
    n = len(_Handler.hits)
    for unpinned in (ModelFile("checkpoint", "sd3/w.ckpt", f"{pinned}/w.ckpt", 0, NO_DIGEST),  # weights
                     ModelFile("config/b.json", "sd3/b.json", f"{server}/repo/resolve/main/b.json", 0, NO_DIGEST)):
        with pytest.raises(ChecksumError, match="pins no sha256"):  # a branch is no pin
            download(unpinned, tmp_path / unpinned.filename)
    assert len(_Handler.hits) == n and not (tmp_path / "sd3").exists()


def test_models_fetch_sd15_inpaint_offline_names_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    from typer.testing import CliRunner

    from labelfleet.cli import app

    monkeypatch.setenv("LABELFLEET_MODEL_DIR", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    result = CliRunner().invoke(app, ["models", "fetch", "sd15_inpaint"])
    assert isinstance(result.exception, ModelUnavailableError)
    assert (f"huggingface.co/stable-diffusion-v1-5/stable-diffusion-inpainting/resolve/{SD_INPAINT_REVISION}/"
            "sd-v1-5-inpainting.ckpt") in result.exception.message
    assert "sha256 c6bbc15e3224e6973459ba78de4998b80b50112b0ae5b5c67113d56b4e366b19" in result.exception.message
