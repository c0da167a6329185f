"""Side-by-side throughput: the naive demo loop vs labelfleet's pipeline vs the models alone, in one run.

    python -m benchmarks.pipeline --models tiny-random --device cpu --images 16 --json out.json
    python -m benchmarks.pipeline --models random-full --device cuda --images 64 --batch-size 8 --json gpu.json
    python -m benchmarks.pipeline --models /models --device cuda --images 64 --json real.json  # cache dir

``--models``: ``tiny-random`` (tiny random models from the real classes), ``random-full`` (the
official architectures GroundingDINO SwinT-OGC + SAM ViT-H, random init, no download), a preset
name (``default``/``fast``, from the model cache), or a directory holding the ``default`` preset's
files (a model cache, nothing downloaded). The same synthetic JPEGs go through, interleaved
``--repeats`` times:

(a) ``naive``: the loop restated from Grounded-SAM's demo (``benchmarks/reference.py``): one image,
    one caption, fp32, PIL decode, GroundingDINO, NMS, ``SamPredictor``, full-frame masks;
(b) ``pipeline``: labelfleet end to end through ``workers.local.run_local`` on a listed SQLite
    job (claims, read-ahead read+decode, batched models, mask records, one transaction per item;
    creating the database and listing the folder are not timed);
(c) ``model_only``: the models' forwards alone on pre-decoded, pre-resized tensors on the device
    (GroundingDINO batched, SAM image encoder batched, SAM prompt decoder on the pipeline's boxes).

Prints img/s, per-stage ms (from the items' stored timings), peak RSS and CUDA max allocated per
mode and the ratios, and writes a JSON record. ``boxes_match`` is the fraction of the naive loop's
boxes (clipped to the image as labelfleet stores them) that the pipeline stored within 1 px.
Random-weight labels are meaningless; the speed is real.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.reference import demo_label, match_boxes, stored_reference


@dataclass
class Models:
    """What the three modes share: the stage objects (same weights) and how the pipeline loads them."""

    detector: Any
    segmenter: Any
    settings: Any
    preset: Any
    random_weights: bool


def synthetic_jpegs(n: int, w: int, h: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEGs: noisy background plus a few solid rectangles (boxes reach the borders)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for _ in range(4):
            y0, x0 = int(rng.integers(0, h * 3 // 4)), int(rng.integers(0, w * 3 // 4))
            img[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(100, 256, 3, dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _random_full_text_dir(root: Path) -> Path:
    """A bert-base-shaped ``config.json`` plus our small vocab (no download; random weights anyway)."""
    from transformers import BertConfig

    from workers.stages.tiny import write_tiny_text_encoder_dir

    out = write_tiny_text_encoder_dir(root / "bert-base-shape")
    (out / "config.json").write_text(BertConfig().to_json_string(use_diff=False))
    return out


def load_models(spec: str, device: str, batch_size: int, precision: str, workdir: Path) -> Models:
    """Build the detector and segmenter once (see the module docstring for ``spec``)."""
    from labelfleet.models.catalog import get_preset
    from labelfleet.settings import Settings
    from workers.models import build_stages

    path = Path(spec).expanduser()
    common = {"device": device, "batch_size": batch_size, "precision": precision}
    if spec == "random-full":
        from workers.stages.registry import build_detector, build_segmenter

        settings = Settings(model_dir=workdir / "models", **common)
        det = build_detector("gdino_swint_ogc", checkpoint=None, text_encoder_dir=_random_full_text_dir(workdir),
                             device=device, batch_size=batch_size, precision=precision,
                             compile_backend=settings.compile)
        seg = build_segmenter("sam_vit_h", checkpoint=None, device=device, encoder_batch_size=batch_size,
                              precision=precision, compile_backend=settings.compile)
        return Models(det, seg, settings, None, True)
    if path.is_dir():
        settings = Settings(model_dir=path, models="default", **common)
        preset = get_preset("default")
    else:
        settings = Settings(model_dir=workdir / "models" if spec == "tiny-random" else Settings().model_dir,
                            models=spec, **common)
        preset = get_preset(spec)
    from labelfleet.pipeline_config import PipelineConfig

    loaded = build_stages(preset, settings, automatic=False, config=PipelineConfig(classes=("x",)),
                          allow_download=False)
    return Models(loaded.detector, loaded.segmenter, settings, preset, preset.random_weights)


# --------------------------------------------------------------------------------------- measuring
class Meter:
    """Wall time, peak RSS (VmHWM, reset per mode where the kernel allows) and CUDA max allocated."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.seconds: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}
        self.cuda_max_mb: dict[str, float] = {}
        self.rounds: list[dict[str, float]] = []  # seconds per mode, one dict per interleaved round

    def run(self, mode: str, fn: Callable[[], Any]) -> Any:
        import torch

        _reset_hwm()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
            self.cuda_max_mb[mode] = max(self.cuda_max_mb.get(mode, 0.0), torch.cuda.max_memory_allocated() / 2**20)
        took = time.perf_counter() - t0
        self.seconds[mode] = self.seconds.get(mode, 0.0) + took
        if not self.rounds or mode in self.rounds[-1]:
            self.rounds.append({})
        self.rounds[-1][mode] = took
        self.peak_rss_mb[mode] = max(self.peak_rss_mb.get(mode, 0.0), _hwm_mb())
        return out


def _reset_hwm() -> None:
    with contextlib.suppress(OSError):  # resets VmHWM (Linux >= 4.0); else the process-wide peak is shown
        Path("/proc/self/clear_refs").write_text("5")


def _hwm_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ modes
def run_naive(models: Models, jpegs: list[bytes], caption: str, cfg: Any) -> list[Any]:
    """(a) the demo loop, image by image."""
    from PIL import Image

    det, seg = models.detector, models.segmenter
    out = []
    for data in jpegs:
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        out.append(demo_label(det.model, seg.model, image, caption, box_threshold=cfg.box_threshold,
                              text_threshold=cfg.text_threshold, iou_threshold=cfg.nms_iou, size=det.image_size,
                              max_size=det.max_size, device=str(det.device)))
    return out


def make_job(models: Models, folder: Path, db_path: Path, job: str, cfg: Any) -> dict[str, Any]:
    """Untimed set-up of (b): a migrated SQLite database, a job and its listed items."""
    from labelfleet.db import repository as repo
    from labelfleet.db.engine import make_engine, session_factory
    from labelfleet.db.migrate import upgrade
    from labelfleet.storage import open_source

    engine = make_engine(f"sqlite:///{db_path}")
    upgrade(engine)
    factory = session_factory(engine)
    source = open_source(str(folder))
    with factory() as s:
        j, _ = repo.get_or_create_job(s, job, str(folder), cfg.to_json(), {})
        repo.add_items(s, j, source.list())
        job_id = j.id
    return {"engine": engine, "factory": factory, "source": source, "job_id": job_id, "cfg": cfg}


def run_pipeline(models: Models, job: dict[str, Any]) -> None:
    """(b) labelfleet end to end on a listed job: read-ahead decode, batched models, mask records, DB writes."""
    from workers.local import local_owner, run_local
    from workers.models import LoadedModels, pipeline_from
    from workers.processing import ItemProcessor

    pipe = pipeline_from(LoadedModels(None, models.detector, models.segmenter, {}), job["cfg"])
    proc = ItemProcessor(job["factory"], pipe, models.settings, local_owner(), job["source"])
    try:
        run_local(job["factory"], job["job_id"], proc, models.settings)
    finally:
        proc.close()


def job_results(job: dict[str, Any]) -> dict[str, Any]:
    """Stored boxes per key, per-item stage timings, statuses and mask record sizes of a finished job."""
    from sqlalchemy import select

    from labelfleet.db.models import Detection, Item

    with job["factory"]() as s:
        rows = s.scalars(select(Item).where(Item.job_id == job["job_id"]))
        items = {i.id: (i.key, i.status, i.timings or {}) for i in rows}
        boxes: dict[str, list[list[float]]] = {k: [] for k, _, _ in items.values()}
        sizes = []
        for d in s.scalars(select(Detection).join(Item).where(Item.job_id == job["job_id"])):
            boxes[items[d.item_id][0]].append([d.x0, d.y0, d.x1, d.y1])
            sizes.append(len(json.dumps(d.mask)) if d.mask is not None else 0)
    job["engine"].dispose()
    return {"boxes": boxes, "timings": [t for _, _, t in items.values()],
            "status": sorted({st for _, st, _ in items.values()}), "mask_bytes": sizes}


def prepare_model_only(models: Models, jpegs: list[bytes], boxes: dict[int, np.ndarray]) -> list[Any]:
    """Pre-decoded, pre-resized inputs on the device for (c)."""
    from labelfleet.images import decode_image
    from workers.stages.grounding_dino import preprocess_image

    det, seg = models.detector, models.segmenter
    prepared = []
    for i, data in enumerate(jpegs):
        image = decode_image(data).array
        g, _ = preprocess_image(image, det.image_size, det.max_size)
        p = seg._prepare(image)
        b = boxes.get(i, np.zeros((0, 4), np.float32))
        prepared.append((g.to(det.device), p, seg._boxes_tensor(b, p) if len(b) else None))
    return prepared


def run_model_only(models: Models, prepared: list[Any], caption: str, batch_size: int) -> None:
    """(c) GroundingDINO forward (batched), SAM encoder (batched) and prompt decoder; no pre/post-processing."""
    import torch
    from groundingdino.util.misc import NestedTensor

    from workers.stages.deform_attn import fast_deformable_attention
    from workers.stages.precision import use_precision

    det, seg = models.detector, models.segmenter
    with torch.inference_mode():
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start : start + batch_size]
            by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
            for g, _, _ in chunk:
                by_shape.setdefault(tuple(g.shape), []).append(g)
            for group in by_shape.values():
                t = torch.stack(group)
                mask = torch.zeros((t.shape[0], *t.shape[2:]), dtype=torch.bool, device=t.device)
                with use_precision(det.device, det.amp_dtype), fast_deformable_attention():
                    det.model(NestedTensor(t, mask), captions=[caption] * len(group))
            feats = seg._encode([p for _, p, _ in chunk])
            for k, (_, _, b) in enumerate(chunk):
                if b is None:
                    continue
                for c in range(0, b.shape[0], seg.decoder_chunk):
                    box_chunk = b[c : c + seg.decoder_chunk]
                    sparse, dense = seg.model.prompt_encoder(points=None, boxes=box_chunk, masks=None)
                    seg.model.mask_decoder(image_embeddings=feats[k : k + 1],
                                           image_pe=seg.model.prompt_encoder.get_dense_pe(),
                                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                           multimask_output=False)


# ----------------------------------------------------------------------------------------- report
def machine(device: str) -> dict[str, Any]:
    """The machine in words: CPU model and count, torch, GPU name."""
    import torch

    from workers.threads import usable_cpus

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info = {"cpu": cpu, "usable_cpus": usable_cpus(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def boxes_match(naive: list[Any], stored: dict[str, list[list[float]]], keys: list[str], sizes: list[Any]) -> float:
    """Fraction of the naive loop's boxes (clipped, as stored) that the pipeline stored within 1 px."""
    total = hit = 0
    for ref, key, (w, h) in zip(naive, keys, sizes, strict=True):
        ref_xyxy, _ = stored_reference(ref, w, h)
        got = np.asarray(stored[key], np.float32).reshape(-1, 4)
        found = match_boxes(got, ref_xyxy, tol=1.0)
        total += len(found)
        hit += sum(m is not None for m in found)
    return 1.0 if total == 0 else hit / total


def stage_ms(timings: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for t in timings for k in t})
    return {k: round(1000 * float(np.mean([t.get(k, 0.0) for t in timings])), 2) for k in keys}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from labelfleet.captions import build_caption
    from labelfleet.pipeline_config import PipelineConfig

    w, h = (int(v) for v in args.size.lower().split("x"))
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    cfg = PipelineConfig(classes=classes, box_threshold=args.box_threshold, text_threshold=args.text_threshold,
                         nms_iou=args.nms_iou)
    caption = build_caption(list(classes))
    with tempfile.TemporaryDirectory(prefix="lf-bench-") as tmp:
        work = Path(tmp)
        models = load_models(args.models, args.device, args.batch_size, args.precision, work)
        jpegs = synthetic_jpegs(args.images, w, h)
        folder = work / "images"
        folder.mkdir()
        keys = [f"img_{i:05d}.jpg" for i in range(len(jpegs))]
        for key, data in zip(keys, jpegs, strict=True):
            (folder / key).write_bytes(data)
        meter = Meter(args.device)
        run_naive(models, jpegs[:1], caption, cfg)  # warm-up, not timed
        warm = make_job(models, folder, work / "warm.db", "warm", cfg)
        run_pipeline(models, warm)
        job_results(warm)
        naive_out, stored = None, None
        for rep in range(args.repeats):  # interleaved, so neighbours' load hits every mode alike
            naive_out = meter.run("naive", lambda: run_naive(models, jpegs, caption, cfg))
            job = make_job(models, folder, work / f"bench{rep}.db", f"r{rep}", cfg)
            meter.run("pipeline", lambda j=job: run_pipeline(models, j))
            stored = job_results(job)
            if rep == 0:
                prepared = prepare_model_only(models, jpegs, {i: o.xyxy for i, o in enumerate(naive_out)})
                run_model_only(models, prepared[:1], caption, args.batch_size)  # warm-up
            meter.run("model_only", lambda p=prepared: run_model_only(models, p, caption, args.batch_size))
        assert naive_out is not None and stored is not None
        n = args.images * args.repeats
        rate = {m: n / s for m, s in meter.seconds.items()}
        per_det = stored["mask_bytes"]
        return {
            "naive_img_s": round(rate["naive"], 3), "pipeline_img_s": round(rate["pipeline"], 3),
            "model_only_img_s": round(rate["model_only"], 3),
            "pipeline_vs_naive": round(rate["pipeline"] / rate["naive"], 3),
            "pipeline_vs_model_only": round(rate["pipeline"] / rate["model_only"], 3),
            # per interleaved round (the same neighbours' load for the three modes); the median is the robust figure
            "round_ratios": [{"pipeline_vs_naive": round(r["naive"] / r["pipeline"], 3),
                              "pipeline_vs_model_only": round(r["model_only"] / r["pipeline"], 3)}
                             for r in meter.rounds],
            "median_pipeline_vs_naive": round(float(np.median([r["naive"] / r["pipeline"] for r in meter.rounds])), 3),
            "median_pipeline_vs_model_only": round(float(np.median(
                [r["model_only"] / r["pipeline"] for r in meter.rounds])), 3),
            "overhead_ms_per_img": round(1000 * (1 / rate["pipeline"] - 1 / rate["model_only"]), 2),
            "peak_rss_mb": round(max(meter.peak_rss_mb.values()), 1),
            "peak_rss_mb_by_mode": {k: round(v, 1) for k, v in meter.peak_rss_mb.items()},
            "cuda_max_allocated_mb": {k: round(v, 1) for k, v in meter.cuda_max_mb.items()},
            "stage_ms": stage_ms(stored["timings"]), "item_status": stored["status"],
            "boxes_match": round(boxes_match(naive_out, stored["boxes"], keys, [(w, h)] * len(keys)), 4),
            "detections_per_img": round(len(per_det) / args.images, 2),
            "mask_bytes_per_detection": round(float(np.mean(per_det)), 1) if per_det else 0.0,
            "random_weights": models.random_weights, "machine": machine(args.device),
            "args": {k: str(v) for k, v in vars(args).items()},
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-random", help="tiny-random, random-full, a preset, or a model dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", default="640x480", help="WxH of the synthetic JPEGs")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved rounds of the three modes")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--classes", default="cat,dog,person,car")
    ap.add_argument("--box-threshold", type=float, default=0.3)
    ap.add_argument("--text-threshold", type=float, default=0.25)
    ap.add_argument("--nms-iou", type=float, default=0.5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = run(args)
    print(f"naive      {result['naive_img_s']:8.2f} img/s   (demo loop: one image, one caption, fp32)")
    print(f"pipeline   {result['pipeline_img_s']:8.2f} img/s   {result['pipeline_vs_naive']:.2f}x naive, "
          f"{result['pipeline_vs_model_only']:.2f}x model-only, overhead {result['overhead_ms_per_img']:.1f} ms/img")
    print(f"model-only {result['model_only_img_s']:8.2f} img/s")
    print(f"median over {len(result['round_ratios'])} interleaved rounds: pipeline "
          f"{result['median_pipeline_vs_naive']:.2f}x naive, {result['median_pipeline_vs_model_only']:.2f}x model-only")
    print("stages (ms/img): " + ", ".join(f"{k} {v}" for k, v in result["stage_ms"].items()))
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB {result['peak_rss_mb_by_mode']}; "
          f"CUDA max allocated {result['cuda_max_allocated_mb'] or 'n/a'}")
    print(f"boxes_match {result['boxes_match']:.4f}; {result['detections_per_img']} detections/img, "
          f"{result['mask_bytes_per_detection']:.0f} B of mask record per detection")
    print(f"machine: {result['machine']}")
    if result["random_weights"]:
        print("(random-weight models: timings are real, labels are meaningless)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
