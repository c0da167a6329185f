"""Shared helpers for the review tests (no tests here): FiftyOne env and synthetic jobs.

FiftyOne reads its config at import time, so the database dir is set when this
module is imported, before any test imports :mod:`fiftyone`. One bundled mongod
then serves the whole session (and the ``labelfleet review`` subprocesses, which
inherit the env); every test uses a unique job name so datasets never collide.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="lf-fo-db-"))
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

from labelfleet.db import migrate
from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.masks import encode_mask_record, encode_rle
from labelfleet.storage import open_source
from tests.imagegen import scene

W, H = 64, 48
CLASSES = ("cat", "dog", "person")


def unique_job(prefix: str = "rv") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def awkward_boxes(w: int = W, h: int = H) -> list[tuple[float, float, float, float]]:
    """Pixel xyxy boxes that stress the converter: fractional, touching every edge, 1 px, full frame."""
    return [(0.0, 0.0, float(w), float(h)), (10.3, 5.7, 30.2, 20.9), (0.0, 0.0, 1.0, 1.0),
            (w - 1.0, h - 1.0, float(w), float(h)), (20.5, 10.5, 21.5, 11.5), (7.49, 3.51, 8.2, 40.0),
            (0.0, 12.25, float(w), 13.0), (33.6, 0.0, 33.9, float(h))]


def mask_in_box(xyxy: tuple[float, float, float, float], w: int = W, h: int = H,
                seed: int = 0, noisy: bool = True) -> np.ndarray:
    """An (H, W) bool mask whose pixels all lie in the rounded box (so a crop keeps all of it).

    ``noisy``: random pixels (a stress test); otherwise a filled ellipse, like a SAM blob.
    """
    from orchestrator.review.convert import pixel_span

    x_lo, x_hi = pixel_span(xyxy[0], xyxy[2], w)
    y_lo, y_hi = pixel_span(xyxy[1], xyxy[3], h)
    m = np.zeros((h, w), dtype=bool)
    bh, bw = y_hi - y_lo, x_hi - x_lo
    if noisy:
        m[y_lo:y_hi, x_lo:x_hi] = np.random.default_rng(seed).random((bh, bw)) > 0.4
    else:
        yy, xx = np.mgrid[0:bh, 0:bw]
        ry, rx = (yy + 0.5 - bh / 2) / (bh / 2), (xx + 0.5 - bw / 2) / (bw / 2)
        m[y_lo:y_hi, x_lo:x_hi] = ry**2 + rx**2 <= 1
    m[y_lo, x_lo] = True
    return m


def det_row(xyxy: tuple[float, float, float, float], cls: str, score: float, seed: int,
            noisy: bool = True, cropped: bool = False) -> dict[str, Any]:
    """A detection row; ``cropped``: the mask as a box-cropped record, else legacy full-frame RLE."""
    from orchestrator.review.convert import pixel_span

    m = mask_in_box(xyxy, seed=seed, noisy=noisy)
    rec = encode_rle(m)
    if cropped:
        x_lo, x_hi = pixel_span(xyxy[0], xyxy[2], W)
        y_lo, y_hi = pixel_span(xyxy[1], xyxy[3], H)
        rec = encode_mask_record(m[y_lo:y_hi, x_lo:x_hi], x_lo, y_lo, (H, W))
    return {"x0": xyxy[0], "y0": xyxy[1], "x1": xyxy[2], "y1": xyxy[3], "score": score, "class_name": cls,
            "phrase": cls, "tag": None, "mask": rec, "area": int(m.sum())}


def make_job(db_url: str, folder: Path, *, images: int = 4, dets_per_image: int | None = None,
             random_weights: bool = False, name: str | None = None, noisy_masks: bool = True,
             cropped: bool = False, classes: Any = CLASSES) -> str:
    """A done job built through the repository: ``images`` W x H PNGs, awkward boxes with masks.

    ``dets_per_image`` None = every awkward box; otherwise that many boxes cycled from them.
    ``cropped``: masks stored as box-cropped records. ``classes`` None = automatic mode
    (labels still use :data:`CLASSES`). Returns the job name.
    """
    names = list(classes or CLASSES)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        scene(i, W, H).save(folder / f"img_{i:04d}.png")
    name = name or unique_job()
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    factory = session_factory(engine)
    src = open_source(str(folder))
    boxes = awkward_boxes()
    n = len(boxes) if dets_per_image is None else dets_per_image
    with factory() as s:
        job, _ = repo.get_or_create_job(s, name, src.uri, {"classes": list(classes) if classes else None},
                                        {"preset": "synthetic", "random_weights": random_weights})
        s.commit()
        repo.add_items(s, job, src.list())
        ids = repo.claim_items(s, job.id, "test", limit=images, lease_seconds=600)
        for k, item_id in enumerate(ids):
            rows = [det_row(boxes[j % len(boxes)], names[(k * n + j * 97) % len(names)], 0.1 + 0.8 * (j % 10) / 10,
                            seed=k * 1000 + j, noisy=noisy_masks, cropped=cropped) for j in range(n)]
            labels = repo.LabelRows(tags=[("animal", 0.9), ("indoor", 0.3)], detections=rows)
            assert repo.finish_item(s, item_id, "test", labels, facts={"width": W, "height": H})
    engine.dispose()
    return name
