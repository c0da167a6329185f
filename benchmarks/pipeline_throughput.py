"""Pipeline throughput, batch sizes measured side by side in one run (no timing asserts anywhere).

    python benchmarks/pipeline_throughput.py --models tiny-random --device cpu --images 24
    python benchmarks/pipeline_throughput.py --models fast --device cuda:0 --images 64   # on a GPU machine

Prints images/s per batch size and the ratio to batch size 1, plus per-stage seconds per image.
Tiny-random models have random weights: their speed is real, their labels are meaningless.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from labelfleet.models.catalog import get_preset
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings


def _images(n: int, w: int, h: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-random")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--size", default="640x480", help="WxH of the synthetic images")
    ap.add_argument("--classes", default="cat,dog,person,car", help="empty string = automatic (RAM tags)")
    args = ap.parse_args()
    from workers.models import build_pipeline

    w, h = (int(v) for v in args.size.split("x"))
    images = _images(args.images, w, h)
    classes = tuple(c for c in args.classes.split(",") if c) or None
    results = {}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        settings = Settings(device=args.device, batch_size=bs)
        pipeline, prov = build_pipeline(get_preset(args.models), settings, PipelineConfig(classes=classes))
        pipeline.run(images[:bs])  # warm-up
        stages: dict[str, float] = {}
        t0 = time.perf_counter()
        for i in range(0, len(images), bs):
            for labels in pipeline.run(images[i:i + bs]):
                for k, v in labels.timings.items():
                    stages[k] = stages.get(k, 0.0) + v
        elapsed = time.perf_counter() - t0
        results[bs] = len(images) / elapsed
        per = ", ".join(f"{k} {v / len(images) * 1000:.1f} ms" for k, v in stages.items())
        print(f"batch {bs:>3}: {results[bs]:7.2f} img/s  ({per})  device={prov['device']}")
    base = results[min(results)]
    for bs, rate in results.items():
        print(f"batch {bs:>3} / batch {min(results)}: {rate / base:.2f}x")
    if get_preset(args.models).random_weights:
        print("(random-weight models: timings are real, labels are meaningless)")


if __name__ == "__main__":
    main()
