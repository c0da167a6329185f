"""Process leased items of an edit job: masks -> inpainting -> write-once outputs -> provenance rows.

Reuses :class:`workers.processing.ItemProcessor` (read-ahead, batching, error
classification, leases). Masks come from the labelling pipeline run on the fly
(``pipeline`` given) or from another job's stored labels
(:func:`labelfleet.db.edit_queries.usable_detections`). Each item ends as:

* done: its usable labels stored as the edit job item's detections (carried over to
  exports) and one ``edit_outputs`` row per written output, in the item's finishing
  transaction (nothing is recorded if the lease was lost);
* skipped: no target instance with a mask in the image (the reason says so);
* failed / pending / poison as for labelling.

Outputs are written before the transaction under deterministic names and never
overwritten, so a crash between the two rewrites nothing on the next attempt.
"""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.captions import normalize_class
from labelfleet.db import repository as repo
from labelfleet.db.edit_queries import usable_detections
from labelfleet.db.models import EditOutput, ItemStatus
from labelfleet.edit import EditParams, EditUnit, output_key, plan_units
from labelfleet.errors import ItemSkipped, PermanentError
from labelfleet.images import DecodedImage
from labelfleet.masks import encode_mask_record, mask_record_area, mask_record_frame, mask_record_full, mask_to_xyxy
from labelfleet.settings import Settings
from labelfleet.storage.base import Source
from labelfleet.storage.dest import Destination
from labelfleet.types import BoolArray
from workers.inpaint import Inpainter
from workers.pipeline import ImageLabels, Pipeline
from workers.processing import TIME_LIMIT_ERRORS, ItemProcessor, ProcessStats, _as_infra, _Row, labels_to_rows

logger = logging.getLogger(__name__)
RANDOM_NOTE = "random weights - this edit is meaningless"


def png_bytes(image: np.ndarray, provenance: dict[str, Any]) -> bytes:
    """PNG of an ``(H, W, 3)`` uint8 image with provenance in ``tEXt`` chunks (``labelfleet``, ``Comment``)."""
    info = PngInfo()
    info.add_text("labelfleet", json.dumps(provenance, sort_keys=True))
    if provenance.get("random_weights"):
        info.add_text("Comment", RANDOM_NOTE)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def unit_mask(rows: list[dict[str, Any]], unit: EditUnit) -> BoolArray:
    """Full-frame ``(H, W)`` union of the unit's detection masks (decoded one at a time)."""
    out: BoolArray | None = None
    for i in unit.detection_idx:
        m = mask_record_full(rows[i]["mask"])
        out = m if out is None else out | m
    assert out is not None
    return out


def mask_record_of(mask: BoolArray) -> dict[str, Any]:
    """The box-cropped mask record of a full-frame mask (:mod:`labelfleet.masks`)."""
    box = mask_to_xyxy(mask)
    x0, y0, x1, y1 = (int(v) for v in (box or (0, 0, 1, 1)))
    return encode_mask_record(mask[y0:y1, x0:x1], x0, y0, (mask.shape[0], mask.shape[1]))


class EditProcessor(ItemProcessor):
    """Runs leased items of one edit job. ``pipeline=None`` reads masks from job ``source_job_id``."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, owner: str, source: Source, *,
                 job_id: int, params: EditParams, inpainter: Inpainter, model: dict[str, Any], dest: Destination,
                 pipeline: Pipeline | None = None, source_job_id: int | None = None,
                 on_item: Any = None) -> None:
        super().__init__(factory, pipeline, settings, owner, source, on_item=on_item)  # type: ignore[arg-type]
        self.overlap = False  # the edit (in _store) is the work: masks and edits take turns in one thread
        self.job_id, self.params, self.inpainter, self.model, self.dest = job_id, params, inpainter, model, dest
        self.source_job_id = source_job_id
        self._targets = {normalize_class(t) for t in params.targets}

    def _run_batch(self, batch: list[tuple[_Row, DecodedImage, float]], stats: ProcessStats) -> None:
        if self.pipeline is not None:  # masks from the labelling pipeline; calls _store per batch
            super()._run_batch(batch, stats)
            return
        for row, decoded, t_read in batch:
            try:
                with self.factory() as s:
                    rows = usable_detections(s, int(self.source_job_id or 0), row.key)
                self._edit(row, decoded, t_read, rows, stats)
            except (OperationalError, InterfaceError):
                raise
            except Exception as exc:
                self._record_error(row, exc, stats)

    def _store(self, batch: list[tuple[_Row, DecodedImage, float]], results: list[ImageLabels],
               stats: ProcessStats) -> None:
        """Edit each labelled image in this thread (the inpainting model is the work; no writer thread)."""
        for (row, decoded, t_read), labels in zip(batch, results, strict=True):
            try:
                self._edit(row, decoded, t_read, labels_to_rows(labels).detections, stats)
            except (OperationalError, InterfaceError) as exc:
                raise _as_infra(exc) from exc  # the database is down: items go back uncharged, the task retries
            except TIME_LIMIT_ERRORS:
                raise
            except Exception as exc:
                self._record_error(row, exc, stats)

    def _edit(self, row: _Row, decoded: DecodedImage, t_read: float, rows: list[dict[str, Any]],
              stats: ProcessStats) -> None:
        p = self.params
        idx = [i for i, r in enumerate(rows) if r.get("mask") and mask_record_area(r["mask"]) > 0
               and (not self._targets or normalize_class(r["class_name"]) in self._targets)]
        for i in idx:
            if mask_record_frame(rows[i]["mask"]) != (decoded.height, decoded.width):
                h, w = mask_record_frame(rows[i]["mask"])
                raise PermanentError(f"label {i}: its mask is for a {w}x{h} image, this image is "
                                     f"{decoded.width}x{decoded.height}; re-label the image")
        units = plan_units(idx, p.per_instance)
        if not units:
            what = ", ".join(p.targets) or "usable labels"
            raise ItemSkipped(f"nothing to edit: no {what} with a mask in this image")
        t0 = time.perf_counter()
        outputs = [o for unit in units for o in self._edit_unit(row, decoded, rows, unit)]
        timings = {"read_decode": round(t_read, 6), "inpaint": round(time.perf_counter() - t0, 6)}
        facts = {"sha256": decoded.sha256, "size": decoded.size, "width": decoded.width, "height": decoded.height,
                 "timings": timings}
        with self.factory() as s:
            self._insert_outputs(s, outputs)  # rolled back by finish_item if the lease was lost
            ok = repo.finish_item(s, row.id, self.owner, repo.LabelRows(detections=rows), facts=facts)
        if ok:
            stats.add(ItemStatus.DONE)
            self._notify(ItemStatus.DONE)
        else:
            stats.lost += 1

    def _edit_unit(self, row: _Row, decoded: DecodedImage, rows: list[dict[str, Any]],
                   unit: EditUnit) -> list[dict[str, Any]]:
        """Write the unit's missing variants (one batched call) and return its provenance rows."""
        p = self.params
        seeds = p.seeds()
        keys = [output_key(row.key, unit.instance, v, seeds[v], p.digest) for v in range(p.variants)]
        mask = unit_mask(rows, unit)
        todo = [v for v, k in enumerate(keys) if not self.dest.exists(k)]
        if todo:
            images = self.inpainter.edit(decoded.array, mask, p, [seeds[v] for v in todo])
            for v, img in zip(todo, images, strict=True):
                meta = {"source": f"{self.source.uri}::{row.key}", "instance": unit.instance, "variant": v,
                        "seed": seeds[v], "prompt": p.prompt, "model": self.model["key"],
                        "random_weights": self.model["random_weights"]}
                if not self.dest.put_new(keys[v], png_bytes(img, meta)):
                    logger.info("output %s appeared meanwhile; left as is", keys[v])
        record = mask_record_of(mask)
        return [{"job_id": self.job_id, "item_id": row.id, "instance": unit.instance, "variant": v,
                 "seed": seeds[v], "output_key": keys[v], "output_uri": self.dest.uri_for(keys[v]), "mask": record,
                 "detection_idx": list(unit.detection_idx), "prompt": p.prompt, "negative_prompt": p.negative_prompt,
                 "steps": p.steps, "guidance": p.guidance, "strength": p.strength, "model": self.model["key"],
                 "model_sha256": self.model.get("sha256"), "random_weights": self.model["random_weights"],
                 "params": {**p.to_json(), "model_origin": self.model.get("origin"),
                            "device": self.inpainter.device, "dtype": str(self.inpainter.dtype)}}
                for v in range(p.variants)]

    def _insert_outputs(self, s: Session, outputs: list[dict[str, Any]]) -> None:
        if not outputs:
            return
        dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(EditOutput).on_conflict_do_nothing(index_elements=["job_id", "output_key"])
        s.execute(stmt, outputs)



