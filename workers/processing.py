"""Process leased items: read -> decode -> pipeline -> write labels. Shared by local mode and Celery tasks.

Reading and decoding run in a thread pool ahead of the models; with
``overlap_stages`` (the default) a batch's masks (:meth:`Pipeline.run_back`)
are computed in a second thread while the next batch is tagged and detected
(:meth:`Pipeline.run_front`); a writer thread stores each batch (one
transaction, one bulk insert of its tags and predictions) while the next one
is in the models. So I/O and the stages overlap, and at most three batches are
in flight: detecting, segmenting, writing.
Every item ends in exactly one recorded outcome: done (labels written in the
same transaction), failed / skipped (with the reason), back to pending
(retryable error, attempt counted) or poison (too many attempts).

Errors are classified (see :func:`infrastructure_error`): item errors (a bad
image, a vanished object) are recorded on the item; infrastructure errors
(database outage, device fault) are raised as
:class:`~labelfleet.errors.InfrastructureError` without touching the item, so
the caller can give the items back uncharged. Out-of-memory retries the batch
in halves first. Celery's soft time limit is never swallowed.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from labelfleet.db import repository as repo
from labelfleet.db.models import Item, ItemStatus
from labelfleet.errors import (
    DatabaseUnavailable,
    InfrastructureError,
    ItemSkipped,
    LabelfleetError,
    PermanentError,
    RetryableError,
    WorkerUnhealthy,
)
from labelfleet.images import DecodedImage, decode_image
from labelfleet.masks import mask_record_area
from labelfleet.settings import Settings
from labelfleet.storage.base import Source
from workers.pipeline import ImageLabels, Pipeline

logger = logging.getLogger(__name__)


def _time_limit_errors() -> tuple[type[BaseException], ...]:
    try:  # Celery's SoftTimeLimitExceeded is billiard's (absent in a local-only install)
        from billiard.exceptions import SoftTimeLimitExceeded
    except ImportError:  # pragma: no cover
        return ()
    return (SoftTimeLimitExceeded,)


#: Exceptions that interrupt the work (never recorded as an item error): the soft time limit.
TIME_LIMIT_ERRORS = _time_limit_errors()
#: Text of device/driver faults after which this process's accelerator cannot be trusted.
_DEVICE_FAULTS = ("cuda error", "cublas_status", "cudnn_status", "cudnn error", "device-side assert",
                  "illegal memory access", "nccl error", "cuda driver", "no cuda gpus are available",
                  "cuda-capable device", "hip error", "ecc error")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for device (``torch.OutOfMemoryError``, "CUDA out of memory") and host out-of-memory errors."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def is_device_fault(exc: BaseException) -> bool:
    """True for CUDA/driver faults (``torch.AcceleratorError``, "CUDA error: ...") other than out-of-memory."""
    if is_out_of_memory(exc):
        return False
    if type(exc).__name__ == "AcceleratorError":
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _DEVICE_FAULTS)


def infrastructure_error(exc: BaseException) -> InfrastructureError | None:
    """``exc`` as an :class:`InfrastructureError` when the environment failed, not the item; else ``None``.

    Database errors -> :class:`DatabaseUnavailable`; device faults -> :class:`WorkerUnhealthy`.
    """
    if isinstance(exc, InfrastructureError):
        return exc
    if isinstance(exc, DBAPIError) and (isinstance(exc, OperationalError | InterfaceError)
                                        or exc.connection_invalidated):
        orig = exc.orig or exc
        first = (str(orig).strip().splitlines() or [""])[0]
        return DatabaseUnavailable(f"database unavailable: {type(orig).__name__}: {first[:300]}")
    if is_device_fault(exc):
        return WorkerUnhealthy(f"device fault: {type(exc).__name__}: {str(exc).strip()[:300]}")
    return None


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


#: A batch in the models: ``(row, decoded image, read+decode seconds)`` per item.
_Batch = list[tuple[_Row, DecodedImage, float]]


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
        self.batch_size = settings.batch_size  # halved for good after an out-of-memory error
        self.in_progress: list[int] = []  # ids of the batches in the models right now (charged on a time limit)
        self._read_facts: dict[str, dict[str, Any]] = {}  # key -> facts of the bytes actually read (etag)
        self.pool = ThreadPoolExecutor(max_workers=settings.decode_workers, thread_name_prefix="decode")
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self._writing: Future[None] | None = None  # the batch being written while the next one is computed
        self.overlap = settings.overlap_stages
        self.segmenting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment")
        self._back: tuple[_Batch, Future[list[ImageLabels]]] | None = None  # the batch in run_back

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.segmenting.shutdown(wait=True)
        self.writer.shutdown(wait=True)

    def _load(self, key: str) -> tuple[DecodedImage, float]:
        t0 = time.perf_counter()
        versioned = getattr(self.source, "read_versioned", None)  # S3: the bytes and the ETag they came with
        if versioned is not None:
            data, etag = versioned(key)
            self._read_facts[key] = {"etag": etag}
        else:
            data = self.source.read(key)
        decoded = decode_image(data, max_pixels=self.settings.max_image_pixels)
        return decoded, time.perf_counter() - t0

    def process(self, item_ids: Sequence[int]) -> ProcessStats:
        """Process items this processor has already leased (see ``repository.claim_items``)."""
        stats = ProcessStats()
        try:
            with self.factory() as s:
                rows = [_Row(i, k, a) for i, k, a in s.execute(
                    select(Item.id, Item.key, Item.attempts).where(Item.id.in_(list(item_ids))).order_by(Item.id))]
        except (OperationalError, InterfaceError) as exc:
            raise _as_infra(exc) from exc
        batch: _Batch = []
        try:
            for row, fut in self._read_ahead(rows):
                try:
                    decoded, t_read = fut.result()
                except TIME_LIMIT_ERRORS:
                    raise
                except Exception as exc:
                    self._record_error(row, exc, stats)
                    continue
                batch.append((row, decoded, t_read))
                if len(batch) >= self.batch_size:
                    self._run_batch(batch, stats)
                    batch = []
            if batch:
                self._run_batch(batch, stats)
            self._finish_back(stats)
        finally:
            self._drop_back()  # after an error: the models are idle again before we return (results dropped)
            self._wait_written()  # every result is in the database (or its error raised) before we return
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

    def _run_batch(self, batch: _Batch, stats: ProcessStats) -> None:
        """Detect ``batch`` here, then segment it in the ``segmenting`` thread while the next batch is detected.

        Any failure of either half falls back to :meth:`_run_sync` for that batch
        (same classification: out-of-memory halving, one image at a time), once
        the other half is idle; infrastructure errors are raised as they are.
        """
        if not self.overlap:
            self._run_sync(batch, stats)
            return
        ids = [row.id for row, _, _ in batch]
        self.in_progress = [row.id for row, _, _ in self._back[0]] + ids if self._back else ids
        try:
            front = self.pipeline.run_front([d.array for _, d, _ in batch])
        except TIME_LIMIT_ERRORS:
            raise
        except Exception as exc:
            if (infra := infrastructure_error(exc)) is not None:
                raise infra from exc
            self._finish_back(stats)
            self._run_sync(batch, stats)
            return
        self._finish_back(stats)
        self._back = (batch, self.segmenting.submit(self.pipeline.run_back, front))
        self.in_progress = ids

    def _finish_back(self, stats: ProcessStats) -> None:
        """Wait for the batch being segmented and store it (or run it again in this thread if that failed)."""
        if self._back is None:
            return
        (batch, fut), self._back = self._back, None
        self.in_progress = [row.id for row, _, _ in batch]  # the next batch only waits: not charged on a time limit
        try:
            results = fut.result()
        except TIME_LIMIT_ERRORS:
            raise
        except Exception as exc:
            if (infra := infrastructure_error(exc)) is not None:
                raise infra from exc
            logger.warning("segmenting a batch of %d failed (%s); running it again in one thread", len(batch), exc)
            self._run_sync(batch, stats)
            return
        self._store(batch, results, stats)
        self.in_progress = []

    def _drop_back(self) -> None:
        """Wait for a batch still being segmented without storing it (an error is on its way up)."""
        back, self._back = self._back, None
        if back is not None:
            futures.wait([back[1]])

    def _run_sync(self, batch: _Batch, stats: ProcessStats) -> None:
        """The whole pipeline on ``batch`` in this thread, with every failure classified."""
        self.in_progress = [row.id for row, _, _ in batch]
        try:
            results = self.pipeline.run([d.array for _, d, _ in batch])
        except TIME_LIMIT_ERRORS:
            raise
        except Exception as exc:
            infra = infrastructure_error(exc)
            if infra is not None:
                raise infra from exc
            if is_out_of_memory(exc):
                self._retry_smaller(batch, exc, stats)
                return
            if len(batch) == 1:
                self._record_error(batch[0][0], PermanentError(f"model error: {type(exc).__name__}: {exc}"), stats)
                logger.exception("item %s: pipeline failed", batch[0][0].id)
                return
            logger.warning("batch of %d failed (%s); retrying one image at a time", len(batch), exc)
            for one in batch:
                self._run_sync([one], stats)
            return
        self._store(batch, results, stats)
        self.in_progress = []

    def _store(self, batch: _Batch, results: list[ImageLabels],
               stats: ProcessStats) -> None:
        """Hand a labelled batch to the writer thread (after the previous batch is written)."""
        done = [(row, self._finished(row, decoded, t_read, labels)) for (row, decoded, t_read), labels
                in zip(batch, results, strict=True)]
        self._wait_written()  # at most one batch waits for the database while the next is computed
        self._writing = self.writer.submit(self._write, done, stats)

    def _wait_written(self) -> None:
        """Wait for the batch being written; a database outage is raised here, in the caller's thread."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _retry_smaller(self, batch: _Batch, exc: BaseException,
                       stats: ProcessStats) -> None:
        """Out of memory: run the batch again in halves (and keep the smaller size); one image: retry later."""
        from workers.models import free_accelerator_memory

        free_accelerator_memory()
        if len(batch) == 1:
            row = batch[0][0]
            self._record_error(row, RetryableError(f"out of memory on this image alone even after freeing memory "
                                                   f"({type(exc).__name__}: {str(exc)[:200]})"), stats)
            return
        half = (len(batch) + 1) // 2
        self.batch_size = min(self.batch_size, half)
        logger.warning("out of memory on a batch of %d images (%s); retrying as batches of %d", len(batch),
                       type(exc).__name__, half, extra={"worker": self.owner})
        self._run_sync(batch[:half], stats)
        self._run_sync(batch[half:], stats)

    def _finished(self, row: _Row, decoded: DecodedImage, t_read: float, labels: ImageLabels) -> repo.FinishedItem:
        """The rows and facts to store for one labelled item (``write`` = building its rows, in seconds)."""
        t0 = time.perf_counter()
        rows = labels_to_rows(labels)
        timings = {"read_decode": round(t_read, 6), **{k: round(v, 6) for k, v in labels.timings.items()}}
        facts: dict[str, Any] = {"sha256": decoded.sha256, "size": decoded.size, "width": decoded.width,
                                 "height": decoded.height, "timings": timings}
        facts.update(self._read_facts.pop(row.key, {}))  # the ETag of the bytes labelled (issue 10)
        timings["write"] = round(time.perf_counter() - t0, 6)
        return repo.FinishedItem(row.id, rows, facts)

    def _write(self, done: list[tuple[_Row, repo.FinishedItem]], stats: ProcessStats) -> None:
        """Writer thread: one transaction for the batch; if it fails for an item's sake, one item at a time.

        A database outage raises :class:`InfrastructureError` (items go back uncharged, the task retries).
        """
        try:
            with self.factory() as s:
                written = repo.finish_items(s, self.owner, [f for _, f in done],
                                            overwrite_reviewed=self.settings.overwrite_reviewed)
        except (OperationalError, InterfaceError) as exc:
            raise _as_infra(exc) from exc
        except Exception as exc:
            if len(done) == 1:
                self._record_error(done[0][0], exc, stats)
                return
            logger.warning("writing a batch of %d failed (%s); writing one item at a time", len(done), exc)
            for one in done:
                self._write([one], stats)
            return
        for ok in written:
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
        try:
            with self.factory() as s:
                ok = repo.end_item(s, row.id, self.owner, status, reason)
        except (OperationalError, InterfaceError) as db_exc:
            raise _as_infra(db_exc) from db_exc
        if ok:
            stats.add(status)
            self._notify(status)
        else:
            stats.lost += 1

    def _notify(self, status: str) -> None:
        if self.on_item is not None:
            self.on_item(status)


def _as_infra(exc: BaseException) -> InfrastructureError:
    infra = infrastructure_error(exc)
    return infra if infra is not None else DatabaseUnavailable(f"database error: {type(exc).__name__}")


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
