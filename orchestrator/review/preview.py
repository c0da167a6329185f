"""A contact sheet of a job's images with masks, boxes and labels drawn (Pillow only, no FiftyOne)."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps
from sqlalchemy.orm import Session

from labelfleet.db.models import Job
from labelfleet.masks import mask_record_frame, mask_record_full
from orchestrator.review.dataset import RANDOM_WEIGHTS_NOTE, detection_rows, done_items, open_job_source

logger = logging.getLogger(__name__)

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
_BANNER = (180, 0, 0)


def _color(name: str) -> tuple[int, int, int]:
    return _PALETTE[sum(name.encode()) % len(_PALETTE)]


def draw_labels(img: Image.Image, rows: list[dict], *, include_rejected: bool = True) -> Image.Image:
    """Draw masks (45% tint), boxes and ``class score`` on an upright RGB image (absolute px xyxy rows)."""
    base = img.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for r in rows:
        if r.get("review_status") == "rejected" and not include_rejected:
            continue
        color = _color(r["class_name"])
        if r.get("mask") and mask_record_frame(r["mask"]) == (base.height, base.width):
            tint = Image.new("RGBA", base.size, (*color, 115))
            overlay.paste(tint, (0, 0), Image.fromarray(mask_record_full(r["mask"]).astype("uint8") * 255))
        dash = r.get("review_status") == "rejected"
        draw.rectangle([r["x0"], r["y0"], max(r["x1"] - 1, r["x0"]), max(r["y1"] - 1, r["y0"])],
                       outline=(128, 128, 128, 255) if dash else (*color, 255), width=2)
        score = f" {r['score']:.2f}" if r.get("score") is not None else ""
        text = f"{r['class_name']}{score}" + (" (rejected)" if dash else "")
        draw.text((r["x0"] + 2, max(r["y0"] - 11, 0)), text, fill=(255, 255, 255, 255), stroke_width=1,
                  stroke_fill=(0, 0, 0, 255))
    return Image.alpha_composite(base, overlay).convert("RGB")


def render_preview(session: Session, job: Job, out: Path, *, max_images: int = 16, thumb: int = 256,
                   cols: int | None = None, s3_endpoint_url: str | None = None) -> Path:
    """Write a grid PNG of up to ``max_images`` labelled images (``thumb`` px cells) to ``out``."""
    if max_images < 1 or thumb < 16:
        raise ValueError(f"need max_images >= 1 and thumb >= 16, but got {max_images} and {thumb}")
    items = done_items(session, job)[:max_images]
    rows = detection_rows(session, [it.id for it in items])
    src = open_job_source(job, s3_endpoint_url)
    cols = cols or max(1, min(len(items), math.ceil(math.sqrt(len(items) or 1))))
    nrows = max(1, math.ceil(len(items) / cols))
    random = bool(job.models.get("random_weights", False))
    top = 28 if random else 0
    sheet = Image.new("RGB", (cols * thumb, nrows * thumb + top), (32, 32, 32))
    for i, it in enumerate(items):
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(src.read(it.key)))).convert("RGB")
        cell = draw_labels(img, rows.get(it.id, []))
        cell.thumbnail((thumb, thumb))
        sheet.paste(cell, ((i % cols) * thumb, (i // cols) * thumb + top))
    if random:
        draw = ImageDraw.Draw(sheet)
        draw.rectangle([0, 0, sheet.width, top], fill=_BANNER)
        draw.text((6, 8), f"{job.name}: {RANDOM_WEIGHTS_NOTE.upper()} (tiny random-weight models)",
                  fill=(255, 255, 255))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    logger.info("preview of %d images written to %s", len(items), out)
    return out
