"""SAM mask post-processing and storage, side by side in one run.

    python -m benchmarks.masks --frame 640x480 --masks 64 --json out.json

The same low-resolution logits ``(n, 1, 256, 256)`` go through

(a) ``postprocess``: what ``SamPredictor`` does: ``Sam.postprocess_masks`` (upscale to the
    encoder's 1024 square, crop, upscale to the full frame), threshold, and COCO RLE of each
    full-frame mask, 16 masks per call;
(b) ``labelfleet``: ``SamSegmenter._mask_records``: each mask upscaled only inside its window,
    a box-cropped mask record (:mod:`labelfleet.masks`).

for two kinds of logits: ``compact`` (smooth elliptical objects of 2-25% of the frame side, like
trained SAM's masks) and ``noisy`` (Gaussian noise, like the masks of random weights). Prints
ms per mask, the ratio, and JSON bytes per stored mask record; checks that (a) and (b) give the
same masks. Only the post-processing runs (the encoder geometry is SAM ViT-B/L/H's: 1024 px
input, 256 px low-res logits); the prompt decoder is not part of it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ENCODER_SIZE, LOW_RES = 1024, 256


def logits(kind: str, n: int, seed: int = 0) -> Any:
    """``(n, 1, 256, 256)`` float32 logits: ``compact`` ellipses or ``noisy`` Gaussian noise."""
    import torch

    rng = np.random.default_rng(seed)
    if kind == "noisy":
        return torch.tensor(rng.normal(0, 4, (n, 1, LOW_RES, LOW_RES)).astype(np.float32))
    yy, xx = np.mgrid[0:LOW_RES, 0:LOW_RES].astype(np.float32)
    out = []
    for _ in range(n):
        cx, cy = rng.uniform(20, LOW_RES - 20, 2)
        rx, ry = rng.uniform(3, 32, 2)
        out.append(8 * (1 - ((xx - cx) / rx) ** 2 - ((yy - cy) / ry) ** 2))
    return torch.tensor(np.stack(out))[:, None]


def segmenter(workdir: Path) -> Any:
    """A :class:`SamSegmenter` with SAM ViT-B/L/H's post-processing geometry (tiny random weights:
    the weights play no part in post-processing)."""
    from workers.stages.registry import build_segmenter
    from workers.stages.tiny import make_tiny_sam_files

    seg = build_segmenter("sam_tiny", checkpoint=make_tiny_sam_files(workdir / "sam")["checkpoint"], device="cpu")
    seg.img_size = ENCODER_SIZE
    seg.model.image_encoder.img_size = ENCODER_SIZE
    return seg


def run_postprocess(seg: Any, low: Any, frame: tuple[int, int], input_size: tuple[int, int]) -> list[Any]:
    """(a) ``Sam.postprocess_masks`` + threshold + full-frame RLE, 16 masks per call."""
    import torch

    from labelfleet.masks import encode_rle

    out = []
    with torch.inference_mode():
        for start in range(0, len(low), 16):
            masks = seg.model.postprocess_masks(low[start : start + 16], input_size, frame) > seg.model.mask_threshold
            out += [encode_rle(m[0].numpy()) for m in masks]
    return out


def run_labelfleet(seg: Any, low: Any, frame: tuple[int, int], input_size: tuple[int, int]) -> list[Any]:
    """(b) labelfleet's windowed post-processing into box-cropped mask records."""
    import torch

    from workers.stages.sam_segmenter import _Prepared

    prep = _Prepared(torch.zeros(1), input_size, frame, frame)
    with torch.inference_mode():
        return [r for start in range(0, len(low), 16) for r in seg._mask_records(low[start : start + 16], prep)]


def measure(seg: Any, kind: str, n: int, frame: tuple[int, int], repeats: int) -> dict[str, Any]:
    """Interleaved CPU time per mask of (a) and (b), record sizes and whether the masks agree."""
    from labelfleet.masks import decode_rle, mask_record_full

    h, w = frame
    scale = ENCODER_SIZE / max(h, w)
    input_size = (int(h * scale + 0.5), int(w * scale + 0.5))
    low = logits(kind, n)
    took = {"postprocess": 0.0, "labelfleet": 0.0}
    for _ in range(repeats):
        for mode, fn in (("postprocess", run_postprocess), ("labelfleet", run_labelfleet)):
            t0 = time.process_time()
            result = fn(seg, low, frame, input_size)
            took[mode] += time.process_time() - t0
            if mode == "postprocess":
                ref = result
            else:
                ours = result
    same = all((decode_rle(a) == mask_record_full(b)).all() for a, b in zip(ref, ours, strict=True))
    ms = {k: round(1000 * v / (repeats * n), 3) for k, v in took.items()}
    return {"kind": kind, "masks": n, "ms_per_mask": ms, "speedup": round(ms["postprocess"] / ms["labelfleet"], 2),
            "full_frame_rle_bytes": round(float(np.mean([len(json.dumps(r)) for r in ref])), 1),
            "record_bytes": round(float(np.mean([len(json.dumps(r)) for r in ours])), 1), "same_masks": same}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tempfile

    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frame", default="640x480", help="WxH of the photo the masks belong to")
    p.add_argument("--masks", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.frame.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        seg = segmenter(Path(tmp))
        rows = [measure(seg, kind, args.masks, (h, w), args.repeats) for kind in ("compact", "noisy")]
    record = {"frame": [w, h], "threads": args.threads, "results": rows}
    for r in rows:
        print(f"{r['kind']:8s} postprocess {r['ms_per_mask']['postprocess']:7.2f} ms/mask  labelfleet "
              f"{r['ms_per_mask']['labelfleet']:7.2f} ms/mask  {r['speedup']:5.2f}x  record {r['record_bytes']:8.0f} B "
              f"(full-frame RLE {r['full_frame_rle_bytes']:.0f} B)  same masks: {r['same_masks']}")
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main()
