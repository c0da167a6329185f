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
