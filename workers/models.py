"""Find (download or generate) model files and build the pipeline's stages.

Official models come from the catalog (:mod:`labelfleet.models.catalog`) into
``settings.model_dir``; ``*_tiny`` models are generated there from the real
architecture classes with random weights and then loaded through the very
same builders as real checkpoints.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelfleet.errors import ChecksumError, ConfigError, ModelUnavailableError
from labelfleet.models.catalog import NO_DIGEST, ModelFile, ModelSpec, Preset, get_model
from labelfleet.models.download import ProgressFn, download, missing_message, sha256_file, verify
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.settings import Settings, resolve_device
from workers.pipeline import Pipeline

logger = logging.getLogger(__name__)
#: Called as progress_factory(filename, total_bytes) -> ProgressFn, for download progress bars.
ProgressFactory = Callable[[str, int], ProgressFn]


@dataclass
class ResolvedModel:
    """Files of one model on local disk, by role (``checkpoint``, ``tag_list``, ``text_encoder_dir``...)."""

    key: str
    stage: str
    origin: str  # "official" | "local" | "generated"
    files: dict[str, Path] = field(default_factory=dict)
    checkpoint_sha256: str | None = None

    def provenance(self) -> dict[str, Any]:
        return {"key": self.key, "origin": self.origin, "checkpoint": str(self.files.get("checkpoint")),
                "checkpoint_sha256": self.checkpoint_sha256}


def _generate(spec: ModelSpec, root: Path) -> dict[str, Path]:
    """Generate tiny random-weight files once (atomic: build in a temp dir, then rename)."""
    target = root / "tiny-random" / spec.key
    done = target / "files.txt"
    if not done.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.key}-", dir=target.parent))
        files = _make_tiny(spec.key, tmp)
        (tmp / "files.txt").write_text("".join(f"{k}={v.relative_to(tmp)}\n" for k, v in files.items()))
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race; use its files
            shutil.rmtree(tmp, ignore_errors=True)
    pairs = (line.split("=", 1) for line in done.read_text().splitlines() if line)
    return {k: target / v for k, v in pairs}


def _make_tiny(key: str, out: Path) -> dict[str, Path]:
    if key == "gdino_tiny":
        from workers.stages.tiny import make_tiny_gdino_files

        return make_tiny_gdino_files(out)
    if key == "sam_tiny":
        from workers.stages.tiny import make_tiny_sam_files

        return make_tiny_sam_files(out)
    if key == "sd_inpaint_tiny":  # issue 14
        from workers.stages.tiny_inpaint import make_tiny_inpaint_files

        return make_tiny_inpaint_files(out)
    from workers.stages.ram_tagger import make_tiny_ram_files

    return make_tiny_ram_files(out, variant=key)


def _verify_once(mf: ModelFile, dest: Path) -> None:
    """Check a cached file's sha256 the first time it is used (files users put there by hand too)."""
    marker = dest.with_name(dest.name + ".sha256")
    if marker.exists() and marker.read_text().strip() == mf.sha256:
        return
    reason = verify(mf, dest)
    if reason is not None:
        raise ChecksumError(f"{dest}: {reason}; delete it and run `labelfleet models fetch` again")
    try:
        marker.write_text(mf.sha256 + "\n")
    except OSError:  # read-only model volume (weights baked into an image): verify again next time
        logger.debug("cannot write %s; the checksum will be verified on every start", marker)


def _fetch_official(spec: ModelSpec, root: Path, *, allow_download: bool,
                    progress: ProgressFactory | None, skip_roles: set[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for mf in spec.files:
        if mf.role in skip_roles:
            continue
        dest = root / mf.filename
        pinned = mf.sha256 != NO_DIGEST  # else a revision-pinned config file (download() refuses others)
        if not dest.exists() or (pinned and dest.stat().st_size != mf.size):
            if not allow_download:
                raise ModelUnavailableError(missing_message(mf, dest, "not in the model cache"))
            download(mf, dest, progress=progress(mf.filename, mf.size) if progress and pinned else None)
        if pinned:
            _verify_once(mf, dest)
        files[mf.role] = dest
    if any(r.startswith("tokenizer/") for r in files):
        files["text_encoder_dir"] = next(p.parent for r, p in files.items() if r.startswith("tokenizer/"))
    return files


def resolve_model(key: str, stage: str, settings: Settings, *, checkpoint: Path | None = None,
                  allow_download: bool = True, progress: ProgressFactory | None = None) -> ResolvedModel:
    """Make the files of model ``key`` available locally.

    ``checkpoint`` replaces the model's checkpoint with a local file (fine-tuned
    weights); its sha256 is recorded but not checked against the catalog.
    """
    spec = get_model(key, stage)
    if spec.stage == "inpainter":  # issue 14: diffusers folders
        from workers.inpaint import resolve_inpainter

        return resolve_inpainter(key, settings, allow_download=allow_download, progress=progress)
    root = settings.model_path
    if spec.generated:
        files = _generate(spec, root)
        res = ResolvedModel(key, stage, "generated", files)
    else:
        files = _fetch_official(spec, root, allow_download=allow_download, progress=progress,
                                skip_roles={"checkpoint"} if checkpoint else set())
        pinned = next((f.sha256 for f in spec.files if f.role == "checkpoint"), None)
        res = ResolvedModel(key, stage, "official", files, pinned)
    if checkpoint is not None:
        checkpoint = checkpoint.expanduser()
        if not checkpoint.is_file():
            raise ConfigError(f"--{stage}-checkpoint {checkpoint} does not exist")
        res.files["checkpoint"] = checkpoint
        res.origin = "local"
        res.checkpoint_sha256 = None  # the file actually loaded, never the official one it replaces
    if res.checkpoint_sha256 is None and "checkpoint" in res.files:
        res.checkpoint_sha256 = sha256_file(res.files["checkpoint"])
    return res


@dataclass
class LoadedModels:
    tagger: Any | None
    detector: Any
    segmenter: Any
    provenance: dict[str, Any]


def build_stages(preset: Preset, settings: Settings, *, automatic: bool, config: PipelineConfig,
                 checkpoints: dict[str, Path | None] | None = None, allow_download: bool = True,
                 progress: ProgressFactory | None = None) -> LoadedModels:
    """Resolve and load the models of ``preset`` (tagger only in automatic mode)."""
    from workers.stages.registry import build_detector, build_segmenter
    from workers.threads import configure_torch_threads

    ck = checkpoints or {}
    device = resolve_device(settings.device)
    configure_torch_threads(settings)
    kw: dict[str, Any] = {"allow_download": allow_download, "progress": progress}
    det = resolve_model(preset.detector, "detector", settings, checkpoint=ck.get("detector"), **kw)
    seg = resolve_model(preset.segmenter, "segmenter", settings, checkpoint=ck.get("segmenter"), **kw)
    detector = build_detector(det.key, checkpoint=det.files["checkpoint"],
                              text_encoder_dir=det.files["text_encoder_dir"], device=device,
                              box_threshold=config.box_threshold,
                              text_threshold=config.text_threshold, nms_iou=config.nms_iou,
                              batch_size=settings.batch_size, precision=settings.precision,
                              compile_backend=settings.compile)
    segmenter = build_segmenter(seg.key, checkpoint=seg.files["checkpoint"], device=device,
                                encoder_batch_size=settings.batch_size, precision=settings.precision,
                                compile_backend=settings.compile)
    tagger, tag_prov = None, None
    if automatic:
        tag = resolve_model(preset.tagger, "tagger", settings, checkpoint=ck.get("tagger"), **kw)
        tagger = _build_tagger(tag, device, settings, config)
        tag_prov = tag.provenance()
    prov = {"preset": preset.name, "random_weights": preset.random_weights, "device": device,
            "detector": det.provenance(), "segmenter": seg.provenance(), "tagger": tag_prov}
    return LoadedModels(tagger, detector, segmenter, prov)


def _build_tagger(res: ResolvedModel, device: str, settings: Settings, config: PipelineConfig) -> Any:
    from workers.stages.ram_tagger import RamTagger, build_ram_model, load_tag_files

    variant = res.key
    model = build_ram_model(variant, res.files["checkpoint"], device=device, trusted=res.origin == "official")
    try:  # a checkpoint whose class count differs from the tag files is a configuration error, not a bug
        tags, thresholds, chinese = load_tag_files(res.files["tag_list"], res.files["thresholds"],
                                                   res.files.get("tag_list_chinese"))
        return RamTagger(model, tags, thresholds, device=device, batch_size=settings.batch_size,
                         threshold_override=config.tag_threshold, tag_list_chinese=chinese)
    except ValueError as exc:
        raise ConfigError(f"tagger checkpoint {res.files['checkpoint']} does not fit {variant}'s tag list: "
                          f"{exc}") from exc


def pipeline_from(loaded: LoadedModels, config: PipelineConfig) -> Pipeline:
    """A pipeline for ``config`` over already loaded models (thresholds applied to shallow copies).

    The copies share the model weights, so several jobs with other classes or
    thresholds cost no extra memory.
    """
    detector = copy.copy(loaded.detector)
    detector.box_threshold = config.box_threshold
    detector.text_threshold = config.text_threshold
    detector.nms_iou = config.nms_iou
    tagger = None
    if config.automatic and loaded.tagger is not None:
        tagger = copy.copy(loaded.tagger)
        if config.tag_threshold is not None:
            tagger.thresholds = np.full(len(tagger.tag_list), config.tag_threshold, dtype=np.float32)
    return Pipeline(config, detector, loaded.segmenter, tagger)


def free_accelerator_memory() -> None:
    """Return cached GPU memory after models were dropped (no-op on CPU)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - workers always have torch
        pass


def build_pipeline(preset: Preset, settings: Settings, config: PipelineConfig, **kw: Any) -> tuple[Pipeline, dict]:
    """Load the models and wrap them in a :class:`Pipeline`; returns ``(pipeline, provenance)``."""
    loaded = build_stages(preset, settings, automatic=config.automatic, config=config, **kw)
    return Pipeline(config, loaded.detector, loaded.segmenter, loaded.tagger), loaded.provenance
