"""SAM promptable segmentation (segment-anything 1.0), batched boxes, device-agnostic.

Frames: images are ``(H, W, 3)`` uint8 RGB; boxes are absolute pixel xyxy and
points absolute pixel ``(x, y)`` in that frame; masks are full-frame
``(H, W)`` bool. Results equal ``SamPredictor`` (``set_image`` +
``predict_torch(..., multimask_output=False)``) for the same model.

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

from labelfleet.types import BoolArray, RGBImage

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
        upscale_chunk: boxes upscaled to full resolution at a time (bounds the
            float memory of ``(n, H, W)`` logits on large images).
    """

    def __init__(
        self, model: Any, *, device: str = "cpu", encoder_batch_size: int = 1, upscale_chunk: int = 16
    ) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        if encoder_batch_size < 1 or upscale_chunk < 1:
            raise ValueError(
                f"encoder_batch_size and upscale_chunk must be >= 1, got "
                f"{encoder_batch_size}, {upscale_chunk}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.img_size = int(model.image_encoder.img_size)
        self.transform = ResizeLongestSide(self.img_size)
        self.encoder_batch_size = encoder_batch_size
        self.upscale_chunk = upscale_chunk

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
            feats.append(self.model.image_encoder(batch))
        return torch.cat(feats)

    def _decode(
        self, features: torch.Tensor, prep: _Prepared, points: Any, boxes: torch.Tensor | None
    ) -> BoolArray:
        """Prompt encoder + mask decoder for one image; returns ``(n, H, W)`` bool in the original frame."""
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, _ = self.model.mask_decoder(
            image_embeddings=features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        h, w = prep.original_size
        out = np.empty((low_res.shape[0], h, w), dtype=bool)
        for start in range(0, low_res.shape[0], self.upscale_chunk):
            up = self.model.postprocess_masks(
                low_res[start : start + self.upscale_chunk], prep.input_size, prep.padded_size
            )
            masks = up[:, 0, :h, :w] > self.model.mask_threshold
            out[start : start + masks.shape[0]] = masks.cpu().numpy()
        return out

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
    ) -> list[BoolArray]:
        """One mask per box.

        Args:
            images: ``(H_i, W_i, 3)`` uint8 RGB images.
            boxes: ``boxes[i]`` is ``(n_i, 4)`` float absolute pixel xyxy in image ``i``.

        Returns:
            ``(n_i, H_i, W_i)`` bool masks, in box order. Each image with boxes
            costs one encoder pass (batched over images) and one decoder pass
            over all its boxes; images without boxes cost nothing.
        """
        if len(images) != len(boxes):
            raise ValueError(f"got {len(images)} images but {len(boxes)} box arrays")
        out: list[BoolArray | None] = [None] * len(images)
        todo: list[tuple[int, _Prepared, torch.Tensor]] = []
        for i, (image, b) in enumerate(zip(images, boxes, strict=True)):
            _check_image(image)
            if len(np.asarray(b).reshape(-1)) == 0:
                out[i] = np.zeros((0, *image.shape[:2]), dtype=bool)
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
            return self._decode(self._encode([prep]), prep, pts, box_t)[0]

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
