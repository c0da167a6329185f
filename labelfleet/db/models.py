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

    job: Mapped[Job] = relationship(back_populates="items")


class ItemTag(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("item_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)


class ReviewStatus(enum.StrEnum):
    """A reviewer's verdict on one detection (tags ``accept`` / ``reject`` in the FiftyOne App)."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    EDITED = "edited"  # box or class changed by the reviewer (implies accepted)


class Detection(Base):
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
    #: Human review (``labelfleet review --sync``): None = unreviewed, else one of :class:`ReviewStatus`.
    review_status: Mapped[str | None] = mapped_column(String(16))
    reviewed_by: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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
