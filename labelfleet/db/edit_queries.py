"""Queries of edit jobs (issue 14): which labels of a job an edit may use, and edit outputs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfleet.db.labels import CONFIRMED, current_labels
from labelfleet.db.models import EditOutput, Item, ItemStatus
from labelfleet.masks import mask_record_area

_COLUMNS = ("x0", "y0", "x1", "y1", "score", "class_name", "phrase", "tag", "mask", "area")


def usable_detections(session: Session, job_id: int, key: str) -> list[dict[str, Any]]:
    """The labels of job ``job_id``'s done item ``key`` that an edit may use, in view order.

    Read from the job's current labels (:func:`labelfleet.db.labels.current_labels`): the
    labels a person confirmed (accepted, edited, added) when the item has any, else its
    unreviewed predictions; rejected and deleted labels never. Each dict has at least
    ``x0, y0, x1, y1`` (absolute px, upright frame), ``score``, ``class_name``, ``phrase``,
    ``tag``, ``mask`` (a mask record or None) and ``area``.
    """
    item_id = session.scalar(select(Item.id).where(Item.job_id == job_id, Item.key == key,
                                                   Item.status == ItemStatus.DONE))
    if item_id is None:
        return []
    labels = current_labels(session, [int(item_id)]).get(int(item_id), [])
    confirmed = [lab for lab in labels if lab["review_status"] in CONFIRMED]
    out = []
    for lab in confirmed or [lab for lab in labels if lab["review_status"] is None]:
        area = mask_record_area(lab["mask"]) if lab.get("mask") else None
        out.append({**{c: lab.get(c) for c in _COLUMNS if c != "area"}, "area": area})
    return out


def edit_outputs(session: Session, job_id: int) -> list[EditOutput]:
    """Every output of an edit job, by item, instance and variant."""
    return list(session.scalars(select(EditOutput).where(EditOutput.job_id == job_id)
                                .order_by(EditOutput.item_id, EditOutput.instance, EditOutput.variant)))
