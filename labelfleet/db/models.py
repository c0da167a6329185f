"""Tables: jobs -> items (one per image) -> tags and detections.

Boxes are absolute pixel xyxy in the upright image frame; masks are COCO RLE
dicts ``{"size": [H, W], "counts": str}`` (see :mod:`labelfleet.masks`).
Unique constraints make every write idempotent: a job name is unique, a key is
unique within its job, a tag name within its item and a detection index within
its item.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from labelfleet.db.base import Base

#: BIGINT primary keys on PostgreSQL, INTEGER (rowid alias, autoincrement) on SQLite.
BigId = BigInteger().with_variant(Integer, "sqlite")


class ItemStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    POISON = "poison"


FINAL_STATUSES = (ItemStatus.DONE, ItemStatus.FAILED, ItemStatus.SKIPPED, ItemStatus.POISON)


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


def _now_col(**kw: Any) -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False, **kw)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    models: Mapped[dict[str, Any]] = mapped_column(JSON)
    queue: Mapped[str | None] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING)
    listing_cursor: Mapped[str | None] = mapped_column(Text)
    listing_done: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = _now_col()
    updated_at: Mapped[datetime] = _now_col(onupdate=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # --- issue 11: what the latest listing found ({"at", "images", "added", "changed", "relabelled",
    # "skipped": {reason: n}, "unreadable": {reason: n}}); None before the first listing.
    listing_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # --- end issue 11

    items: Mapped[list[Item]] = relationship(back_populates="job", passive_deletes=True)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "key"),
        Index("ix_items_job_id_status", "job_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    etag: Mapped[str | None] = mapped_column(String(200))
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_col()
    updated_at: Mapped[datetime] = _now_col(onupdate=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # --- issue 10 (exactly-once enqueue): Celery task id of the message that last carried this item,
    # set in the same UPDATE as enqueued_at; the sweeper re-enqueues only if the broker no longer holds it.
    message_id: Mapped[str | None] = mapped_column(String(64))
    # --- end issue 10

    job: Mapped[Job] = relationship(back_populates="items")


class ItemTag(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("item_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)


class Detection(Base):
    """One machine prediction: immutable once written, owned by the labelling run that produced it."""

    __tablename__ = "detections"
    __table_args__ = (UniqueConstraint("item_id", "idx"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    x0: Mapped[float] = mapped_column(Float)
    y0: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    class_name: Mapped[str] = mapped_column(String(200))
    phrase: Mapped[str | None] = mapped_column(Text)
    tag: Mapped[str | None] = mapped_column(String(200))
    mask: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    area: Mapped[int | None] = mapped_column(Integer)
    #: The labelling run that wrote this prediction (issue #12); None only for rows written by old code.
    run_id: Mapped[int | None] = mapped_column(ForeignKey("label_runs.id", ondelete="SET NULL"), index=True)


# --- issue #12: labelling runs, review decisions, per-job class table ----------------------------------


class ReviewStatus(enum.StrEnum):
    """Status of a label in the job's current view (see :mod:`labelfleet.db.labels`)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EDITED = "edited"  # box or class changed by the reviewer (implies accepted)
    ADDED = "added"  # drawn by the reviewer, no prediction behind it
    DELETED = "deleted"  # removed by the reviewer (never shown, never exported)


class ReviewAction(enum.StrEnum):
    """What one review decision did to a label."""

    ACCEPT = "accept"
    REJECT = "reject"
    EDIT = "edit"
    ADD = "add"
    DELETE = "delete"


#: The view status a decision's action gives its label.
ACTION_STATUS = {ReviewAction.ACCEPT: ReviewStatus.ACCEPTED, ReviewAction.REJECT: ReviewStatus.REJECTED,
                 ReviewAction.EDIT: ReviewStatus.EDITED, ReviewAction.ADD: ReviewStatus.ADDED,
                 ReviewAction.DELETE: ReviewStatus.DELETED}


class LabelRun(Base):
    """One labelling pass over a job (the first ``label`` and every ``--relabel``), numbered 1, 2, ..."""

    __tablename__ = "label_runs"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    models: Mapped[dict[str, Any]] = mapped_column(JSON)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # classes and thresholds of the run
    created_at: Mapped[datetime] = _now_col()


class ReviewDecision(Base):
    """One human decision on one label; never updated (a later decision ``replaces`` it).

    ``prediction_id`` is the prediction decided on (None for a label the reviewer added);
    ``replaces_id`` the earlier decision on the same label this one supersedes. The box
    (absolute px xyxy, upright frame), class and mask are the label as the reviewer left it
    (for reject/delete: the region decided on). ``mask_stale``: the box was moved and no new
    mask could be computed, so ``mask`` is None instead of a stretched old mask.
    """

    __tablename__ = "review_decisions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("detections.id", ondelete="SET NULL"),
                                                      index=True)
    replaces_id: Mapped[int | None] = mapped_column(ForeignKey("review_decisions.id", ondelete="SET NULL"),
                                                    index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("label_runs.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    x0: Mapped[float] = mapped_column(Float)
    y0: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    class_name: Mapped[str] = mapped_column(String(200))
    score: Mapped[float | None] = mapped_column(Float)
    phrase: Mapped[str | None] = mapped_column(Text)
    tag: Mapped[str | None] = mapped_column(String(200))
    mask: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    area: Mapped[int | None] = mapped_column(Integer)
    mask_stale: Mapped[bool] = mapped_column(Boolean, default=False)


class JobClass(Base):
    """The job's class table: ``class_id`` is stable for the job's lifetime (exports never renumber)."""

    __tablename__ = "job_classes"
    __table_args__ = (UniqueConstraint("job_id", "class_id"), UniqueConstraint("job_id", "name"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    class_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))


# --- end issue #12 -------------------------------------------------------------------------------------


# --- issue 14: edit jobs (inpainting) -------------------------------------------------------------------
class EditReview(enum.StrEnum):
    """A reviewer's verdict on one edited variant (tags ``accept`` / ``reject`` in the FiftyOne App)."""

    KEPT = "kept"
    DISCARDED = "discarded"


class EditOutput(Base):
    """Provenance of one edited image written by an edit job (one row per output file).

    ``item_id`` is the edit job's item (the source image); ``mask`` the mask record
    (:mod:`labelfleet.masks`) that was inpainted, in the source image's upright frame;
    ``detection_idx`` the indices of the item's detections that formed it. ``output_key``
    is the deterministic name relative to the job's destination, ``output_uri`` the full URI.
    """

    __tablename__ = "edit_outputs"
    __table_args__ = (UniqueConstraint("job_id", "output_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    instance: Mapped[str] = mapped_column(String(64))
    variant: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    output_key: Mapped[str] = mapped_column(Text)
    output_uri: Mapped[str] = mapped_column(Text)
    mask: Mapped[dict[str, Any]] = mapped_column(JSON)
    detection_idx: Mapped[list[int]] = mapped_column(JSON)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str | None] = mapped_column(Text)
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    strength: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(200))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    random_weights: Mapped[bool] = mapped_column(Boolean)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = _now_col()
    #: ``labelfleet edit-review --sync``: None = unreviewed, else one of :class:`EditReview`.
    review_status: Mapped[str | None] = mapped_column(String(16))
    reviewed_by: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
