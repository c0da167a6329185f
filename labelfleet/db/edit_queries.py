"""Queries of edit jobs (issue 14): which labels of a job an edit may use, and edit outputs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfleet.db.models import Detection, EditOutput, Item, ItemStatus, ReviewStatus

_COLUMNS = ("x0", "y0", "x1", "y1", "score", "class_name", "phrase", "tag", "mask", "area")


def usable_detections(session: Session, job_id: int, key: str) -> list[dict[str, Any]]:
    """The labels of job ``job_id``'s done item ``key`` that an edit may use, as column dicts by ``idx``.

    Reviewed labels (accepted or edited by a person) when the item has any, else its
    unreviewed machine labels; rejected labels never. THE single place that decides
    this: when review decisions move to their own tables, repoint this query only.
    """
    rows = session.execute(
        select(Detection.review_status, *[getattr(Detection, c) for c in _COLUMNS])
        .join(Item, Detection.item_id == Item.id)
        .where(Item.job_id == job_id, Item.key == key, Item.status == ItemStatus.DONE)
        .order_by(Detection.idx)).all()
    kept = [r for r in rows if r[0] != ReviewStatus.REJECTED]
    reviewed = [r for r in kept if r[0] in (ReviewStatus.ACCEPTED, ReviewStatus.EDITED)]
    return [dict(zip(_COLUMNS, r[1:], strict=True)) for r in (reviewed or kept)]


def edit_outputs(session: Session, job_id: int) -> list[EditOutput]:
    """Every output of an edit job, by item, instance and variant."""
    return list(session.scalars(select(EditOutput).where(EditOutput.job_id == job_id)
                                .order_by(EditOutput.item_id, EditOutput.instance, EditOutput.variant)))
