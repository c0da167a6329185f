"""Stable Diffusion inpainting of masked regions, cropped around the object and pasted back.

Images are ``(H, W, 3)`` uint8 RGB in the upright frame; masks ``(H, W)`` bool.
The model sees a crop around the (dilated) mask resized to its native resolution
(512 px for SD 1.5, 64 px for the tiny random model); the result is resized back
and blended in with an alpha that is 0 outside the dilated mask, so every pixel
outside it keeps its exact original value and a large photo keeps its resolution.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labelfleet.edit import EditParams
from labelfleet.errors import ConfigError, ModelUnavailableError
from labelfleet.models.catalog import UNVERIFIED, ModelFile, ModelSpec, get_model
from labelfleet.settings import Settings, resolve_device
from labelfleet.types import BoolArray, RGBImage
from workers.models import ProgressFactory, ResolvedModel

logger = logging.getLogger(__name__)
#: Context kept around the mask's box, as a fraction of the box's longer side.
CONTEXT = 0.25
#: GPUs with less memory than this get attention slicing (bigger ones run faster without it).
SLICING_BELOW_BYTES = 16 << 30


def folder_sha256(folder: Path) -> str:
    """sha256 over ``relative/path\\0<sha256 of the file>\\n`` of every file under ``folder``, sorted."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith((".sha256", ".lock"))):
        fh = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                fh.update(block)
        h.update(f"{path.relative_to(folder).as_posix()}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


def _download_unverified(mf: ModelFile, dest: Path, timeout: float = 30.0) -> None:
    """Fetch a file whose digest is not pinned: complete (Content-Length) or an error; the observed
    sha256 goes to ``<file>.sha256`` marked UNVERIFIED."""
    import urllib.error
    import urllib.request

    from labelfleet.models.download import missing_message, sha256_file

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        resp = urllib.request.urlopen(urllib.request.Request(mf.url, headers={"User-Agent": "labelfleet"}),
                                      timeout=timeout)
        expected = int(resp.headers.get("Content-Length") or 0)
        done = 0
        with resp, open(part, "wb") as out:
            while block := resp.read(1 << 20):
                out.write(block)
                done += len(block)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ModelUnavailableError(missing_message(mf, dest, f"cannot download {mf.url} ({exc})")) from exc
    if expected and done != expected:
        raise ModelUnavailableError(missing_message(mf, dest, f"download stopped at {done:,} of {expected:,} bytes"))
    digest = sha256_file(part)
    part.replace(dest)
    dest.with_name(dest.name + ".sha256").write_text(f"{digest} UNVERIFIED (observed, not pinned)\n")
    logger.warning("%s: sha256 %s is NOT pinned in the catalog (to be verified)", mf.filename, digest)


def _fetch_unpinned(spec: ModelSpec, root: Path, *, allow_download: bool, progress: ProgressFactory | None) -> Path:
    """Official inpainting files into ``root``; digests marked UNVERIFIED are recorded, not checked."""
    from labelfleet.models.download import download, missing_message

    for mf in spec.files:
        dest = root / mf.filename
        if dest.exists():
            continue
        if not allow_download:
            raise ModelUnavailableError(missing_message(mf, dest, "not in the model cache"))
        if mf.sha256 == UNVERIFIED:
            _download_unverified(mf, dest)
        else:
            download(mf, dest, progress=progress(mf.filename, mf.size) if progress else None)
    return root / spec.files[0].filename.split("/", 1)[0]


def resolve_inpainter(key: str, settings: Settings, *, checkpoint_dir: Path | None = None,
                      allow_download: bool = True, progress: ProgressFactory | None = None) -> ResolvedModel:
    """Files of inpainting model ``key`` (or a local diffusers folder ``checkpoint_dir``) on local disk.

    ``files["pipeline_dir"]`` is the diffusers folder; ``checkpoint_sha256`` the
    :func:`folder_sha256` of it (cached in ``<folder>.sha256`` for the official and tiny ones).
    """
    spec = get_model(key, "inpainter")
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ConfigError(f"--edit-checkpoint {folder} is not a diffusers folder (no model_index.json)")
        return ResolvedModel(key, "inpainter", "local", {"pipeline_dir": folder}, folder_sha256(folder))
    if spec.generated:
        from workers.models import _generate

        folder = _generate(spec, settings.model_path)["pipeline_dir"]
        origin = "generated"
    else:
        folder = _fetch_unpinned(spec, settings.model_path, allow_download=allow_download, progress=progress)
        origin = "official"
    marker = folder.with_name(folder.name + ".sha256")
    digest = marker.read_text().strip() if marker.exists() else None
    if not digest:
        digest = folder_sha256(folder)
        try:
            marker.write_text(digest + "\n")
        except OSError:
            logger.debug("read-only model cache: %s not written", marker)
    return ResolvedModel(key, "inpainter", origin, {"pipeline_dir": folder}, digest)


def prepare_mask(mask: BoolArray, dilate: int, feather: int) -> tuple[BoolArray, np.ndarray]:
    """``(region, alpha)``: the mask dilated by ``dilate`` px (what the model repaints) and a float32
    ``(H, W)`` blend weight that is 0 outside ``region`` and ramps to 1 over ``feather`` px inside it."""
    import cv2

    m: Any = np.asarray(mask, dtype=np.uint8)
    if dilate:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        m = cv2.dilate(m, kernel)
    region = m.astype(bool)
    if not feather:
        return region, region.astype(np.float32)
    dist = cv2.distanceTransform(m, cv2.DIST_L2, 5)
    return region, np.clip(dist / float(feather), 0.0, 1.0).astype(np.float32)


def crop_box(region: BoolArray, native: int) -> tuple[int, int, int, int]:
    """Pixel ``(x0, y0, x1, y1)`` (exclusive ends) of a square-as-possible crop around ``region``:
    its box plus :data:`CONTEXT`, at least ``native`` px a side where the image allows, inside the image."""
    h, w = region.shape
    ys, xs = np.nonzero(region)
    bx0, bx1, by0, by1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    side = max(bx1 - bx0, by1 - by0)
    side = max(round(side * (1 + 2 * CONTEXT)), native)
    cw, ch = min(side, w), min(side, h)
    cx, cy = (bx0 + bx1) // 2, (by0 + by1) // 2
    x0 = min(max(cx - cw // 2, 0), w - cw)
    y0 = min(max(cy - ch // 2, 0), h - ch)
    return x0, y0, x0 + cw, y0 + ch


def model_size(cw: int, ch: int, native: int) -> tuple[int, int]:
    """``(width, height)`` the model runs at for a ``cw x ch`` crop: longer side ``native``, multiples of 8."""
    scale = native / max(cw, ch)
    return max(8, round(cw * scale / 8) * 8), max(8, round(ch * scale / 8) * 8)


def _dtype(device: str, dtype: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


class Inpainter:
    """A loaded ``StableDiffusionInpaintPipeline`` (load once per process, see :func:`get_inpainter`)."""

    def __init__(self, pipeline_dir: Path, device: str, *, dtype: str = "auto",
                 attention_slicing: bool | None = None) -> None:
        import torch
        from diffusers import StableDiffusionInpaintPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        if not logger.isEnabledFor(logging.INFO):  # "install accelerate" advice, unless -v
            diffusers_logging.set_verbosity_error()
        self.device = device
        self.dtype = _dtype(device, dtype)
        variant = "fp16" if any(Path(pipeline_dir).glob("unet/*.fp16.safetensors")) else None
        self.pipe = StableDiffusionInpaintPipeline.from_pretrained(
            str(pipeline_dir), torch_dtype=self.dtype, variant=variant, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, local_files_only=True).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        if attention_slicing is None:
            attention_slicing = (device.startswith("cuda")
                                 and torch.cuda.get_device_properties(device).total_memory < SLICING_BELOW_BYTES)
        if attention_slicing:
            self.pipe.enable_attention_slicing()
        self.attention_slicing = attention_slicing
        self.native = int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def edit(self, image: RGBImage, mask: BoolArray, params: EditParams, seeds: list[int]) -> list[RGBImage]:
        """One full-frame edited image per seed (all variants in one batched call)."""
        import torch

        region, alpha = prepare_mask(mask, params.dilate, params.feather)
        x0, y0, x1, y1 = crop_box(region, self.native)
        crop, crop_region = image[y0:y1, x0:x1], region[y0:y1, x0:x1]
        tw, th = model_size(x1 - x0, y1 - y0, self.native)
        out = self.pipe(
            prompt=params.prompt, negative_prompt=params.negative_prompt,
            image=Image.fromarray(crop).resize((tw, th), Image.Resampling.LANCZOS),
            mask_image=Image.fromarray(crop_region.astype(np.uint8) * 255).resize((tw, th), Image.Resampling.NEAREST),
            height=th, width=tw, num_inference_steps=params.steps, guidance_scale=params.guidance,
            strength=params.strength, num_images_per_prompt=len(seeds), output_type="np",
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
        a = alpha[y0:y1, x0:x1, None]
        results = []
        for gen in out.images:
            g = Image.fromarray((np.clip(gen, 0, 1) * 255).round().astype(np.uint8))
            g_arr = np.asarray(g.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), dtype=np.float32)
            blended = (a * g_arr + (1 - a) * crop.astype(np.float32)).round().astype(np.uint8)
            full = image.copy()
            full[y0:y1, x0:x1] = np.where(crop_region[..., None], blended, crop)
            results.append(full)
        return results


_CACHE: dict[tuple[str, str, str], Inpainter] = {}
_LOCK = threading.Lock()


def get_inpainter(res: ResolvedModel, settings: Settings, dtype: str = "auto") -> Inpainter:
    """The process-wide :class:`Inpainter` of a resolved model (loaded on first use, then shared)."""
    device = resolve_device(settings.device)
    key = (str(res.files["pipeline_dir"]), device, dtype)
    with _LOCK:
        if key not in _CACHE:
            logger.info("loading inpainting model %s on %s", res.key, device)
            _CACHE[key] = Inpainter(res.files["pipeline_dir"], device, dtype=dtype)
        return _CACHE[key]
