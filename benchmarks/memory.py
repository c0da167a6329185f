"""Peak RSS vs photo size with bounded masks: one photo, ~100 detections, tiny random models, CPU.

    python -m benchmarks.memory                      # 1, 12 and 48 MP, each in a fresh process
    python -m benchmarks.memory --megapixels 1,48 --detections 100 --json out.json
    python -m benchmarks.memory --sam sam_vit_b --megapixels 1 --detections 300   # SAM alone, full size

Each size runs in its own interpreter (peak RSS = ``ru_maxrss`` of that process): decode a JPEG of
that size (``labelfleet.images.decode_image``), run the pipeline (GroundingDINO with ``num_queries``
= detections, box threshold 0 and NMS IoU 1.0 so every query is kept, then SAM), and build the DB
rows (``workers.processing.labels_to_rows``). Prints RSS after model load, peak RSS, detections and mask bytes per
detection. Labels from random weights are meaningless; only memory is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_photo(path: Path, megapixels: float, seed: int = 0) -> tuple[int, int]:
    """A 4:3 JPEG of about ``megapixels`` MP: smooth gradients plus blocks (compresses like a photo)."""
    from PIL import Image

    h = round((megapixels * 1e6 * 3 / 4) ** 0.5)
    w = round(h * 4 / 3)
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 64), max(2, w // 64), 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
    return w, h


def child(photo: Path, detections: int, files: dict[str, str]) -> dict[str, Any]:
    """Measure one photo in this process (run via ``--child``)."""
    import torch

    torch.set_num_threads(int(os.environ.get("LABELFLEET_TORCH_THREADS", "1")))
    from labelfleet.images import decode_image
    from labelfleet.pipeline_config import PipelineConfig
    from workers.pipeline import Pipeline
    from workers.processing import labels_to_rows
    from workers.stages.grounding_dino import GroundingDinoDetector, build_gdino_model, config_path
    from workers.stages.registry import build_segmenter
    from workers.stages.tiny import TINY_GDINO_IMAGE_SIZE, TINY_GDINO_MAX_SIZE, TINY_GDINO_OVERRIDES, _tiny_swin

    torch.manual_seed(0)
    with _tiny_swin():
        model = build_gdino_model(config_path("GroundingDINO_SwinT_OGC.py"), Path(files["text_encoder_dir"]),
                                  {**TINY_GDINO_OVERRIDES, "num_queries": detections})
    config = PipelineConfig(classes=("cat", "dog", "person", "car"), box_threshold=0.0, nms_iou=1.0)
    det = GroundingDinoDetector(model, device="cpu", box_threshold=0.0, nms_iou=1.0,
                                image_size=TINY_GDINO_IMAGE_SIZE, max_size=TINY_GDINO_MAX_SIZE)
    seg = build_segmenter("sam_tiny", checkpoint=Path(files["sam"]), device="cpu")
    pipe = Pipeline(config, det, seg)
    pipe.run([np.zeros((64, 64, 3), np.uint8)])  # warm-up on a tiny image
    loaded = _rss_mb()
    decoded = decode_image(photo.read_bytes(), max_pixels=200_000_000)
    labels = pipe.run([decoded.array])[0]
    rows = labels_to_rows(labels)
    masks = [len(json.dumps(r["mask"])) for r in rows.detections]
    return {"width": decoded.width, "height": decoded.height, "detections": len(rows.detections),
            "rss_after_load_mb": round(loaded, 1), "peak_rss_mb": round(_peak_mb(), 1),
            "mask_bytes_mean": round(float(np.mean(masks)), 1) if masks else 0.0,
            "mask_bytes_max": max(masks, default=0)}


def sam_child(photo: Path, boxes: int, key: str) -> dict[str, Any]:
    """SAM alone (``key``, random init) on one photo with ``boxes`` random box prompts (``--sam``)."""
    import torch

    torch.set_num_threads(int(os.environ.get("LABELFLEET_TORCH_THREADS", "1")))
    from labelfleet.images import decode_image
    from workers.stages.registry import build_segmenter

    seg = build_segmenter(key, checkpoint=None, device="cpu")
    loaded = _rss_mb()
    image = decode_image(photo.read_bytes(), max_pixels=200_000_000).array
    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, (boxes, 2)) * [w * 0.8, h * 0.8]
    xyxy = np.concatenate([xy, xy + rng.uniform(0.05, 0.5, (boxes, 2)) * [w, h]], axis=1).astype(np.float32)
    records = seg.segment_boxes([image], [xyxy])[0]
    sizes = [len(json.dumps(r)) for r in records]
    return {"width": w, "height": h, "detections": len(records), "rss_after_load_mb": round(loaded, 1),
            "peak_rss_mb": round(_peak_mb(), 1), "mask_bytes_mean": round(float(np.mean(sizes)), 1),
            "mask_bytes_max": max(sizes)}


def measure(megapixels: float, detections: int, workdir: Path, files: dict[str, str],
            sam: str | None = None) -> dict[str, Any]:
    """Write a photo and measure it in a fresh interpreter."""
    photo = workdir / f"photo_{megapixels:g}mp.jpg"
    if not photo.exists():
        write_photo(photo, megapixels)
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", str(photo), "--detections", str(detections),
           "--files", json.dumps(files)] + (["--sam", sam] if sam else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ})
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["megapixels"] = megapixels
    return result


def tiny_files(workdir: Path) -> dict[str, str]:
    from workers.stages.tiny import make_tiny_gdino_files, make_tiny_sam_files

    g = make_tiny_gdino_files(workdir / "gdino")
    s = make_tiny_sam_files(workdir / "sam")
    return {"text_encoder_dir": str(g["text_encoder_dir"]), "sam": str(s["checkpoint"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--megapixels", default="1,12,48")
    ap.add_argument("--detections", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--sam", default=None, help="measure SAM alone with this segmenter key (e.g. sam_vit_b)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--files", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        if args.sam:
            print(json.dumps(sam_child(args.child, args.detections, args.sam)))
        else:
            print(json.dumps(child(args.child, args.detections, json.loads(args.files))))
        return
    with tempfile.TemporaryDirectory(prefix="lf-mem-") as tmp:
        files = {} if args.sam else tiny_files(Path(tmp))
        results = [measure(float(mp), args.detections, Path(tmp), files, args.sam)
                   for mp in args.megapixels.split(",")]
    base = results[0]["peak_rss_mb"]
    for r in results:
        print(f"{r['megapixels']:>5g} MP ({r['width']}x{r['height']}): {r['detections']} detections, "
              f"RSS after load {r['rss_after_load_mb']:.0f} MB, peak {r['peak_rss_mb']:.0f} MB "
              f"({r['peak_rss_mb'] / base:.2f}x the first), mask {r['mask_bytes_mean']:.0f} B/detection "
              f"(max {r['mask_bytes_max']})")
    print("(random-weight models: memory is real, labels are meaningless)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
