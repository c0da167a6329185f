"""Image preprocessing identical to the official ``ram.transform.get_transform``.

Official pipeline: ``PIL.Image.convert("RGB")`` -> ``Resize((S, S))`` on the PIL image (Pillow BILINEAR with
its antialiasing; no aspect ratio kept, no crop) -> ``ToTensor`` (uint8 / 255 as float32, CHW) ->
``Normalize`` with the ImageNet mean/std. The same arithmetic is done here without torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_pil_rgb(image: np.ndarray) -> Image.Image:
    """``(H, W, 3)`` uint8 RGB (also ``(H, W)`` gray or ``(H, W, 4)`` RGBA, alpha dropped) -> PIL RGB."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")


def preprocess_image(image: np.ndarray, image_size: int) -> torch.Tensor:
    """One ``(H, W, 3)`` uint8 image -> ``(3, S, S)`` float32 normalised tensor (``S = image_size``)."""
    pil = to_pil_rgb(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x.sub(mean).div(std)


def preprocess_batch(images: Sequence[np.ndarray], image_size: int) -> torch.Tensor:
    """A sequence of images -> ``(B, 3, S, S)`` float32 tensor on CPU."""
    return torch.stack([preprocess_image(img, image_size) for img in images])
