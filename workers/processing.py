"""Process leased items: read -> decode -> pipeline -> write labels. Shared by local mode and Celery tasks.

Reading and decoding run in a thread pool ahead of the models, so I/O
overlaps compute. Every item ends in exactly one recorded outcome: done
(labels written in the same transaction), failed / skipped (with the reason),
back to pending (retryable error, attempt counted) or poison (too many attempts).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo
from labelfleet.db.models import Item, ItemStatus
from labelfleet.errors import ItemSkipped, LabelfleetError, PermanentError, RetryableError
from labelfleet.images import DecodedImage, decode_image
from labelfleet.masks import mask_record_area
from labelfleet.settings import Settings
from labelfleet.storage.base import Source
from workers.pipeline import ImageLabels, Pipeline

logger = logging.getLogger(__name__)


@dataclass
class ProcessStats:
    """Outcome counts of one call (by final or intermediate status)."""

    counts: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # leases lost to another worker; nothing was written

    def add(self, status: str) -> None:
        self.counts[status] = self.counts.get(status, 0) + 1

    @property
    def handled(self) -> int:
        return sum(self.counts.values()) + self.lost


@dataclass
class _Row:
    id: int
    key: str
    attempts: int


def labels_to_rows(labels: ImageLabels) -> repo.LabelRows:
    """Convert pipeline output to DB rows (pixel xyxy; box-cropped mask records, area from the RLE)."""
    d = labels.detections
    rows = []
    for i in range(len(d)):
        x0, y0, x1, y1 = (float(v) for v in d.xyxy[i])
        rle = d.mask[i] if d.mask is not None else None
        rows.append({
            "x0": x0, "y0": y0, "x1": x1, "y1": y1, "score": float(d.confidence[i]),
            "class_name": str(d.class_name[i]),
            "phrase": str(d.data["phrase"][i]) if "phrase" in d.data else None,
            "tag": d.data["tag"][i] if "tag" in d.data else None,
            "mask": rle, "area": mask_record_area(rle) if rle is not None else None,
        })
    return repo.LabelRows(tags=[(t.name, float(t.score)) for t in labels.tags], detections=rows)


class ItemProcessor:
    """Runs leased items of one job through a loaded :class:`Pipeline`."""

    def __init__(self, factory: sessionmaker[Session], pipeline: Pipeline, settings: Settings, owner: str,
                 source: Source, on_item: Callable[[str], None] | None = None) -> None:
        self.factory = factory
        self.pipeline = pipeline
        self.settings = settings
        self.owner = owner
        self.source = source
        self.on_item = on_item
        self.pool = ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="decode")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _load(self, key: str) -> tuple[DecodedImage, float]:
        t0 = time.perf_counter()
        data = self.source.read(key)
        decoded = decode_image(data, max_pixels=self.settings.max_image_pixels)
        return decoded, time.perf_counter() - t0

    def process(self, item_ids: Sequence[int]) -> ProcessStats:
        """Process items this processor has already leased (see ``repository.claim_items``)."""
        stats = ProcessStats()
        with self.factory() as s:
            rows = [_Row(i, k, a) for i, k, a in s.execute(
                select(Item.id, Item.key, Item.attempts).where(Item.id.in_(list(item_ids))).order_by(Item.id))]
        batch: list[tuple[_Row, DecodedImage, float]] = []
        for row, fut in self._read_ahead(rows):
            try:
                decoded, t_read = fut.result()
            except Exception as exc:
                self._record_error(row, exc, stats)
                continue
            batch.append((row, decoded, t_read))
            if len(batch) >= self.settings.batch_size:
                self._run_batch(batch, stats)
                batch = []
        if batch:
            self._run_batch(batch, stats)
        return stats

    def _read_ahead(self, rows: list[_Row]) -> Iterator[tuple[_Row, Future[tuple[DecodedImage, float]]]]:
        """Yield rows in order with their read+decode future, keeping at most 2 batches in flight.

        Bounded so a chunk of huge images never sits decoded in memory all at once.
        """
        window = max(2 * self.settings.batch_size, self.settings.decode_workers)
        pending: deque[tuple[_Row, Future[tuple[DecodedImage, float]]]] = deque()
        todo = iter(rows)
        for row in todo:
            pending.append((row, self.pool.submit(self._load, row.key)))
            if len(pending) >= window:
                break
        while pending:
            yield pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, self.pool.submit(self._load, nxt.key)))

    def _run_batch(self, batch: list[tuple[_Row, DecodedImage, float]], stats: ProcessStats) -> None:
        try:
            results = self.pipeline.run([d.array for _, d, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                self._record_error(batch[0][0], PermanentError(f"model error: {type(exc).__name__}: {exc}"), stats)
                logger.exception("item %s: pipeline failed", batch[0][0].id)
                return
            logger.warning("batch of %d failed (%s); retrying one image at a time", len(batch), exc)
            for one in batch:
                self._run_batch([one], stats)
            return
        for (row, decoded, t_read), labels in zip(batch, results, strict=True):
            try:
                self._write(row, decoded, t_read, labels, stats)
            except (OperationalError, InterfaceError):
                raise  # the database is down: the task retries, leases expire, nothing is lost
            except Exception as exc:
                self._record_error(row, exc, stats)

    def _write(self, row: _Row, decoded: DecodedImage, t_read: float, labels: ImageLabels,
               stats: ProcessStats) -> None:
        t0 = time.perf_counter()
        rows = labels_to_rows(labels)
        timings = {"read_decode": round(t_read, 6), **{k: round(v, 6) for k, v in labels.timings.items()}}
        facts: dict[str, Any] = {"sha256": decoded.sha256, "size": decoded.size, "width": decoded.width,
                                 "height": decoded.height, "timings": timings}
        with self.factory() as s:
            timings["write"] = round(time.perf_counter() - t0, 6)
            ok = repo.finish_item(s, row.id, self.owner, rows, facts=facts,
                                  overwrite_reviewed=self.settings.overwrite_reviewed)
        if ok:
            stats.add(ItemStatus.DONE)
            self._notify(ItemStatus.DONE)
        else:
            stats.lost += 1

    def _record_error(self, row: _Row, exc: BaseException, stats: ProcessStats) -> None:
        status, reason = classify_error(exc, row.attempts, self.settings.max_attempts)
        ctx = {"item_id": row.id, "key": row.key, "worker": self.owner, "status": str(status)}
        if not isinstance(exc, LabelfleetError):
            logger.error("item %s (%s): unexpected %s", row.id, row.key, reason, exc_info=exc, extra=ctx)
        else:
            logger.info("item %s (%s): %s: %s", row.id, row.key, status, reason, extra=ctx)
        with self.factory() as s:
            ok = repo.end_item(s, row.id, self.owner, status, reason)
        if ok:
            stats.add(status)
            self._notify(status)
        else:
            stats.lost += 1

    def _notify(self, status: str) -> None:
        if self.on_item is not None:
            self.on_item(status)


def classify_error(exc: BaseException, attempts: int, max_attempts: int) -> tuple[ItemStatus, str]:
    """Map an exception to ``(status, reason)`` for an item on its ``attempts``-th try."""
    if isinstance(exc, ItemSkipped):
        return ItemStatus.SKIPPED, exc.message
    if isinstance(exc, PermanentError):
        return ItemStatus.FAILED, exc.message
    if isinstance(exc, RetryableError):
        if attempts >= max_attempts:
            return ItemStatus.POISON, f"gave up after {attempts} attempts: {exc.message}"
        return ItemStatus.PENDING, f"will retry (attempt {attempts} of {max_attempts}): {exc.message}"
    return ItemStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}"
