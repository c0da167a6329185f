"""The pinned SD 1.5 inpainting model is ONE original-format (LDM) checkpoint plus diffusers config files
(issue 14). Offline and for real: the tiny random pipeline is written as such a checkpoint
(:mod:`tests.ldm_checkpoint`), served from a loopback HTTP server in the catalog's URL layout, fetched with
its sha256 verified, loaded through ``from_single_file`` and must edit exactly like the diffusers folder."""

from __future__ import annotations

import argparse
import functools
import hashlib
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelfleet.edit import EditParams
from labelfleet.errors import ChecksumError, PermanentError
from labelfleet.models.catalog import NO_DIGEST, ModelFile, ModelSpec
from tests.ldm_checkpoint import write_ldm_checkpoint

REVISION = "0123456789abcdef0123456789abcdef01234567"
CONFIGS = ("model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "tokenizer/merges.txt",
           "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
           "unet/config.json", "vae/config.json")


@dataclass(frozen=True)
class Tiny:
    folder: Path  # the diffusers folder (from_pretrained)
    ckpt: Path  # the same weights as one LDM-format checkpoint
    config_dir: Path  # only the config files of ``folder``, laid out like the diffusers repository


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from diffusers import StableDiffusionInpaintPipeline

    from workers.stages.tiny_inpaint import make_tiny_inpaint_files

    root = tmp_path_factory.mktemp("tiny-sd")
    folder = make_tiny_inpaint_files(root)["pipeline_dir"]
    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(folder), local_files_only=True, safety_checker=None,
                                                          feature_extractor=None, requires_safety_checker=False)
    ckpt = write_ldm_checkpoint(pipe, root / "tiny-inpainting.ckpt")
    config_dir = root / "config"
    for rel in CONFIGS:
        (config_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / rel, config_dir / rel)
    assert not [p for p in config_dir.rglob("*") if p.suffix in (".safetensors", ".bin")]
    return Tiny(folder, ckpt, config_dir)


def _scene() -> tuple[np.ndarray, np.ndarray, EditParams]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    y, x = np.mgrid[0:96, 0:128]
    mask = (x - 70) ** 2 + (y - 40) ** 2 < 20 ** 2
    return image, mask, EditParams(prompt="a corgi", out="-", targets=("dog",), steps=3, dilate=2, feather=2)


def _edits(files: dict[str, Path]) -> tuple[Any, list[np.ndarray]]:
    from workers.inpaint import Inpainter

    inp = Inpainter(files, "cpu", dtype="fp32")
    image, mask, params = _scene()
    return inp, inp.edit(image, mask, params, [0, 5])


def test_single_file_checkpoint_loads_the_same_weights_and_edits_bit_identically(tiny: Tiny) -> None:
    import torch

    single, single_out = _edits({"checkpoint": tiny.ckpt, "config_dir": tiny.config_dir})
    folder, folder_out = _edits({"pipeline_dir": tiny.folder})
    for name in ("unet", "vae", "text_encoder"):  # every weight converted back, none left at random init
        a = getattr(folder.pipe, name).state_dict()
        b = getattr(single.pipe, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert type(single.pipe.scheduler) is type(folder.pipe.scheduler)
    assert single.native == folder.native == 64
    assert len(single_out) == 2 and not np.array_equal(single_out[0], single_out[1])  # seeds matter
    for a_img, b_img in zip(single_out, folder_out, strict=True):
        assert np.array_equal(a_img, b_img)  # same seed, same weights: the same picture, bit for bit


def test_single_file_checkpoint_loads_in_the_requested_dtype(tiny: Tiny) -> None:
    import torch

    from workers.inpaint import Inpainter

    inp = Inpainter({"checkpoint": tiny.ckpt, "config_dir": tiny.config_dir}, "cpu", dtype="fp16")
    assert inp.pipe.unet.dtype == inp.pipe.vae.dtype == inp.pipe.text_encoder.dtype == torch.float16


def _bad_files(tmp_path: Path, tiny: Tiny) -> dict[str, tuple[Path, str]]:
    import torch

    data = tiny.ckpt.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.ckpt").write_bytes(b"this is no checkpoint\n" * 50)
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
                               "first_stage_model.encoder.conv_in.weight": torch.zeros(1),
                               "cond_stage_model.transformer.x": torch.zeros(1)}}, tmp_path / "txt2img.ckpt")
    torch.save({"state_dict": {"first_stage_model.encoder.conv_in.weight": torch.zeros(1)}}, tmp_path / "vae.ckpt")
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.ckpt")
    return {"truncated": (tmp_path / "truncated.ckpt", "truncated or corrupt"),
            "garbage": (tmp_path / "garbage.ckpt", "truncated or corrupt"),
            "txt2img": (tmp_path / "txt2img.ckpt", "takes 4 input channels, inpainting needs 9"),
            "vae": (tmp_path / "vae.ckpt", "no model.diffusion_model.*, cond_stage_model.transformer.* weights"),
            "pickled": (tmp_path / "pickled.ckpt", "not a plain weights file"),
            "missing": (tmp_path / "nope.ckpt", "does not exist")}


def test_a_bad_checkpoint_is_one_clear_line(tmp_path: Path, tiny: Tiny) -> None:
    from labelfleet.cli.errors import describe
    from workers.inpaint import Inpainter
    from workers.sd_single_file import SDCheckpointError

    for name, (path, expected) in _bad_files(tmp_path, tiny).items():
        with pytest.raises(SDCheckpointError) as info:
            Inpainter({"checkpoint": path, "config_dir": tiny.config_dir}, "cpu", dtype="fp32")
        assert isinstance(info.value, PermanentError), name
        assert expected in info.value.message and str(path) in info.value.message, (name, info.value.message)
        assert "\n" not in info.value.message and describe(info.value) == info.value.message, name
    with pytest.raises(SDCheckpointError, match=r"holds no model_index\.json"):
        Inpainter({"checkpoint": tiny.ckpt, "config_dir": tmp_path}, "cpu", dtype="fp32")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hub(tmp_path: Path, tiny: Tiny) -> Iterator[tuple[Path, str]]:
    """A loopback server with the Hub's URL layout: ``/<repo>/resolve/<revision>/<file>``."""
    served = tmp_path / "served"
    base = served / "org" / "tiny-inpainting" / "resolve" / REVISION
    shutil.copytree(tiny.config_dir, base)
    shutil.copy(tiny.ckpt, base / "tiny-inpainting.ckpt")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield base, f"http://127.0.0.1:{httpd.server_address[1]}/org/tiny-inpainting/resolve/{REVISION}"
    httpd.shutdown()
    httpd.server_close()


def _spec(url: str, ckpt: Path) -> ModelSpec:
    """A catalog entry shaped like ``sd15_inpaint``: the pinned checkpoint + revision-pinned configs."""
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    return ModelSpec("tiny_single_file", "inpainter", "test", (
        ModelFile("checkpoint", "tsf/tiny-inpainting.ckpt", f"{url}/tiny-inpainting.ckpt", ckpt.stat().st_size,
                  digest),
        *(ModelFile(f"config/{rel}", f"tsf/config/{rel}", f"{url}/{rel}", 0, NO_DIGEST) for rel in CONFIGS)))


def test_fetched_checkpoint_is_verified_and_loaded_by_the_edit_worker(tmp_path: Path, tiny: Tiny,
                                                                      hub: tuple[Path, str]) -> None:
    from labelfleet.settings import Settings
    from workers.inpaint import get_inpainter, resolve_single_file

    base, url = hub
    spec = _spec(url, tiny.ckpt)
    models = tmp_path / "models"
    progress: list[int] = []
    res = resolve_single_file(spec, models, progress=lambda name, total: lambda done, _: progress.append(done))
    assert res.origin == "official" and res.checkpoint_sha256 == spec.files[0].sha256
    assert res.files == {"checkpoint": models / "tsf/tiny-inpainting.ckpt", "config_dir": models / "tsf/config"}
    assert progress[-1] == tiny.ckpt.stat().st_size
    assert (models / "tsf/tiny-inpainting.ckpt.sha256").read_text().strip() == spec.files[0].sha256
    assert sorted(p.name for p in (models / "tsf/config/unet").iterdir()) == ["config.json", "config.json.sha256"]
    inp = get_inpainter(res, Settings(model_dir=models, device="cpu"), dtype="fp32")
    _, folder_out = _edits({"pipeline_dir": tiny.folder})
    image, mask, params = _scene()
    assert all(np.array_equal(a, b) for a, b in zip(inp.edit(image, mask, params, [0, 5]), folder_out, strict=True))
    # offline, from the cache: no download needed
    assert resolve_single_file(spec, models, allow_download=False).files == res.files

    data = bytearray(tiny.ckpt.read_bytes())  # the server now hands out a corrupted copy
    data[len(data) // 2] ^= 0xFF
    (base / "tiny-inpainting.ckpt").write_bytes(bytes(data))
    other = tmp_path / "models2"
    with pytest.raises(ChecksumError, match="does not match the pinned") as info:
        resolve_single_file(spec, other)
    assert "\n" not in info.value.message
    assert not (other / "tsf/tiny-inpainting.ckpt").exists() and not (other / "tsf/tiny-inpainting.ckpt.part").exists()
