"""CPU worker scaling: the same images through 1 and through N worker processes on one machine, in one run.

    python -m benchmarks.workers --models tiny-random --images 32 --processes 1,2 --repeats 3 --json out.json

Each process is a worker as ``labelfleet worker --concurrency P`` starts it: its own models, torch threads
sized by ``workers.threads`` (usable CPUs, cgroup-aware, divided by ``LABELFLEET_WORKER_PROCESSES=P``; or
``--threads``), and its share of the images, decoded and labelled batch by batch (``Pipeline.run_front`` /
``run_back``, no database: the database is not what is measured). All processes load their models and
warm up first, then start together at a barrier; the rate is the images of all processes over the time from
the first start to the last finish. Rounds interleave the process counts, so the neighbours' load hits each
alike; the ratio per round and its median are printed. Random-weight labels are meaningless; the speed is real.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.pipeline import load_models, machine, synthetic_jpegs


def _worker(spec: dict[str, Any], share: list[bytes], barrier: Any, out: Any) -> None:
    """One worker process: load, warm up, wait at the barrier, label ``share``, report ``(t0, t1, n)``."""
    os.environ["LABELFLEET_WORKER_PROCESSES"] = str(spec["processes"])
    if spec["threads"]:
        os.environ["LABELFLEET_TORCH_THREADS"] = str(spec["threads"])
    from labelfleet.images import decode_image
    from labelfleet.pipeline_config import PipelineConfig
    from labelfleet.settings import Settings
    from workers.models import LoadedModels, pipeline_from
    from workers.threads import configure_torch_threads

    threads = configure_torch_threads(Settings())
    with tempfile.TemporaryDirectory(prefix="lf-bench-w-") as tmp:
        models = load_models(spec["models"], "cpu", spec["batch_size"], "fp32", Path(tmp))
        cfg = PipelineConfig(classes=tuple(spec["classes"]), box_threshold=spec["box_threshold"])
        pipe = pipeline_from(LoadedModels(None, models.detector, models.segmenter, {}), cfg)
        b = spec["batch_size"]
        pipe.run([decode_image(d).array for d in share[:b]])  # warm-up, not timed
        barrier.wait()
        t0 = time.perf_counter()
        for start in range(0, len(share), b):
            pipe.run([decode_image(d).array for d in share[start : start + b]])
        out.put((t0, time.perf_counter(), len(share), threads))


def run_processes(spec: dict[str, Any], jpegs: list[bytes], processes: int) -> dict[str, Any]:
    """``processes`` workers on ``jpegs`` (split evenly); img/s of all of them together."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    shares = [jpegs[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=_worker, args=({**spec, "processes": processes}, s, barrier, out))
             for s in shares]
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a worker process exited with {p.exitcode}")
    start, end = min(r[0] for r in results), max(r[1] for r in results)
    return {"img_s": sum(r[2] for r in results) / (end - start), "threads_per_process": results[0][3]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    w, h = (int(v) for v in args.size.lower().split("x"))
    counts = [int(c) for c in args.processes.split(",")]
    spec = {"models": args.models, "batch_size": args.batch_size, "threads": args.threads,
            "classes": [c.strip() for c in args.classes.split(",") if c.strip()], "box_threshold": args.box_threshold}
    jpegs = synthetic_jpegs(args.images, w, h)
    rounds: list[dict[int, dict[str, Any]]] = []
    for _ in range(args.repeats):
        rounds.append({n: run_processes(spec, jpegs, n) for n in counts})
    base = counts[0]
    ratios = {n: [r[n]["img_s"] / r[base]["img_s"] for r in rounds] for n in counts[1:]}
    return {
        "img_s": {str(n): [round(r[n]["img_s"], 3) for r in rounds] for n in counts},
        "threads_per_process": {str(n): rounds[0][n]["threads_per_process"] for n in counts},
        "ratio_vs_first": {str(n): [round(x, 3) for x in v] for n, v in ratios.items()},
        "median_ratio_vs_first": {str(n): round(float(np.median(v)), 3) for n, v in ratios.items()},
        "random_weights": True, "machine": machine("cpu"), "args": {k: str(v) for k, v in vars(args).items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny-random", help="tiny-random, random-full, a preset, or a model dir")
    parser.add_argument("--images", type=int, default=32, help="images in all (split among the processes)")
    parser.add_argument("--size", default="640x480", help="WxH of the synthetic JPEGs")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--processes", default="1,2", help="process counts to compare, the first is the base")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = labelfleet's share)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--classes", default="cat,dog,person,car")
    parser.add_argument("--box-threshold", type=float, default=0.3)
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    args = parser.parse_args(argv)
    record = run(args)
    for n, rates in record["img_s"].items():
        threads = record["threads_per_process"][n]
        line = f"{n} process(es) x {threads} thread(s): " + ", ".join(f"{r:.2f}" for r in rates)
        ratio = record["median_ratio_vs_first"].get(n)
        print(line + " img/s" + (f"   median {ratio:.2f}x the first" if ratio is not None else ""))
    print(f"machine: {record['machine']}\n(random-weight models: timings are real, labels are meaningless)")
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
