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
from labelfleet.errors import ConfigError
from labelfleet.models.catalog import ModelSpec, get_model
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


def resolve_single_file(spec: ModelSpec, root: Path, *, allow_download: bool = True,
                        progress: ProgressFactory | None = None) -> ResolvedModel:
    """Fetch (resumable, sha256 verified) or find in ``root`` a catalog inpainter made of one ``checkpoint``
    file plus ``config/...`` diffusers config files; ``files`` = ``{"checkpoint", "config_dir"}``."""
    from workers.models import _fetch_official

    files = _fetch_official(spec, root, allow_download=allow_download, progress=progress, skip_roles=set())
    config_dir = files["config/model_index.json"].parent
    pinned = next(f.sha256 for f in spec.files if f.role == "checkpoint")
    return ResolvedModel(spec.key, "inpainter", "official", {"checkpoint": files["checkpoint"],
                                                             "config_dir": config_dir}, pinned)


def resolve_inpainter(key: str, settings: Settings, *, checkpoint_dir: Path | None = None,
                      allow_download: bool = True, progress: ProgressFactory | None = None) -> ResolvedModel:
    """Files of inpainting model ``key`` (or a local diffusers folder ``checkpoint_dir``) on local disk.

    Official model: ``files["checkpoint"]`` is the pinned single-file checkpoint (sha256 verified on fetch and
    on first use) and ``files["config_dir"]`` the diffusers config files of the same repository revision;
    ``checkpoint_sha256`` is the pinned digest. Diffusers folders (``checkpoint_dir``, tiny random model):
    ``files["pipeline_dir"]``, with ``checkpoint_sha256`` the :func:`folder_sha256` of it (cached in
    ``<folder>.sha256`` for the tiny one).
    """
    spec = get_model(key, "inpainter")
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ConfigError(f"--edit-checkpoint {folder} is not a diffusers folder (no model_index.json)")
        return ResolvedModel(key, "inpainter", "local", {"pipeline_dir": folder}, folder_sha256(folder))
    if not spec.generated:
        return resolve_single_file(spec, settings.model_path, allow_download=allow_download, progress=progress)
    from workers.models import _generate

    folder = _generate(spec, settings.model_path)["pipeline_dir"]
    marker = folder.with_name(folder.name + ".sha256")
    digest = marker.read_text().strip() if marker.exists() else None
    if not digest:
        digest = folder_sha256(folder)
        try:
            marker.write_text(digest + "\n")
        except OSError:
            logger.debug("read-only model cache: %s not written", marker)
    return ResolvedModel(key, "inpainter", "generated", {"pipeline_dir": folder}, digest)


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


def load_inpaint_pipeline(files: dict[str, Path], torch_dtype: Any) -> Any:
    """A ``StableDiffusionInpaintPipeline`` on CPU from resolved files (see :class:`Inpainter`), offline."""
    if "checkpoint" in files:
        from workers.sd_single_file import load_pipeline

        return load_pipeline(files["checkpoint"], files["config_dir"], torch_dtype)
    from diffusers import StableDiffusionInpaintPipeline

    folder = Path(files["pipeline_dir"])
    variant = "fp16" if any(folder.glob("unet/*.fp16.safetensors")) else None
    return StableDiffusionInpaintPipeline.from_pretrained(
        str(folder), torch_dtype=torch_dtype, variant=variant, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, local_files_only=True)


class Inpainter:
    """A loaded ``StableDiffusionInpaintPipeline`` (load once per process, see :func:`get_inpainter`)."""

    def __init__(self, files: dict[str, Path], device: str, *, dtype: str = "auto",
                 attention_slicing: bool | None = None) -> None:
        """``files``: ``{"checkpoint", "config_dir"}`` (one LDM-format checkpoint + diffusers configs) or
        ``{"pipeline_dir"}`` (a diffusers folder), as in :attr:`ResolvedModel.files`."""
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        if not logger.isEnabledFor(logging.INFO):  # "install accelerate" advice, unless -v
            diffusers_logging.set_verbosity_error()
        self.device = device
        self.dtype = _dtype(device, dtype)
        self.pipe = load_inpaint_pipeline(files, self.dtype).to(device)
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
    key = (str(res.files.get("checkpoint") or res.files["pipeline_dir"]), device, dtype)
    with _LOCK:
        if key not in _CACHE:
            logger.info("loading inpainting model %s on %s", res.key, device)
            _CACHE[key] = Inpainter(res.files, device, dtype=dtype)
        return _CACHE[key]
