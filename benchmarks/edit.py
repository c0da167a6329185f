"""Inpainting throughput of edit jobs: images/s, per-step ms, batched vs one-call-per-variant side by side.

    python benchmarks/edit.py --models tiny-random --device cpu --images 4
    python benchmarks/edit.py --models default --device cuda:0 --images 16 --steps 30  # pinned sd15_inpaint
    python benchmarks/edit.py --edit-checkpoint DIR --device cuda:0  # a local diffusers folder

Each image gets a disk mask; every variant count runs (a) all variants in one call
(``num_images_per_prompt``) and (b) one call per variant, and prints the ratio. Per-step ms
comes from ``callback_on_step_end`` timestamps (UNet + scheduler only; VAE encode/decode excluded).
Tiny-random weights: real speed, meaningless pictures. No timing asserts anywhere.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from labelfleet.edit import EditParams
from labelfleet.models.catalog import DEFAULT_INPAINTER, EDIT_INPAINTERS
from labelfleet.settings import Settings


def _inputs(n: int, w: int, h: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        cx, cy, r = rng.integers(w // 4, 3 * w // 4), rng.integers(h // 4, 3 * h // 4), min(w, h) // 5
        out.append((rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8), (x - cx) ** 2 + (y - cy) ** 2 < r * r))
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def step_ms(inp: Any, params: EditParams, size: int) -> float:
    """Median ms per denoising step of one call at ``size`` x ``size``."""
    import torch
    from PIL import Image

    stamps: list[float] = []

    def cb(_pipe: Any, _i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        _sync(inp.device)
        stamps.append(time.perf_counter())
        return kw

    img = Image.fromarray(np.zeros((size, size, 3), np.uint8))
    inp.pipe(prompt=params.prompt, image=img, mask_image=Image.new("L", (size, size), 255), height=size, width=size,
             num_inference_steps=params.steps, guidance_scale=params.guidance, output_type="np",
             generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=cb)
    return float(np.median(np.diff(stamps)) * 1000) if len(stamps) > 1 else float("nan")


def run(inp: Any, inputs: list[tuple[np.ndarray, np.ndarray]], params: EditParams, batched: bool) -> float:
    """Images per second over ``inputs`` (all variants of an image in one call, or one call each)."""
    seeds = params.seeds()
    _sync(inp.device)
    t0 = time.perf_counter()
    for image, mask in inputs:
        if batched:
            inp.edit(image, mask, params, seeds)
        else:
            for s in seeds:
                inp.edit(image, mask, params, [s])
    _sync(inp.device)
    return len(inputs) * len(seeds) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-random", help="tiny-random, or any other preset for SD 1.5")
    ap.add_argument("--edit-checkpoint", type=Path, default=None, help="local diffusers inpainting folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--variants", default="1,4", help="comma-separated variant counts")
    ap.add_argument("--size", default="1024x768", help="WxH of the synthetic photos")
    args = ap.parse_args()
    from workers.inpaint import get_inpainter, resolve_inpainter

    settings = Settings(device=args.device)
    key = EDIT_INPAINTERS.get(args.models, DEFAULT_INPAINTER)
    t0 = time.perf_counter()
    res = resolve_inpainter(key, settings, checkpoint_dir=args.edit_checkpoint)
    inp = get_inpainter(res, settings, dtype=args.dtype)
    print(f"model {res.key} ({res.origin}) on {inp.device} {inp.dtype}, native {inp.native}px, attention slicing "
          f"{'on' if inp.attention_slicing else 'off'}, loaded in {time.perf_counter() - t0:.1f}s")
    if res.origin == "generated":
        print("tiny RANDOM weights: the speed is real, the pictures are meaningless")
    w, h = (int(v) for v in args.size.split("x"))
    inputs = _inputs(args.images, w, h)
    base = EditParams(prompt="a corgi, photo", out="-", targets=("dog",), steps=args.steps)
    inp.edit(*inputs[0], base, [0])  # warm-up (kernels, allocator)
    print(f"per step: {step_ms(inp, base, inp.native):.1f} ms at {inp.native}x{inp.native} ({args.steps} steps)")
    for n in (int(v) for v in args.variants.split(",")):
        params = EditParams(prompt=base.prompt, out="-", targets=base.targets, steps=args.steps, variants=n)
        batched = run(inp, inputs, params, batched=True)
        single = run(inp, inputs, params, batched=False) if n > 1 else batched
        print(f"variants={n}: {batched:.2f} images/s batched, {single:.2f} images/s one call per variant "
              f"(ratio {batched / single:.2f}x) on {w}x{h} photos")


if __name__ == "__main__":
    main()
