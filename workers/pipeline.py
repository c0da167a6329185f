"""The per-image labelling pipeline: tags -> caption -> boxes -> NMS -> masks.

One :class:`Pipeline` is built per process (models load once) and called on
batches of decoded images. The same object serves the local runner and the
Celery workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labelfleet.captions import normalize_class
from labelfleet.masks import encode_mask_record, mask_record_crop, mask_record_frame
from labelfleet.pipeline_config import PipelineConfig
from labelfleet.stages import Detector, Segmenter, Tagger
from labelfleet.types import Detections, RGBImage, Tag, clip_xyxy

logger = logging.getLogger(__name__)

#: Images smaller than this on a side, or more elongated than MAX_ASPECT, are
#: zero-padded (bottom/right) before the models see them; labels are clipped back.
MIN_SIDE = 32
MAX_ASPECT = 32


@dataclass
class ImageLabels:
    """Labels of one image: boxes clipped to the image, ``detections.mask`` = box-cropped
    mask records (:mod:`labelfleet.masks`) when segmentation ran."""

    tags: list[Tag]
    detections: Detections
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, per image


@dataclass
class Front:
    """A batch between :meth:`Pipeline.run_front` and :meth:`Pipeline.run_back`: original ``(H, W)`` sizes,
    padded images, tags and unclipped detections (pixel xyxy of the padded frame) per image, stage seconds."""

    sizes: list[tuple[int, int]]
    padded: list[RGBImage]
    tags: list[list[Tag]] = field(default_factory=list)
    dets: list[Detections] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, for the whole batch


def pad_for_models(image: RGBImage) -> RGBImage:
    """Zero-pad (bottom/right) tiny or extremely elongated images so every model accepts them."""
    h, w = image.shape[:2]
    nh = max(h, MIN_SIDE, -(-w // MAX_ASPECT))
    nw = max(w, MIN_SIDE, -(-h // MAX_ASPECT))
    if (nh, nw) == (h, w):
        return image
    out = np.zeros((nh, nw, 3), dtype=np.uint8)
    out[:h, :w] = image
    return out


def _record_in_frame(rec: dict[str, Any], h: int, w: int) -> dict[str, Any]:
    """A mask record of a padded frame restricted to its top-left ``h x w`` (unchanged if it fits)."""
    if mask_record_frame(rec) == (h, w):
        return rec
    crop, x0, y0 = mask_record_crop(rec)
    x0, y0 = min(x0, w), min(y0, h)
    return encode_mask_record(crop[: max(0, h - y0), : max(0, w - x0)], x0, y0, (h, w))


def _crop_back(dets: Detections, h: int, w: int) -> Detections:
    """Clip boxes to the original ``w x h`` frame (the only clipping: NMS and SAM saw the
    unclipped boxes, as in Grounded-SAM's demo) and crop masks; drop boxes left with no area."""
    if len(dets) == 0:
        return dets
    xyxy = clip_xyxy(dets.xyxy, w, h)
    mask = None if dets.mask is None else [_record_in_frame(r, h, w) for r in dets.mask]
    out = Detections(xyxy=xyxy, confidence=dets.confidence, class_name=dets.class_name, mask=mask,
                     data=dets.data)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    return out[np.flatnonzero(keep)]


class Pipeline:
    """Runs the configured stages on batches of ``(H, W, 3)`` uint8 RGB images."""

    def __init__(self, config: PipelineConfig, detector: Detector, segmenter: Segmenter | None,
                 tagger: Tagger | None = None) -> None:
        if config.automatic and tagger is None:
            raise ValueError("automatic mode (no classes) needs a tagger; pass classes or a tagger")
        self.config = config
        self.detector = detector
        self.segmenter = segmenter if config.segment else None
        self.tagger = tagger if config.automatic else None
        self._fixed = [normalize_class(c) for c in config.classes or ()]
        self._extra = [normalize_class(c) for c in config.extra_classes]
        self._excluded = {normalize_class(t) for t in config.exclude_tags}

    def classes_for(self, tags: Sequence[Tag]) -> list[str]:
        """Classes searched in one image: fixed classes, or its tags (best first) plus extras."""
        if not self.config.automatic:
            return list(dict.fromkeys(self._fixed + self._extra))
        kept = [t for t in tags if normalize_class(t.name) not in self._excluded]
        kept.sort(key=lambda t: -t.score)
        if self.config.max_tags is not None:
            kept = kept[: self.config.max_tags]
        return list(dict.fromkeys([normalize_class(t.name) for t in kept] + self._extra))

    def _tag(self, images: Sequence[RGBImage]) -> list[list[Tag]]:
        if self.tagger is None:
            return [[] for _ in images]
        return self.tagger.tag(images)

    def run(self, images: Sequence[RGBImage]) -> list[ImageLabels]:
        """Label a batch. Returns one :class:`ImageLabels` per input image, in order."""
        return self.run_back(self.run_front(images))

    def run_front(self, images: Sequence[RGBImage]) -> Front:
        """The first half of :meth:`run`: tags, caption, boxes and NMS (the tagger and the detector)."""
        n = len(images)
        front = Front(sizes=[im.shape[:2] for im in images], padded=[pad_for_models(im) for im in images])
        if n == 0:
            return front
        t0 = time.perf_counter()
        front.tags = self._tag(front.padded)
        front.timings["tag"] = time.perf_counter() - t0
        classes = [self.classes_for(t) for t in front.tags]
        t0 = time.perf_counter()
        todo = [i for i in range(n) if classes[i]]
        found = self.detector.detect([front.padded[i] for i in todo], [classes[i] for i in todo]) if todo else []
        front.dets = [Detections.empty() for _ in range(n)]
        for i, d in zip(todo, found, strict=True):
            front.dets[i] = d
        front.timings["detect"] = time.perf_counter() - t0
        return front

    def run_back(self, front: Front) -> list[ImageLabels]:
        """The second half of :meth:`run`: masks (the segmenter), boxes clipped and masks cropped back.

        Uses only the segmenter, so it may run in another thread while
        :meth:`run_front` works on the next batch (one caller per half at a time).
        """
        n = len(front.padded)
        if n == 0:
            return []
        timings = dict(front.timings)
        t0 = time.perf_counter()
        dets = self._segment(front.padded, front.dets)
        timings["segment"] = time.perf_counter() - t0
        per_image = {k: v / n for k, v in timings.items()}
        out = []
        for i in range(n):
            h, w = front.sizes[i]
            d = _crop_back(dets[i], h, w)
            tagged = {normalize_class(t.name): t.name for t in front.tags[i]}
            d.data["tag"] = np.asarray([tagged.get(str(c)) for c in d.class_name], dtype=object)
            out.append(ImageLabels(tags=front.tags[i], detections=d, timings=dict(per_image)))
        return out

    def _segment(self, images: Sequence[RGBImage], dets: list[Detections]) -> list[Detections]:
        if self.segmenter is None:
            return dets
        todo = [i for i, d in enumerate(dets) if len(d)]
        if not todo:
            return dets
        masks = self.segmenter.segment_boxes([images[i] for i in todo], [dets[i].xyxy for i in todo])
        for i, m in zip(todo, masks, strict=True):  # m: mask records of the (padded) image
            d = dets[i]
            dets[i] = Detections(xyxy=d.xyxy, confidence=d.confidence, class_name=d.class_name, mask=m,
                                 data=dict(d.data))
        return dets
