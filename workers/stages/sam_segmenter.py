"""SAM promptable segmentation (segment-anything 1.0), batched boxes, device-agnostic.

Frames: images are ``(H, W, 3)`` uint8 RGB; boxes are absolute pixel xyxy and
points absolute pixel ``(x, y)`` in that frame (boxes may extend past the
image, as GroundingDINO predicts them; SAM takes them as they are).
:meth:`SamSegmenter.segment_boxes` returns *mask records* (box-cropped COCO
RLE, :mod:`labelfleet.masks`): each mask is cropped to its own extent on the
device and RLE-encoded on the host at once, so no full-frame array exists per
detection and memory is bounded by the model input size, not the photo.
Masks equal ``SamPredictor`` (``set_image`` + ``predict_torch(...,
multimask_output=False)``) for the same model up to float rounding.

Extreme aspect ratios (e.g. 1x10000), which ``ResizeLongestSide`` would shrink
to 0 px, are padded bottom/right with the pixel mean so the resized short
side is at least :data:`MIN_RESIZED_SIDE`; masks are cropped back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from labelfleet.masks import encode_mask_record, mask_record_full
from labelfleet.types import BoolArray, RGBImage
from workers.stages.compiling import compile_module
from workers.stages.precision import amp_dtype, autocast
from workers.stages.sam_attention import install_chunked_attention

logger = logging.getLogger(__name__)

#: Minimum short side (px) after ``ResizeLongestSide`` — one ViT patch.
MIN_RESIZED_SIDE = 16


@dataclass
class _Prepared:
    """An image resized for the encoder: ``tensor`` (1, 3, h, w) float, sizes as (H, W)."""

    tensor: torch.Tensor
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    original_size: tuple[int, int]


#: (i0, i1, lambda) per output pixel of a bilinear resize along one axis.
_SourceIndex = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _source_index(out_size: int, in_size: int, device: torch.device) -> _SourceIndex:
    """Source indexes and weights of ``F.interpolate(mode="bilinear", align_corners=False)`` on one axis.

    Output pixel ``j`` reads input pixels ``i0[j]`` and ``i1[j]`` with weights
    ``1 - lam[j]`` and ``lam[j]`` (float32, as PyTorch computes them).
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    src = (scale.to(device) * (dst + 0.5) - 0.5).clamp_(min=0)
    i0 = src.to(torch.int64)
    return i0, torch.clamp(i0 + 1, max=in_size - 1), src - i0


def _touching(lo: int, hi: int, index: _SourceIndex, limit: int) -> tuple[int, int] | None:
    """Output range ``[a, b)`` (within ``[0, limit)``) whose bilinear sources touch input pixels ``lo..hi``."""
    i0, i1, _ = index
    ok = torch.nonzero((i0[:limit] <= hi) & (i1[:limit] >= lo)).flatten()
    if ok.numel() == 0:
        return None
    return int(ok[0]), int(ok[-1]) + 1


def _window(hot: torch.Tensor, index: _SourceIndex, limit: int) -> tuple[int, int] | None:
    """Output range ``[a, b)`` (within ``[0, limit)``) whose bilinear sources touch a ``hot`` input pixel."""
    where = torch.nonzero(hot).flatten()
    if where.numel() == 0:
        return None
    return _touching(int(where[0]), int(where[-1]), index, limit)


@dataclass(frozen=True)
class _AxisPlan:
    """One axis of one mask: frame range ``out``, encoder-square range ``up`` it reads, low-res ``src``."""

    out: tuple[int, int]
    up: tuple[int, int]
    src: tuple[int, int]


def _plan_axis(hot: torch.Tensor, one: _SourceIndex, two: _SourceIndex, input_len: int, frame_len: int,
               low_len: int) -> _AxisPlan | None:
    """Where a mask can be set along one axis, from its low-res ``hot`` pixels (``(low_len,)`` bool).

    ``one`` maps encoder-square pixels to low-res ones (first upscale), ``two``
    frame pixels to input-crop pixels (second upscale). Bilinear weights are
    convex, so a frame pixel above the threshold needs a hot low-res source:
    the plan is conservative, never too small. ``src`` has a 2-pixel margin, so
    upscaling just that slice gives the same floats as upscaling the whole.
    """
    up = _window(hot, one, input_len)
    if up is None:
        return None
    out = _touching(up[0], up[1] - 1, two, frame_len)
    if out is None:
        return None
    na, nb = int(two[0][out[0]]), int(two[1][out[1] - 1]) + 1
    lo, hi = int(one[0][na]), int(one[1][nb - 1])
    return _AxisPlan(out, (na, nb), (max(0, lo - 2), min(low_len, hi + 3)))


def _tight(mask: torch.Tensor, x0: int, y0: int) -> tuple[BoolArray, int, int]:
    """Crop a ``(h, w)`` bool device mask at ``(x0, y0)`` to its set pixels; host ``(crop, x, y)``.

    An empty mask gives a ``(0, 0)`` crop at ``(0, 0)``.
    """
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    if ys.numel() == 0:
        return np.zeros((0, 0), bool), 0, 0
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    y_lo, y_hi, x_lo, x_hi = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    return _to_host(mask[y_lo:y_hi, x_lo:x_hi]), x0 + x_lo, y0 + y_lo


def _to_host(mask: torch.Tensor) -> BoolArray:
    """A ``(h, w)`` bool device tensor as a Fortran-ordered host array (what COCO RLE encoding reads)."""
    return mask.t().contiguous().cpu().numpy().T


def _check_image(image: RGBImage) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got shape {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")


class SamSegmenter:
    """:class:`labelfleet.stages.Segmenter` backed by a loaded SAM model.

    Args:
        model: a ``segment_anything.modeling.Sam`` (moved to ``device`` here, once).
        device: any torch device string ("cpu", "cuda", "cuda:1").
        encoder_batch_size: images per image-encoder forward (>1 helps on GPU).
        upscale_chunk: masks upscaled to the encoder's ``img_size`` square at a
            time (``upscale_chunk * img_size**2`` floats on the device).
        decoder_chunk: boxes per prompt-encoder/mask-decoder call (bounds the
            decoder's activations when an image has hundreds of boxes).
        strip_pixels: frames of at most this many pixels are resized whole, one
            mask at a time (exactly ``postprocess_masks``); larger frames only
            inside each mask's window, in strips of this many pixels.
        precision: ``"fp32"`` or ``"bf16"``/``"fp16"`` autocast for the image
            encoder only (prompt encoder, decoder and upscaling stay fp32).
        compile_backend: ``"off"`` or a ``torch.compile`` backend for the image
            encoder (:mod:`workers.stages.compiling`).
    """

    def __init__(
        self,
        model: Any,
        *,
        device: str = "cpu",
        encoder_batch_size: int = 1,
        upscale_chunk: int = 16,
        decoder_chunk: int = 32,
        strip_pixels: int = 1 << 22,
        precision: str = "fp32",
        compile_backend: str = "off",
    ) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        if min(encoder_batch_size, upscale_chunk, decoder_chunk, strip_pixels) < 1:
            raise ValueError(
                f"encoder_batch_size, upscale_chunk, decoder_chunk and strip_pixels must be >= 1, got "
                f"{encoder_batch_size}, {upscale_chunk}, {decoder_chunk}, {strip_pixels}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        install_chunked_attention(self.model.image_encoder)  # global blocks: bounded attention maps
        self.img_size = int(model.image_encoder.img_size)
        self.model.image_encoder = compile_module(self.model.image_encoder, compile_backend, "SAM's image encoder")
        self.transform = ResizeLongestSide(self.img_size)
        self.encoder_batch_size = encoder_batch_size
        self.upscale_chunk = upscale_chunk
        self.decoder_chunk = decoder_chunk
        self.strip_pixels = strip_pixels
        self.amp_dtype = amp_dtype(precision)
        self._buffer: torch.Tensor | None = None  # see _upscale_buffer (one caller at a time, as the pipeline)

    # ------------------------------------------------------------------ helpers
    def _pad_extreme(self, image: RGBImage) -> RGBImage:
        """Pad bottom/right with the pixel mean so the resized short side is >= ``MIN_RESIZED_SIDE``."""
        _check_image(image)
        h, w = image.shape[:2]
        min_side = int(np.ceil(max(h, w) * MIN_RESIZED_SIDE / self.img_size))
        ph, pw = max(h, min_side), max(w, min_side)
        if (ph, pw) == (h, w):
            return image
        padded = np.empty((ph, pw, 3), np.uint8)
        padded[:] = self.model.pixel_mean.view(3).round().to(torch.uint8).cpu().numpy()
        padded[:h, :w] = image
        return padded

    def _prepare(self, image: RGBImage) -> _Prepared:
        """Pad an extreme image, resize the long side to ``img_size`` exactly like ``SamPredictor``."""
        padded = self._pad_extreme(image)
        resized = self.transform.apply_image(padded)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        return _Prepared(
            tensor,
            (resized.shape[0], resized.shape[1]),
            (padded.shape[0], padded.shape[1]),
            (image.shape[0], image.shape[1]),
        )

    def _encode(self, prepared: Sequence[_Prepared]) -> torch.Tensor:
        """Image embeddings ``(B, C, h', w')`` for prepared images, ``encoder_batch_size`` per forward."""
        feats = []
        for start in range(0, len(prepared), self.encoder_batch_size):
            chunk = prepared[start : start + self.encoder_batch_size]
            batch = torch.cat([self.model.preprocess(p.tensor) for p in chunk])
            with autocast(self.device, self.amp_dtype):
                feats.append(self.model.image_encoder(batch).float())
        return torch.cat(feats)

    def _decode(
        self, features: torch.Tensor, prep: _Prepared, points: Any, boxes: torch.Tensor | None
    ) -> list[dict[str, Any]]:
        """Prompt encoder + mask decoder for one image, ``decoder_chunk`` prompts per call.

        Returns one box-cropped mask record per prompt (see :func:`_mask_records`).
        """
        n = 1 if boxes is None else boxes.shape[0]
        out: list[dict[str, Any]] = []
        for start in range(0, n, self.decoder_chunk):
            chunk = None if boxes is None else boxes[start : start + self.decoder_chunk]
            sparse, dense = self.model.prompt_encoder(points=points, boxes=chunk, masks=None)
            low_res, _ = self.model.mask_decoder(
                image_embeddings=features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            for sub in range(0, low_res.shape[0], self.upscale_chunk):
                out.extend(self._mask_records(low_res[sub : sub + self.upscale_chunk].float(), prep))
        return out

    def _mask_records(self, low_res: torch.Tensor, prep: _Prepared) -> list[dict[str, Any]]:
        """Low-res logits ``(c, 1, 256, 256)`` -> one mask record each, never a full-frame array.

        The logits are those ``Sam.postprocess_masks`` resizes twice (to the
        encoder's ``img_size`` square, cropped to ``input_size``, then to the
        photo). Here each mask is resized only where it can pass
        ``mask_threshold`` (:func:`_plan_axis`, from its low-res logits): the
        first upscale on that slice of the low-res logits (the same floats as
        the whole upscale), the second whole for frames up to ``strip_pixels``
        (``strip_pixels // (H*W)`` masks per call, bit-identical to
        ``postprocess_masks``) or, for larger frames, only inside the window in
        row strips (equal up to float rounding, |diff| < 1e-4 in logits) and
        cropped to the mask's tight extent. Only the window (the mask's extent
        plus a few pixels) leaves the device, RLE-encoded at once. Masks are not clipped to their box
        (the demo's are not).
        """
        h, w = prep.original_size
        ph, pw = prep.padded_size
        plans, up = self._first_upscale(low_res[:, 0].float(), prep)
        thr = float(self.model.mask_threshold)
        empty = np.zeros((0, 0), bool)
        out = []
        if ph * pw <= self.strip_pixels:  # small frame: resized whole, as postprocess_masks, a few masks at once
            per = max(1, self.strip_pixels // (ph * pw))
            for start in range(0, len(up), per):
                full = torch.nn.functional.interpolate(up[start : start + per, None], (ph, pw), mode="bilinear",
                                                       align_corners=False)[:, 0]
                for j, plan in enumerate(plans[start : start + per]):
                    if plan is None:
                        out.append(encode_mask_record(empty, 0, 0, (h, w)))
                        continue
                    (r0, r1), (c0, c1) = plan[0].out, plan[1].out
                    out.append(encode_mask_record(_to_host(full[j, r0:r1, c0:c1] > thr), c0, r0, (h, w)))
            return out
        rows_idx = _source_index(ph, prep.input_size[0], up.device)
        cols_idx = _source_index(pw, prep.input_size[1], up.device)
        for k, plan in enumerate(plans):
            crop, x0, y0 = empty, 0, 0
            if plan is not None:
                crop, x0, y0 = self._window_mask(up[k], rows_idx, cols_idx, plan[0].out, plan[1].out, thr)
            out.append(encode_mask_record(crop, x0, y0, (h, w)))
        return out

    def _first_upscale(
        self, low: torch.Tensor, prep: _Prepared
    ) -> tuple[list[tuple[_AxisPlan, _AxisPlan] | None], torch.Tensor]:
        """Plans per mask and the first upscale ``(c, ih, iw)`` float32, computed only where each plan reads.

        ``low`` is ``(c, lr, lr)`` logits; outside a mask's plan the result is 0 (never read).
        """
        size, lr = self.img_size, low.shape[-1]
        (ih, iw), (h, w), (ph, pw) = prep.input_size, prep.original_size, prep.padded_size
        one = _source_index(size, lr, low.device)
        rows_two = _source_index(ph, ih, low.device)
        cols_two = _source_index(pw, iw, low.device)
        hot = low > float(self.model.mask_threshold) - 1e-3
        any_rows, any_cols = hot.any(dim=2), hot.any(dim=1)
        plans: list[tuple[_AxisPlan, _AxisPlan] | None] = []
        for k in range(len(low)):
            r = _plan_axis(any_rows[k], one, rows_two, ih, h, lr)
            c = _plan_axis(any_cols[k], one, cols_two, iw, w, lr) if r is not None else None
            plans.append(None if r is None or c is None else (r, c))
        if size % lr:  # no integer scale: slices would not give the same floats; upscale whole
            up = torch.nn.functional.interpolate(low[:, None], (size, size), mode="bilinear", align_corners=False)
            return plans, up[:, 0, :ih, :iw]
        f = size // lr
        up = self._upscale_buffer((len(low), ih, iw), low)
        for k, plan in enumerate(plans):
            if plan is None:
                continue
            (na, nb), (s0, s1) = plan[0].up, plan[0].src
            (ma, mb), (t0, t1) = plan[1].up, plan[1].src
            part = torch.nn.functional.interpolate(low[k, None, None, s0:s1, t0:t1], scale_factor=f,
                                                   mode="bilinear", align_corners=False)[0, 0]
            up[k, na:nb, ma:mb] = part[na - f * s0 : nb - f * s0, ma - f * t0 : mb - f * t0]
        return plans, up

    def _upscale_buffer(self, shape: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
        """A reused ``shape`` float buffer for :meth:`_first_upscale` (allocating and zeroing ~50 MB per
        chunk cost more than the upscale). Stale values outside a mask's plan are never read."""
        buf = self._buffer
        if (buf is None or tuple(buf.shape[1:]) != shape[1:] or buf.shape[0] < shape[0] or buf.dtype != like.dtype
                or buf.device != like.device):
            buf = self._buffer = torch.zeros((max(shape[0], self.upscale_chunk), *shape[1:]), dtype=like.dtype,
                                             device=like.device)
        return buf[: shape[0]]

    def _window_mask(
        self,
        logits: torch.Tensor,
        rows_idx: _SourceIndex,
        cols_idx: _SourceIndex,
        rows: tuple[int, int],
        cols: tuple[int, int],
        thr: float,
    ) -> tuple[BoolArray, int, int]:
        """Threshold the resized ``logits`` inside ``rows x cols`` (strips of rows); tight host crop (maybe 0x0)."""
        c0, c1 = cols
        ci0, ci1, cl = (t[c0:c1] for t in cols_idx)
        step = max(1, self.strip_pixels // max(1, c1 - c0))
        strips = []
        for r in range(rows[0], rows[1], step):
            ri0, ri1, rl = (t[r : min(r + step, rows[1])] for t in rows_idx)
            lam = rl[:, None]
            t = (1 - lam) * logits[ri0] + lam * logits[ri1]  # (strip, w_in): rows first
            wl = cl[None]
            strips.append(((1 - wl) * t[:, ci0] + wl * t[:, ci1]) > thr)
        return _tight(torch.cat(strips), c0, rows[0])

    def _boxes_tensor(self, boxes: npt.ArrayLike, prep: _Prepared) -> torch.Tensor:
        arr = np.asarray(boxes, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"boxes must have shape (n, 4) xyxy, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("boxes must be finite")
        return self.transform.apply_boxes_torch(torch.as_tensor(arr, device=self.device), prep.padded_size)

    # --------------------------------------------------------------- public API
    def segment_boxes(
        self, images: Sequence[RGBImage], boxes: Sequence[npt.NDArray[np.float32]]
    ) -> list[list[dict[str, Any]]]:
        """One mask per box.

        Args:
            images: ``(H_i, W_i, 3)`` uint8 RGB images.
            boxes: ``boxes[i]`` is ``(n_i, 4)`` float absolute pixel xyxy in image ``i``
                (not clipped: prompts exactly as GroundingDINO predicted them).

        Returns:
            Per image, ``n_i`` mask records in box order, in the ``H_i x W_i``
            frame (``mask_record_full`` gives the ``(H_i, W_i)`` bool mask).
            Images with boxes are encoded ``encoder_batch_size`` at a time, then
            decoded ``decoder_chunk`` boxes at a time; images without boxes cost nothing.
        """
        if len(images) != len(boxes):
            raise ValueError(f"got {len(images)} images but {len(boxes)} box arrays")
        out: list[list[dict[str, Any]] | None] = [None] * len(images)
        todo: list[tuple[int, _Prepared, torch.Tensor]] = []
        for i, (image, b) in enumerate(zip(images, boxes, strict=True)):
            _check_image(image)
            if len(np.asarray(b).reshape(-1)) == 0:
                out[i] = []
                continue
            prep = self._prepare(image)
            todo.append((i, prep, self._boxes_tensor(b, prep)))
        with torch.inference_mode():
            for start in range(0, len(todo), self.encoder_batch_size):
                chunk = todo[start : start + self.encoder_batch_size]
                feats = self._encode([p for _, p, _ in chunk])
                for k, (i, prep, box_t) in enumerate(chunk):
                    out[i] = self._decode(feats[k : k + 1], prep, None, box_t)
        return [m for m in out if m is not None]

    def segment_prompts(
        self,
        image: RGBImage,
        box: npt.ArrayLike | None = None,
        points: npt.ArrayLike | None = None,
        point_labels: npt.ArrayLike | None = None,
    ) -> BoolArray:
        """One mask from a box and/or include/exclude points (``multimask_output=False``).

        Args:
            image: ``(H, W, 3)`` uint8 RGB.
            box: ``(4,)`` pixel xyxy, or None.
            points: ``(k, 2)`` pixel ``(x, y)``, or None.
            point_labels: ``(k,)`` ints, 1 = include (foreground), 0 = exclude.

        Returns:
            ``(H, W)`` bool mask.
        """
        if box is None and points is None:
            raise ValueError("segment_prompts needs a box, points, or both")
        prep = self._prepare(image)
        box_t = None if box is None else self._boxes_tensor(np.asarray(box, np.float32).reshape(1, 4), prep)
        pts = None
        if points is not None:
            coords = np.asarray(points, dtype=np.float32)
            labels = np.asarray(point_labels if point_labels is not None else [], dtype=np.int64)
            if coords.ndim != 2 or coords.shape[1] != 2 or labels.shape != (coords.shape[0],):
                raise ValueError(
                    f"points must be (k, 2) with point_labels (k,), got {coords.shape} and {labels.shape}"
                )
            if not np.isin(labels, (0, 1)).all():
                raise ValueError("point_labels must be 1 (include) or 0 (exclude)")
            coords_t = self.transform.apply_coords_torch(
                torch.as_tensor(coords, device=self.device), prep.padded_size
            )
            pts = (coords_t[None], torch.as_tensor(labels, device=self.device)[None])
        with torch.inference_mode():
            return mask_record_full(self._decode(self._encode([prep]), prep, pts, box_t)[0])

    def segment_everything(
        self, image: RGBImage, **amg_kwargs: Any
    ) -> list[tuple[BoolArray, np.ndarray, float]]:
        """Automatic masks via ``SamAutomaticMaskGenerator(model, **amg_kwargs)``.

        Returns:
            ``(mask (H, W) bool, xyxy (4,) float32 absolute px, predicted IoU score)``
            tuples sorted by decreasing score.
        """
        from segment_anything import SamAutomaticMaskGenerator

        if amg_kwargs.get("output_mode", "binary_mask") != "binary_mask":
            raise ValueError("segment_everything supports only output_mode='binary_mask'")
        h, w = image.shape[:2]
        padded = self._pad_extreme(image)
        generator = SamAutomaticMaskGenerator(self.model, **amg_kwargs)
        with torch.inference_mode():
            records = generator.generate(padded)
        out = []
        for rec in records:
            mask = np.asarray(rec["segmentation"], dtype=bool)[:h, :w]
            if not mask.any():
                continue
            x, y, bw, bh = (float(v) for v in rec["bbox"])
            xyxy = np.array([min(x, w), min(y, h), min(x + bw, w), min(y + bh, h)], np.float32)
            out.append((mask, xyxy, float(rec["predicted_iou"])))
        out.sort(key=lambda t: -t[2])
        return out
