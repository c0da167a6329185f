"""Stage protocols. Implementations live in ``workers.stages`` (they need torch).

All stages take a *batch* of images so a GPU implementation can batch without
an interface change. Images are ``(H, W, 3)`` uint8 RGB arrays in the upright
frame; boxes are absolute pixel xyxy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from labelfleet.types import Detections, RGBImage, Tag


@runtime_checkable
class Tagger(Protocol):
    """Image-level tagging (RAM / RAM++)."""

    #: Tags this tagger can emit, in its own order.
    tag_list: Sequence[str]

    def tag(self, images: Sequence[RGBImage]) -> list[list[Tag]]:
        """Tag each image.

        Returns, per image, the tags whose score passes the tagger's
        threshold(s), in tag-list order.
        """
        ...


@runtime_checkable
class Detector(Protocol):
    """Open-set box detection (GroundingDINO)."""

    def detect(self, images: Sequence[RGBImage], classes: Sequence[Sequence[str]]) -> list[Detections]:
        """Detect ``classes[i]`` in ``images[i]``.

        Returns one :class:`Detections` per image with ``xyxy`` in absolute
        pixels of that image, ``class_name`` from ``classes[i]`` and a
        ``"phrase"`` data column. NMS is already applied.
        """
        ...


@runtime_checkable
class Segmenter(Protocol):
    """Promptable segmentation (SAM)."""

    def segment_boxes(
        self, images: Sequence[RGBImage], boxes: Sequence[npt.NDArray[np.float32]]
    ) -> list[list[dict[str, Any]]]:
        """One mask per box: ``boxes[i]`` is ``(n_i, 4)`` pixel xyxy (may extend past the image);
        returns per image ``n_i`` box-cropped mask records (:mod:`labelfleet.masks`) in its frame."""
        ...


__all__ = ["Detections", "Detector", "Segmenter", "Tag", "Tagger"]
