"""Reviewer corrections from the FiftyOne dataset back into the database, and keeping them on re-label.

Review protocol (what the App's tagging menu writes):

* label tag ``reject`` -> ``review_status = "rejected"``; label tag ``accept`` -> ``"accepted"``;
* sample tag ``accept`` / ``reject`` applies to every label of the sample without its own tag;
* a changed box (more than :data:`EDIT_TOLERANCE_PX` on any edge) or class -> ``"edited"``
  and the new box/class/mask are written (``reject`` still wins);
* labels with no tag and no change are **not touched** (no reviewer, no timestamp).

Every written row gets ``reviewed_by`` and ``reviewed_at``. Re-running a sync writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from labelfleet.db.models import Detection, Item, ReviewStatus
from labelfleet.db.repository import DUPLICATE_IOU, keep_reviewed  # noqa: F401  (re-exported)
from orchestrator.review import ACCEPT_TAG, REJECT_TAG
from orchestrator.review.convert import LF_ID, from_fo_detection

logger = logging.getLogger(__name__)

#: A box edge moved by more than this many pixels counts as an edit.
EDIT_TOLERANCE_PX = 0.5


@dataclass
class SyncReport:
    """What :func:`sync_back` wrote."""

    accepted: int = 0
    rejected: int = 0
    edited: int = 0
    unknown: int = 0  # labels added in the App (no lf_id) or whose DB row is gone: not written

    @property
    def written(self) -> int:
        return self.accepted + self.rejected + self.edited


def verdict(label_tags: Sequence[str], sample_tags: Sequence[str], edited: bool) -> str | None:
    """The review status of one label: reject > edited > accept; None = unreviewed."""
    tags = set(label_tags) if {ACCEPT_TAG, REJECT_TAG} & set(label_tags) else set(sample_tags)
    if REJECT_TAG in tags:
        return ReviewStatus.REJECTED
    if edited:
        return ReviewStatus.EDITED
    if ACCEPT_TAG in tags:
        return ReviewStatus.ACCEPTED
    return None


def _changes(row: Detection, new: dict[str, Any]) -> dict[str, Any]:
    """Columns the reviewer changed (box edges beyond the tolerance, class), with the new mask."""
    edges = ("x0", "y0", "x1", "y1")
    moved = any(abs(float(getattr(row, k)) - float(new[k])) > EDIT_TOLERANCE_PX for k in edges)
    out: dict[str, Any] = {}
    if moved:
        out.update({k: new[k] for k in ("x0", "y0", "x1", "y1")})
        if new.get("mask") is not None:
            out.update(mask=new["mask"], area=new["area"])
    if new["class_name"] and new["class_name"] != row.class_name:
        out["class_name"] = new["class_name"]
    return out


def review_updates(rows: dict[int, Detection], samples: list[tuple[tuple[int, int], Any, list[str]]],
                   reviewer: str, now: datetime, report: SyncReport) -> list[dict[str, Any]]:
    """Row updates (``id`` + changed columns) from ``(frame_size, fo.Detections, sample_tags)`` triples."""
    updates = []
    for size, dets, sample_tags in samples:
        for det in (dets.detections if dets is not None else []):
            new = from_fo_detection(det, size)
            row = rows.get(new["lf_id"]) if new["lf_id"] is not None else None
            if row is None:
                report.unknown += 1
                continue
            changes = _changes(row, new)
            status = verdict(det.tags or [], sample_tags, bool(changes))
            if status is None or (status == row.review_status and not changes):
                continue
            setattr(report, status, getattr(report, status) + 1)
            updates.append({"id": row.id, "review_status": str(status), "reviewed_by": reviewer,
                            "reviewed_at": now, **changes})
    return updates


def sync_back(session: Session, job_id: int, dataset: Any, *, reviewer: str,
              now: datetime | None = None) -> SyncReport:
    """Write the reviewer's tags and edits in ``dataset`` to the job's detections (one batched UPDATE).

    Commits. ``dataset`` is the job's ``fo.Dataset`` (see :mod:`orchestrator.review.dataset`).
    """
    report = SyncReport()
    item_ids, dets, tags, widths, heights = dataset.values(
        ["lf_item_id", "detections", "tags", "metadata.width", "metadata.height"])
    lf_ids = [d[LF_ID] for ds in dets if ds is not None for d in ds.detections if d.has_field(LF_ID)]
    rows: dict[int, Detection] = {}
    for start in range(0, len(lf_ids), 500):
        rows.update({r.id: r for r in session.scalars(
            select(Detection).join(Item, Detection.item_id == Item.id)
            .where(Item.job_id == job_id, Detection.id.in_(lf_ids[start:start + 500])))})
    samples = [((int(w), int(h)), d, list(t or [])) for _i, d, t, w, h in
               zip(item_ids, dets, tags, widths, heights, strict=True)]
    updates = review_updates(rows, samples, reviewer, now or datetime.now(UTC), report)
    if updates:
        session.execute(update(Detection), updates)
    session.commit()
    logger.info("review sync: %d accepted, %d rejected, %d edited, %d unknown labels skipped",
                report.accepted, report.rejected, report.edited, report.unknown)
    return report


