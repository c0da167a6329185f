"""A reference loop restated from Grounded-SAM's demo, for fidelity tests and the naive benchmark baseline.

Restated (not copied) from ``automatic_label_ram_demo.py`` / ``grounded_sam_demo.py`` of
IDEA-Research/Grounded-Segment-Anything, with the same groundingdino-py and
segment-anything calls: one image, one caption, fp32, per image

1. ``T.RandomResize([size], max_size)`` + ``ToTensor`` + ``Normalize`` on the PIL image;
2. ``model(image[None], captions=[caption])``; keep queries whose best token
   sigmoid > ``box_threshold``; phrase = ``get_phrases_from_posmap(logit > text_threshold)``;
   score = best token sigmoid;
3. boxes ``cxcywh * [W, H, W, H]`` -> xyxy, **unclipped**; ``torchvision.ops.nms`` on them;
4. ``SamPredictor.set_image`` + ``predict_torch(boxes=transform.apply_boxes_torch(...),
   multimask_output=False)`` on the same unclipped boxes; full-frame masks.

Labels from random weights are meaningless; this loop exists to compare outputs and speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class DemoOutput:
    """One image's demo result: ``xyxy`` (n, 4) float32 absolute px, unclipped; ``scores`` (n,);
    ``phrases``; ``masks`` (n, H, W) bool full-frame (None when not segmented)."""

    xyxy: np.ndarray
    scores: np.ndarray
    phrases: list[str]
    masks: np.ndarray | None


def demo_transform(size: int, max_size: int) -> Any:
    """The demo's ``load_image`` transform at a given short side (800/1333 for the real models)."""
    import groundingdino.datasets.transforms as T

    return T.Compose([T.RandomResize([size], max_size=max_size), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def demo_boxes(model: torch.nn.Module, image: np.ndarray, caption: str, *, box_threshold: float,
               text_threshold: float, iou_threshold: float, size: int, max_size: int,
               device: str = "cpu") -> DemoOutput:
    """Steps 1-3: GroundingDINO + NMS exactly as the demo (``image``: (H, W, 3) uint8 RGB)."""
    import torchvision
    from groundingdino.util.utils import get_phrases_from_posmap
    from PIL import Image

    tensor, _ = demo_transform(size, max_size)(Image.fromarray(image), None)
    caption = caption.lower().strip()
    if not caption.endswith("."):
        caption = caption + "."
    with torch.no_grad():
        outputs = model(tensor[None].to(device), captions=[caption])
    logits = outputs["pred_logits"].cpu().sigmoid()[0]
    boxes = outputs["pred_boxes"].cpu()[0]
    keep = logits.max(dim=1)[0] > box_threshold
    logits, boxes = logits[keep], boxes[keep]
    tokenized = model.tokenizer(caption)
    phrases = [get_phrases_from_posmap(lg > text_threshold, tokenized, model.tokenizer) for lg in logits]
    scores = logits.max(dim=1)[0] if len(logits) else torch.zeros((0,))
    h, w = image.shape[:2]
    boxes = boxes * torch.tensor([w, h, w, h], dtype=boxes.dtype)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    nms_idx = torchvision.ops.nms(boxes, scores, iou_threshold).numpy().tolist()
    return DemoOutput(boxes[nms_idx].numpy().astype(np.float32), scores[nms_idx].numpy(),
                      [phrases[i] for i in nms_idx], None)


def demo_masks(sam: torch.nn.Module, image: np.ndarray, xyxy: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Step 4: ``(n, H, W)`` bool masks from ``SamPredictor`` for the unclipped boxes."""
    from segment_anything import SamPredictor

    h, w = image.shape[:2]
    if len(xyxy) == 0:
        return np.zeros((0, h, w), bool)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    boxes = predictor.transform.apply_boxes_torch(torch.as_tensor(xyxy), image.shape[:2]).to(device)
    masks, _, _ = predictor.predict_torch(point_coords=None, point_labels=None, boxes=boxes,
                                          multimask_output=False)
    return masks[:, 0].cpu().numpy()


def demo_label(gdino: torch.nn.Module, sam: torch.nn.Module | None, image: np.ndarray, caption: str,
               **kw: Any) -> DemoOutput:
    """The whole demo chain for one image (``kw``: thresholds, size, max_size, device)."""
    out = demo_boxes(gdino, image, caption, **kw)
    if sam is not None:
        out.masks = demo_masks(sam, image, out.xyxy, kw.get("device", "cpu"))
    return out


def clip_boxes(xyxy: np.ndarray, w: int, h: int) -> np.ndarray:
    """Clip xyxy to the image, as labelfleet does when storing (the demo never clips)."""
    out = np.asarray(xyxy, np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks (1.0 when both are empty)."""
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def stored_reference(ref: DemoOutput, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo's boxes as labelfleet stores them: clipped to the image, zero-area boxes dropped.

    Returns ``(xyxy (k, 4), index (k,) into ref)``.
    """
    clipped = clip_boxes(ref.xyxy, w, h) if len(ref.xyxy) else ref.xyxy.reshape(0, 4)
    idx = np.flatnonzero((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1]))
    return clipped[idx], idx


def match_boxes(ours: np.ndarray, ref: np.ndarray, tol: float = 1.0) -> list[int | None]:
    """For each ``ref`` box, the index of a distinct ``ours`` box within ``tol`` px on every coordinate."""
    used: set[int] = set()
    out: list[int | None] = []
    for box in np.asarray(ref).reshape(-1, 4):
        close = np.flatnonzero(np.all(np.abs(np.asarray(ours).reshape(-1, 4) - box) <= tol, axis=1))
        pick = next((int(j) for j in close if int(j) not in used), None)
        if pick is not None:
            used.add(pick)
        out.append(pick)
    return out
