"""Reviewer actions in the FiftyOne dataset -> new review decisions in the database.

The sync is a pure function of (dataset state, stored decisions): it compares every label
in the App with what the database's current view holds for it and appends a
:class:`~labelfleet.db.models.ReviewDecision` only where the reviewer changed something.
Running it again, or starting/stopping ``review`` again, writes nothing. Protocol:

* label tag ``reject`` -> reject; label tag ``accept`` -> accept;
* sample tag ``accept`` / ``reject`` -> the same for every label of the sample without its
  own tag, but only for predictions of the run the sample showed when it was tagged
  (``lf_tag_run`` / ``lf_run``), never for labels of a later run or labels a person drew;
* a changed box (more than :data:`EDIT_TOLERANCE_PX` on any edge) or class -> edit
  (``reject`` still wins). A moved box gets a new mask from ``segmenter`` (SAM prompted with
  the box) when one is given; otherwise its mask is dropped and marked stale, never stretched;
* a label drawn in the App (no ``lf_id`` / ``lf_decision``) -> add (its decision id is
  written back onto the label so the next sync recognises it);
* a label shown (``lf_shown``) but no longer in the sample -> delete;
* labels with no tag and no change are **not touched** (no reviewer, no timestamp).

Decisions are never updated: a new decision on the same label ``replaces`` the current one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelfleet.db.labels import current_decisions, decisions, predictions
from labelfleet.db.models import Item, ReviewAction, ReviewDecision, ReviewStatus
from orchestrator.review import ACCEPT_TAG, REJECT_TAG
from orchestrator.review.convert import LF_DECISION, LF_REVIEW, REVIEW_STATUS, from_fo_detection

logger = logging.getLogger(__name__)

#: A box edge moved by more than this many pixels counts as an edit.
EDIT_TOLERANCE_PX = 0.5
#: ``segmenter(image_path, xyxy, (width, height))`` -> a mask record for the box, or None.
Segmenter = Callable[[str, tuple[float, float, float, float], tuple[int, int]], dict[str, Any] | None]
_GEOMETRY = ("x0", "y0", "x1", "y1", "class_name")
_COUNT = {ReviewAction.ACCEPT: "accepted", ReviewAction.REJECT: "rejected", ReviewAction.EDIT: "edited",
          ReviewAction.ADD: "added", ReviewAction.DELETE: "deleted"}


@dataclass
class SyncReport:
    """What :func:`sync_back` wrote (one decision each)."""

    accepted: int = 0
    rejected: int = 0
    edited: int = 0
    added: int = 0
    deleted: int = 0
    resegmented: int = 0  # edited/added boxes that got a new SAM mask
    stale: int = 0  # edited/added boxes whose mask was dropped (no segmenter)
    unknown: int = 0  # labels whose prediction or decision is gone from the database: not written

    @property
    def written(self) -> int:
        return self.accepted + self.rejected + self.edited + self.added + self.deleted


@dataclass
class _Item:
    """What the database holds for one item: predictions by id, current decisions by label."""

    preds: dict[int, dict[str, Any]]
    by_pred: dict[int, ReviewDecision]  # prediction id -> its current decision
    forward: dict[int, ReviewDecision]  # any decision id -> the current decision of its label


def _item_state(preds: list[dict[str, Any]], decs: list[ReviewDecision]) -> _Item:
    by_id = {d.id: d for d in decs}
    forward: dict[int, ReviewDecision] = {}
    by_pred: dict[int, ReviewDecision] = {}
    for cur in current_decisions(decs):
        d: ReviewDecision | None = cur
        while d is not None and d.id not in forward:
            forward[d.id] = cur
            d = by_id.get(d.replaces_id) if d.replaces_id is not None else None
        if cur.prediction_id is not None:
            by_pred[cur.prediction_id] = cur
    return _Item({p["id"]: p for p in preds}, by_pred, forward)


def _as_dict(d: ReviewDecision) -> dict[str, Any]:
    return {c: getattr(d, c) for c in (*_GEOMETRY, "score", "phrase", "tag", "mask", "area", "mask_stale")}


def _want(det: Any, new: dict[str, Any], base: dict[str, Any] | None, sample_tags: set[str],
          is_prediction: bool) -> tuple[ReviewAction | None, bool]:
    """``(action the App state asks for, geometry changed)`` for one label against its base."""
    if base is None:
        return (None if REJECT_TAG in set(det.tags or []) else ReviewAction.ADD), True
    moved = any(abs(float(base[k]) - float(new[k])) > EDIT_TOLERANCE_PX for k in ("x0", "y0", "x1", "y1"))
    changed = moved or (bool(new["class_name"]) and new["class_name"] != base["class_name"])
    own = {ACCEPT_TAG, REJECT_TAG} & set(det.tags or [])
    tags = own or sample_tags
    if REJECT_TAG in tags:
        return ReviewAction.REJECT, changed
    if changed:
        return (ReviewAction.EDIT if is_prediction else ReviewAction.ADD), True
    return (ReviewAction.ACCEPT if ACCEPT_TAG in tags else None), False


def _redundant(want: ReviewAction, changed: bool, cur: ReviewDecision | None) -> bool:
    """True when the current decision already says what ``want`` would say."""
    if cur is None:
        return False
    if want == ReviewAction.ACCEPT:
        return cur.action in (ReviewAction.ACCEPT, ReviewAction.EDIT, ReviewAction.ADD)
    return cur.action == want and not changed


@dataclass
class _Ctx:
    reviewer: str
    now: datetime
    segmenter: Segmenter | None
    report: SyncReport


def _decision(ctx: _Ctx, item_id: int, want: ReviewAction, new: dict[str, Any] | None, base: dict[str, Any],
              *, moved: bool, pred: dict[str, Any] | None, cur: ReviewDecision | None, run: int | None,
              image: str, size: tuple[int, int]) -> ReviewDecision:
    """A new decision row: geometry from the App for edit/add, else the label as it stands."""
    geo = {k: (new or base)[k] for k in _GEOMETRY} if want in (ReviewAction.EDIT, ReviewAction.ADD) else \
        {k: base[k] for k in _GEOMETRY}
    mask, area, stale = base.get("mask"), base.get("area"), bool(base.get("mask_stale"))
    if want in (ReviewAction.EDIT, ReviewAction.ADD) and moved:
        box = (float(geo["x0"]), float(geo["y0"]), float(geo["x1"]), float(geo["y1"]))
        mask = ctx.segmenter(image, box, size) if ctx.segmenter is not None else None
        area, stale = (None, True) if mask is None else (_area(mask), False)
        ctx.report.stale += int(stale)
        ctx.report.resegmented += int(not stale)
    name = _COUNT[want]
    setattr(ctx.report, name, getattr(ctx.report, name) + 1)
    return ReviewDecision(item_id=item_id, prediction_id=pred["id"] if pred is not None else None,
                          replaces_id=cur.id if cur is not None else None, run_id=run, action=str(want),
                          reviewer=ctx.reviewer, decided_at=ctx.now, **geo, score=base.get("score"),
                          phrase=base.get("phrase"), tag=base.get("tag"), mask=mask, area=area, mask_stale=stale)


def _area(rec: dict[str, Any]) -> int:
    from labelfleet.masks import mask_record_area

    return mask_record_area(rec)


def _sample_decisions(ctx: _Ctx, sample: Any, st: _Item) -> list[tuple[ReviewDecision, Any]]:
    """New decisions of one sample, each with the App label it came from (None for deletions)."""
    size = (int(sample.metadata.width), int(sample.metadata.height))
    run_shown = sample.get_field("lf_run") if sample.has_field("lf_run") else None
    tag_run = (sample.get_field("lf_tag_run") if sample.has_field("lf_tag_run") else None) or run_shown
    verdicts = {ACCEPT_TAG, REJECT_TAG} & set(sample.tags or [])
    out: list[tuple[ReviewDecision, Any]] = []
    present: set[str] = set()
    dets = sample.detections.detections if sample.detections is not None else []
    for det in dets:
        new = from_fo_detection(det, size)
        pid, did = new["lf_id"], new["lf_decision"]
        pred = st.preds.get(pid) if pid is not None else None
        cur = st.by_pred.get(pid) if pid is not None else st.forward.get(did) if did is not None else None
        if (pid is not None and pred is None) or (pid is None and did is not None and cur is None):
            ctx.report.unknown += 1
            continue
        present.add(f"p{pid}" if pid is not None else f"d{did}" if did is not None else "")
        base = _as_dict(cur) if cur is not None else pred
        applies = pred is not None and tag_run is not None and (pred["run_id"] or 0) <= tag_run
        want, changed = _want(det, new, base, verdicts if applies else set(), pred is not None)
        if want is None or _redundant(want, changed, cur):
            continue
        moved = base is None or any(abs(float(base[k]) - float(new[k])) > EDIT_TOLERANCE_PX
                                    for k in ("x0", "y0", "x1", "y1"))
        run = pred["run_id"] if pred is not None else (cur.run_id if cur is not None else run_shown)
        out.append((_decision(ctx, sample.lf_item_id, want, new, base or {**new, "score": None}, moved=moved,
                              pred=pred, cur=cur, run=run, image=sample.filepath, size=size),
                    det if pid is None and did is None else None))
    shown = sample.get_field("lf_shown") if sample.has_field("lf_shown") else None
    for key in sorted(set(shown or []) - present):
        out.extend(_deletion(ctx, sample.lf_item_id, key, st, size))
    return out


def _deletion(ctx: _Ctx, item_id: int, key: str, st: _Item, size: tuple[int, int]) -> list[tuple[Any, Any]]:
    """A delete decision for a label the App no longer has (none if it is already deleted or gone)."""
    num = int(key[1:])
    pred = st.preds.get(num) if key[0] == "p" else None
    cur = st.by_pred.get(num) if key[0] == "p" else st.forward.get(num)
    if (cur is None and pred is None) or (cur is not None and cur.action == ReviewAction.DELETE):
        return []
    base = _as_dict(cur) if cur is not None else pred
    assert base is not None
    run = pred["run_id"] if pred is not None else (cur.run_id if cur is not None else None)
    return [(_decision(ctx, item_id, ReviewAction.DELETE, None, base, moved=False, pred=pred, cur=cur, run=run,
                       image="", size=size), None)]


def sync_back(session: Session, job_id: int, dataset: Any, *, reviewer: str, now: datetime | None = None,
              segmenter: Segmenter | None = None) -> SyncReport:
    """Append the reviewer's new decisions in ``dataset`` to the job's review decisions. Commits.

    ``dataset`` is the job's ``fo.Dataset`` (see :mod:`orchestrator.review.dataset`); only
    labels of the job's own items are considered. Labels drawn in the App get their new
    decision id written back onto the FiftyOne label (the dataset, not the database).
    """
    ctx = _Ctx(reviewer, now or datetime.now(UTC), segmenter, SyncReport())
    ids = [int(i) for i in dataset.values("lf_item_id")]
    mine = set()
    for start in range(0, len(ids), 500):
        mine |= set(session.scalars(select(Item.id).where(Item.job_id == job_id,
                                                          Item.id.in_(ids[start:start + 500]))))
    preds, decs = predictions(session, sorted(mine)), decisions(session, sorted(mine))
    written: list[tuple[Any, list[tuple[ReviewDecision, Any]]]] = []
    for sample in dataset:
        if sample.lf_item_id not in mine:
            continue
        st = _item_state(preds.get(sample.lf_item_id, []), decs.get(sample.lf_item_id, []))
        new = _sample_decisions(ctx, sample, st)
        if new:
            written.append((sample, new))
    rows = [d for _s, new in written for d, _det in new]
    session.add_all(rows)
    session.commit()
    for sample, new in written:
        _write_back(sample, new)
    r = ctx.report
    logger.info("review sync: %d accepted, %d rejected, %d edited, %d added, %d deleted "
                "(%d new masks, %d stale), %d unknown labels skipped",
                r.accepted, r.rejected, r.edited, r.added, r.deleted, r.resegmented, r.stale, r.unknown)
    return r


def _write_back(sample: Any, new: list[tuple[ReviewDecision, Any]]) -> None:
    """Put the ids of decisions for labels drawn in the App onto those labels (and ``lf_shown``)."""
    added = [(d, det) for d, det in new if det is not None]
    if not added:
        return
    shown = list(sample.get_field("lf_shown") or []) if sample.has_field("lf_shown") else []
    for d, det in added:
        det[LF_DECISION] = int(d.id)
        det[LF_REVIEW] = det[REVIEW_STATUS] = str(ReviewStatus.ADDED)
        shown.append(f"d{d.id}")
    sample["lf_shown"] = shown
    sample.save()
