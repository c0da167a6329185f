"""GroundingDINO open-set box detector (groundingdino-py 0.4.0), batched, device-agnostic.

Frames: input images are ``(H, W, 3)`` uint8 RGB; output boxes are absolute
pixel xyxy in that original frame, **not clipped** (they may extend past the
image, as the model predicts them). As in Grounded-SAM's demos
(``automatic_label_ram_demo.py``), NMS and the SAM prompts use these unclipped
boxes; the pipeline clips only when it stores them.

We do our own preprocessing instead of ``groundingdino.util.inference``
(whose ``load_image``/``predict`` hard-code PIL paths and ``cuda``):

1. pad extreme aspect ratios (bottom/right, ImageNet-mean colour) so the
   resized short side is at least :data:`MIN_RESIZED_SIDE` px;
2. resize like ``T.RandomResize([image_size], max_size=max_size)`` (PIL bilinear);
3. ``ToTensor`` + ImageNet normalisation.

Batching: images whose preprocessed tensors have the same shape go through
one forward (several captions per forward when the class list is split).
Differently-shaped images are *not* zero-padded together because the Swin
backbone ignores the padding mask, which would make results depend on the
batch; so batch output == one-by-one output.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from labelfleet.captions import MAX_TEXT_TOKENS, assign_classes, build_caption, class_spans, split_classes
from labelfleet.errors import ConfigError, PermanentError
from labelfleet.types import Detections, RGBImage, cxcywh_norm_to_xyxy
from workers.stages.compiling import compile_module
from workers.stages.deform_attn import fast_deformable_attention, install_fast_deformable_attention
from workers.stages.gdino_import import import_gdino_models
from workers.stages.postprocess import nms_detections
from workers.stages.precision import amp_dtype, install_autocast, use_precision
from workers.stages.text_cache import install_text_cache, text_cache

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Extreme aspect ratios are padded so the resized short side has at least this many px
#: (two stride-32 backbone cells).
MIN_RESIZED_SIDE = 64
#: Checkpoint keys we accept without complaint. ``label_enc.weight`` is the
#: training-only denoising label embedding and ``bert.embeddings.position_ids``
#: a buffer older transformers saved; both are in the official checkpoints
#: (GroundingDINO issue #271).
BENIGN_UNEXPECTED_KEYS = frozenset({"label_enc.weight", "bert.embeddings.position_ids"})
BENIGN_MISSING_KEYS: frozenset[str] = frozenset()


def config_path(name: str) -> Path:
    """Path of a config shipped inside the groundingdino package, e.g. ``GroundingDINO_SwinT_OGC.py``."""
    import groundingdino

    path = Path(groundingdino.__file__).parent / "config" / name
    if not path.is_file():
        raise ConfigError(f"GroundingDINO config {name!r} not found at {path}")
    return path


@contextlib.contextmanager
def _bert_from_config() -> Iterator[None]:
    """Scoped patch: build the text encoder as ``BertModel(BertConfig.from_pretrained(dir))``.

    The real BERT weights come from the GroundingDINO checkpoint (``bert.*``),
    so the 440 MB ``bert-base-uncased`` download is never needed. Not thread-safe
    (patches a module attribute while the model is built).
    """
    from groundingdino.util import get_tokenlizer
    from transformers import BertConfig, BertModel

    original = get_tokenlizer.get_pretrained_language_model
    get_tokenlizer.get_pretrained_language_model = lambda path: BertModel(BertConfig.from_pretrained(path))
    try:
        yield
    finally:
        get_tokenlizer.get_pretrained_language_model = original


def build_gdino_model(
    config_file: Path, text_encoder_dir: Path, overrides: dict[str, Any] | None = None
) -> torch.nn.Module:
    """Build a randomly initialised GroundingDINO from an SLConfig file, fully offline.

    Args:
        config_file: e.g. :func:`config_path` ``("GroundingDINO_SwinT_OGC.py")``.
        text_encoder_dir: local dir with ``vocab.txt``, ``tokenizer_config.json``
            and a BERT ``config.json`` (no weights needed).
        overrides: SLConfig attributes to replace (tiny models).
    """
    from groundingdino.util.slconfig import SLConfig

    build_model = import_gdino_models().build_model  # without matplotlib (see gdino_import)

    text_encoder_dir = Path(text_encoder_dir)
    if not (text_encoder_dir / "config.json").is_file() or not (text_encoder_dir / "vocab.txt").is_file():
        raise ConfigError(f"text_encoder_dir {text_encoder_dir} must hold vocab.txt and config.json")
    args = SLConfig.fromfile(str(config_file))
    args.device = "cpu"
    args.text_encoder_type = str(text_encoder_dir)
    for key, value in (overrides or {}).items():
        setattr(args, key, value)
    with _bert_from_config(), contextlib.redirect_stdout(io.StringIO()):
        model = build_model(args)
    return model.eval()


def load_gdino_checkpoint(model: torch.nn.Module, checkpoint: Path) -> None:
    """Load an official-format checkpoint ``{"model": state_dict}`` into ``model`` (on CPU).

    A ``module.`` prefix is stripped. Missing or unexpected keys other than
    :data:`BENIGN_MISSING_KEYS` / :data:`BENIGN_UNEXPECTED_KEYS` raise.

    Raises:
        PermanentError: unreadable file, wrong format, key or shape mismatch.
    """
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PermanentError(f"cannot read GroundingDINO checkpoint {checkpoint}: {exc}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise PermanentError(
            f"GroundingDINO checkpoint {checkpoint} must be a dict with a 'model' state dict"
        )
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise PermanentError(f"GroundingDINO checkpoint {checkpoint} does not fit the model: {exc}") from exc
    missing = sorted(set(result.missing_keys) - BENIGN_MISSING_KEYS)
    unexpected = sorted(set(result.unexpected_keys) - BENIGN_UNEXPECTED_KEYS)
    if missing or unexpected:
        raise PermanentError(
            f"GroundingDINO checkpoint {checkpoint} does not match the model config: "
            f"missing keys {missing[:10]} ({len(missing)} in all), "
            f"unexpected keys {unexpected[:10]} ({len(unexpected)} in all)"
        )


def _fix_text_mask_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Forward pre-hook for GroundingDINO's text-enhancer ``TransformerEncoderLayer``.

    Upstream expands the ``(bs, T, T)`` text self-attention mask with
    ``mask.repeat(nhead, 1, 1)``, but ``nn.MultiheadAttention`` wants
    batch-major ``(bs * nhead, T, T)`` (``repeat_interleave``); with different
    captions in one batch each sample would get another sample's mask. We
    expand it correctly here, which makes upstream skip its own expansion.
    Identical to upstream for batch size 1.
    """
    mask = kwargs.get("src_mask")
    src = kwargs.get("src")
    nhead = int(module.nhead)  # type: ignore[arg-type]
    if (
        mask is not None
        and src is not None
        and mask.dim() == 3
        and mask.shape[0] == src.shape[1]
        and nhead > 1
    ):
        kwargs["src_mask"] = mask.repeat_interleave(nhead, dim=0)
    return args, kwargs


def install_batch_fixes(model: torch.nn.Module) -> None:
    """Make batched inference with per-image captions equal to one-by-one inference (see hook above)."""
    for layer in getattr(model.transformer.encoder, "text_layers", None) or []:  # type: ignore[union-attr]
        if not getattr(layer, "_labelfleet_mask_fix", False):
            layer.register_forward_pre_hook(_fix_text_mask_hook, with_kwargs=True)
            layer._labelfleet_mask_fix = True


def resized_hw(height: int, width: int, size: int, max_size: int) -> tuple[int, int]:
    """Output ``(h, w)`` of ``T.RandomResize([size], max_size)`` for an ``height x width`` image."""
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        size = round(max_size * short / long)
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_image(image: RGBImage, size: int, max_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (if extreme) and resize one image, still uint8 (what crosses to the device: 1/4 of float32).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.

    Returns:
        ``(3, h, w)`` uint8 tensor on the host, and the ``(H', W')`` of the padded
        image the model's normalised boxes refer to (``H' >= H``, ``W' >= W``).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    max_aspect = max_size / MIN_RESIZED_SIDE
    ph, pw = max(h, int(np.ceil(w / max_aspect))), max(w, int(np.ceil(h / max_aspect)))
    if (ph, pw) != (h, w):
        fill = np.asarray([round(255 * m) for m in IMAGENET_MEAN], np.uint8)
        padded = np.empty((ph, pw, 3), np.uint8)
        padded[:] = fill
        padded[:h, :w] = image
        image = padded
    oh, ow = resized_hw(ph, pw, size, max_size)
    resized = np.asarray(Image.fromarray(image).resize((ow, oh), Image.Resampling.BILINEAR))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1), (ph, pw)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """``ToTensor`` + ImageNet normalisation of ``(..., 3, h, w)`` uint8, on the tensor's device: float32."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(3, 1, 1)
    return (pixels.float().div_(255.0) - mean) / std


def preprocess_image(image: RGBImage, size: int, max_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`resize_image` then :func:`normalize`: ``(3, h, w)`` float32 as groundingdino's transforms give."""
    pixels, padded = resize_image(image, size, max_size)
    return normalize(pixels), padded


@dataclass(frozen=True)
class _Job:
    """One (image, caption) forward-pass entry."""

    image_idx: int
    classes: list[str]
    caption: str


class GroundingDinoDetector:
    """:class:`labelfleet.stages.Detector` backed by a loaded GroundingDINO model.

    Build it through :func:`workers.stages.registry.build_detector`; the model
    is moved to ``device`` once, here.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str = "cpu",
        box_threshold: float = 0.25,
        text_threshold: float = 0.2,
        nms_iou: float = 0.5,
        batch_size: int = 4,
        image_size: int = 800,
        max_size: int = 1333,
        precision: str = "fp32",
        compile_backend: str = "off",
    ) -> None:
        for name, value in (
            ("box_threshold", box_threshold),
            ("text_threshold", text_threshold),
            ("nms_iou", nms_iou),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if batch_size < 1 or image_size < MIN_RESIZED_SIDE or max_size < image_size:
            raise ValueError(
                f"need batch_size >= 1 and {MIN_RESIZED_SIDE} <= image_size <= max_size, "
                f"got {batch_size}, {image_size}, {max_size}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        install_batch_fixes(self.model)
        install_fast_deformable_attention()  # one fused gather per layer (deform_attn.py), same outputs
        self.amp_dtype = amp_dtype(precision)
        if self.amp_dtype is not None:  # Swin and BERT only; deformable attention etc. stay fp32
            install_autocast(self.model.backbone)  # type: ignore[arg-type]
            install_autocast(self.model.bert)  # type: ignore[arg-type]
        install_text_cache(self.model.bert)  # type: ignore[arg-type]  # fixed classes: BERT once per job
        backbone: Any = self.model.backbone  # groundingdino's Joiner (a Sequential): [0] is Swin
        backbone[0] = compile_module(backbone[0], compile_backend, "GroundingDINO's Swin backbone")
        self.tokenizer: Any = model.tokenizer
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError("GroundingDINO needs a fast tokenizer (offset mapping); install `tokenizers`")
        self.box_threshold, self.text_threshold, self.nms_iou = box_threshold, text_threshold, nms_iou
        self.batch_size, self.image_size, self.max_size = batch_size, image_size, max_size

    def count_tokens(self, caption: str) -> int:
        """Tokens of ``caption`` including [CLS] and [SEP]."""
        return len(self.tokenizer(caption)["input_ids"])

    def detect(self, images: Sequence[RGBImage], classes: Sequence[Sequence[str]]) -> list[Detections]:
        """Detect ``classes[i]`` in ``images[i]`` (see :meth:`labelfleet.stages.Detector.detect`).

        Returns per image a :class:`Detections`: ``xyxy`` float32 absolute px
        in the original frame, unclipped, ``confidence`` = the box's best token
        score (> ``box_threshold``), ``class_name`` taken from ``classes[i]``
        (original spelling), ``data["phrase"]`` (see
        :func:`labelfleet.captions.assign_classes`); class-agnostic NMS applied
        on the unclipped boxes (``torchvision.ops.nms``, as the demo does),
        sorted by decreasing confidence.
        """
        if len(images) != len(classes):
            raise ValueError(f"got {len(images)} images but {len(classes)} class lists")
        jobs = [
            _Job(i, chunk, build_caption(chunk))
            for i, cls in enumerate(classes)
            for chunk in split_classes(cls, self.count_tokens, MAX_TEXT_TOKENS)
        ]
        inputs = {  # uint8 on the host; normalised on the device in _forward
            i: resize_image(images[i], self.image_size, self.max_size)
            for i in {j.image_idx for j in jobs}
        }
        buckets: dict[tuple[int, ...], list[_Job]] = defaultdict(list)
        for job in jobs:
            buckets[tuple(inputs[job.image_idx][0].shape)].append(job)
        parts: dict[int, list[Detections]] = defaultdict(list)
        for bucket in buckets.values():
            for start in range(0, len(bucket), self.batch_size):
                batch = bucket[start : start + self.batch_size]
                for job, dets in zip(batch, self._forward(batch, inputs), strict=True):
                    parts[job.image_idx].append(dets)
        out = []
        for i in range(len(images)):
            merged = Detections.merge(parts.get(i, []))
            out.append(_with_phrase(nms_detections(merged, self.nms_iou)))
            logger.debug("image %d: %d boxes", i, len(out[-1]))
        return out

    def _forward(
        self, batch: list[_Job], inputs: dict[int, tuple[torch.Tensor, tuple[int, int]]]
    ) -> list[Detections]:
        """One forward over same-shaped inputs; per-job detections in the padded frame, before NMS."""
        from groundingdino.util.misc import NestedTensor

        pixels = torch.stack([inputs[j.image_idx][0] for j in batch])
        if self.device.type == "cuda":  # page-locked, so the copy overlaps work already queued on the GPU
            pixels = pixels.pin_memory()
        tensors = normalize(pixels.to(self.device, non_blocking=True))
        mask = torch.zeros((tensors.shape[0], *tensors.shape[2:]), dtype=torch.bool, device=self.device)
        with (torch.inference_mode(), use_precision(self.device, self.amp_dtype), text_cache(),
              fast_deformable_attention()):
            out = self.model(NestedTensor(tensors, mask), captions=[j.caption for j in batch])
        logits = out["pred_logits"].float().sigmoid().cpu().numpy()  # (B, nq, 256)
        boxes = out["pred_boxes"].float().cpu().numpy()  # (B, nq, 4) cxcywh in [0, 1]
        results = []
        for b, job in enumerate(batch):
            ph, pw = inputs[job.image_idx][1]
            results.append(self._decode(job, logits[b], boxes[b], (ph, pw)))
        return results

    def _decode(
        self, job: _Job, logits: np.ndarray, boxes: np.ndarray, padded_hw: tuple[int, int]
    ) -> Detections:
        """Threshold one job's ``(nq, 256)`` scores and ``(nq, 4)`` boxes into detections."""
        offsets = self.tokenizer(job.caption, return_offsets_mapping=True)["offset_mapping"]
        scores = logits[:, : len(offsets)]
        best = scores.max(axis=1) if scores.size else np.zeros((len(scores),), np.float32)
        keep = np.flatnonzero(best > self.box_threshold)
        if keep.size == 0:
            return _with_phrase(Detections.empty())
        class_idx, phrases = assign_classes(
            scores[keep],
            offsets,
            class_spans(job.classes),
            caption=job.caption,
            text_threshold=self.text_threshold,
        )
        ph, pw = padded_hw
        return Detections(
            xyxy=cxcywh_norm_to_xyxy(boxes[keep], pw, ph),
            confidence=best[keep],
            class_name=np.asarray([job.classes[c] for c in class_idx], dtype=object),
            data={"phrase": np.asarray(phrases, dtype=object)},
        )


def _with_phrase(dets: Detections) -> Detections:
    """Ensure the ``"phrase"`` column exists (empty detections lack it)."""
    if "phrase" not in dets.data:
        dets.data["phrase"] = np.zeros((len(dets),), dtype=object)
    return dets
