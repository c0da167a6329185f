"""The job's current labels: human decisions plus the newest run's predictions no decision covers.

Machine output and human review are separate records (like Label Studio's predictions
vs annotations):

* :class:`~labelfleet.db.models.Detection` rows are **predictions**, immutable, each owned
  by a :class:`~labelfleet.db.models.LabelRun`;
* :class:`~labelfleet.db.models.ReviewDecision` rows are **decisions** (accept, reject, edit,
  add, delete), append-only: a later decision on the same label ``replaces`` the earlier one.

The view of one item (:func:`current_labels`):

1. every *current* decision (not replaced): accept / edit / add are shown, reject only with
   ``include_rejected``, delete never;
2. plus the predictions of the item's newest run that no decision (current or replaced)
   refers to, and that do not overlap (IoU >= ``overlap_iou``, **any class**) a region a
   human decided on in an earlier run: the decision's box and the box of the prediction it
   was made on. So a relabel never brings back a rejected, moved, re-classed, deleted or
   accepted object.

Each label is a dict: ``key`` (``"p<prediction id>"`` / ``"d<decision id>"`` for added labels),
``prediction_id``, ``decision_id``, ``run_id``, ``x0, y0, x1, y1`` (float, absolute px xyxy,
upright frame), ``class_name``, ``score`` (None for added labels), ``phrase``, ``tag``,
``mask`` (a mask record, see :mod:`labelfleet.masks`, or None), ``mask_stale``,
``review_status`` (None = unreviewed, else a :class:`~labelfleet.db.models.ReviewStatus`),
``reviewed_by``, ``reviewed_at``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfleet.db.models import ACTION_STATUS, Detection, Item, JobClass, ReviewAction, ReviewDecision

#: A new prediction overlapping a region a human decided on this much (any class) is hidden.
DECISION_IOU = 0.5
#: Statuses that mean a person confirmed the label (``export --reviewed-only``).
CONFIRMED = ("accepted", "edited", "added")

_PRED_COLS = ("id", "item_id", "run_id", "idx", "x0", "y0", "x1", "y1", "score", "class_name", "phrase", "tag",
              "mask")
_LABEL_COLS = ("x0", "y0", "x1", "y1", "class_name", "score", "phrase", "tag", "mask")


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two absolute px xyxy boxes (0 when both are empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _xyxy(r: Any) -> tuple[float, float, float, float]:
    return float(r["x0"]), float(r["y0"]), float(r["x1"]), float(r["y1"])


def _chunks(ids: Sequence[int], n: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(ids), n):
        yield list(ids[start:start + n])


def predictions(session: Session, item_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """All predictions per item id (every run), ordered by ``idx``."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    cols = [getattr(Detection, c) for c in _PRED_COLS]
    for chunk in _chunks(item_ids):
        for r in session.execute(select(*cols).where(Detection.item_id.in_(chunk))
                                 .order_by(Detection.item_id, Detection.idx)):
            out[r[1]].append(dict(zip(_PRED_COLS, r, strict=True)))
    return out


def decisions(session: Session, item_ids: Sequence[int]) -> dict[int, list[ReviewDecision]]:
    """All decisions per item id, oldest first."""
    out: dict[int, list[ReviewDecision]] = defaultdict(list)
    for chunk in _chunks(item_ids):
        for d in session.scalars(select(ReviewDecision).where(ReviewDecision.item_id.in_(chunk))
                                 .order_by(ReviewDecision.id)):
            out[d.item_id].append(d)
    return out


def current_decisions(decs: Sequence[ReviewDecision]) -> list[ReviewDecision]:
    """The decisions no later decision replaces."""
    replaced = {d.replaces_id for d in decs if d.replaces_id is not None}
    return [d for d in decs if d.id not in replaced]


def decision_label(d: ReviewDecision, prediction: dict[str, Any] | None) -> dict[str, Any]:
    """The view's label dict of one current decision."""
    run = d.run_id if prediction is None else prediction["run_id"]
    return {"key": f"p{d.prediction_id}" if d.prediction_id is not None else f"d{d.id}",
            "prediction_id": d.prediction_id, "decision_id": d.id, "run_id": run,
            **{c: getattr(d, c) for c in _LABEL_COLS}, "mask_stale": bool(d.mask_stale),
            "review_status": str(ACTION_STATUS[ReviewAction(d.action)]), "reviewed_by": d.reviewer,
            "reviewed_at": d.decided_at}


def prediction_label(p: dict[str, Any]) -> dict[str, Any]:
    """The view's label dict of one unreviewed prediction."""
    return {"key": f"p{p['id']}", "prediction_id": p["id"], "decision_id": None, "run_id": p["run_id"],
            **{c: p[c] for c in _LABEL_COLS}, "mask_stale": False, "review_status": None,
            "reviewed_by": None, "reviewed_at": None}


def _regions(decs: Sequence[ReviewDecision], preds: dict[int, dict[str, Any]]) -> list[tuple[tuple, int]]:
    """``(xyxy, run id)`` of every region a human decided on (decision boxes and their predictions' boxes)."""
    out: list[tuple[tuple, int]] = []
    for d in decs:
        p = preds.get(d.prediction_id) if d.prediction_id is not None else None
        run = (p["run_id"] if p is not None else d.run_id) or 0
        out.append(((d.x0, d.y0, d.x1, d.y1), run))
        if p is not None:
            out.append((_xyxy(p), run))
    return out


def item_labels(preds: Sequence[dict[str, Any]], decs: Sequence[ReviewDecision], *,
                overlap_iou: float | None = DECISION_IOU) -> list[dict[str, Any]]:
    """The view of one item (every status, deleted ones included; see the module docs)."""
    by_id = {p["id"]: p for p in preds}
    decided = {d.prediction_id for d in decs if d.prediction_id is not None}
    latest = max(((p["run_id"] or 0) for p in preds), default=0)
    regions = _regions(decs, by_id) if overlap_iou is not None else []
    out = [decision_label(d, by_id.get(d.prediction_id) if d.prediction_id is not None else None)
           for d in current_decisions(decs)]
    for p in preds:
        run = p["run_id"] or 0
        if run != latest or p["id"] in decided:
            continue
        if overlap_iou is not None and any(r < run and box_iou(box, _xyxy(p)) >= overlap_iou
                                           for box, r in regions):
            continue
        out.append(prediction_label(p))
    return out


def current_labels(session: Session, item_ids: Sequence[int], *, include_rejected: bool = False,
                   include_deleted: bool = False, reviewed_only: bool = False, min_score: float | None = None,
                   overlap_iou: float | None = DECISION_IOU) -> dict[int, list[dict[str, Any]]]:
    """The current labels per item id (see the module docs), filtered.

    ``min_score`` drops unreviewed predictions scoring below it (labels a person
    confirmed stay); ``reviewed_only`` keeps only confirmed labels (accepted, edited,
    added); ``overlap_iou=None`` shows new predictions even where a human decided.
    """
    preds, decs = predictions(session, item_ids), decisions(session, item_ids)
    out: dict[int, list[dict[str, Any]]] = {}
    for item_id in item_ids:
        keep = []
        for lab in item_labels(preds.get(item_id, []), decs.get(item_id, []), overlap_iou=overlap_iou):
            status = lab["review_status"]
            if (status == "deleted" and not include_deleted) or (status == "rejected" and not include_rejected):
                continue
            if reviewed_only and status not in CONFIRMED:
                continue
            if min_score is not None and status is None and float(lab["score"]) < min_score:
                continue
            keep.append(lab)
        out[item_id] = keep
    return out


def class_table(session: Session, job_id: int, config: dict[str, Any]) -> list[str]:
    """The job's class names, index = stable class id; new names are appended and persisted.

    Fixed classes (``config["classes"]`` then ``extra_classes``) come first in the user's
    order; then every other name in the job's predictions and decisions, sorted, the first
    time it is seen. Ids never change once written. Flushes (the caller commits).
    """
    known = list(session.scalars(select(JobClass.name).where(JobClass.job_id == job_id)
                                 .order_by(JobClass.class_id)))
    fixed = [*(config.get("classes") or []), *(config.get("extra_classes") or [])]
    items = select(Item.id).where(Item.job_id == job_id)
    seen = set(session.scalars(select(Detection.class_name).where(Detection.item_id.in_(items)).distinct()))
    seen |= set(session.scalars(select(ReviewDecision.class_name).where(ReviewDecision.item_id.in_(items))
                                .distinct()))
    new = [c for c in dict.fromkeys(fixed) if c not in known]
    new += sorted(seen - set(known) - set(new))
    for i, name in enumerate(new, start=len(known)):
        session.add(JobClass(job_id=job_id, class_id=i, name=name))
    if new:
        session.flush()
    return known + new
