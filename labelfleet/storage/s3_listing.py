"""Listing an S3 prefix fast and still in key order: sub-prefixes fetched in parallel, yielded in order.

One ``list_objects_v2`` stream delivers 1,000 keys per round trip, and S3 (or MinIO, or moto) takes
a while per page, so a single stream caps a listing at a few thousand keys per second. When the
prefix has sub-"folders" (found with one ``Delimiter="/"`` request, one level deeper if it has fewer
than ``MIN_SHARDS``), each folder is a *shard* listed by its own thread, ``workers`` at a time, a
few pages ahead. The caller still receives every object in S3's lexicographic key order (shards and
the files beside them are merged in sorted order: a folder's keys all sort where the folder's prefix
sorts), so ``start_after`` resumes an interrupted listing exactly as the sequential listing did, and
memory stays bounded (``workers`` x ``PAGES_AHEAD`` pages). A flat prefix (or one whose first
delimiter page is truncated) is one shard: its pages are still fetched by a thread, ahead of the caller
(who meanwhile inserts the previous page).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

MIN_SHARDS = 4
PAGES_AHEAD = 2
_DONE = object()


def list_objects(client: Any, bucket: str, prefix: str, *, start_after: str | None = None,
                 workers: int = 4) -> Generator[dict[str, Any], None, None]:
    """Every object (``list_objects_v2`` ``Contents`` entry) under ``prefix`` after the full key
    ``start_after``, in key order; sub-prefixes listed by up to ``workers`` threads."""
    units = (_units(client, bucket, prefix) if workers > 1 else None) or [prefix]  # else one shard, read ahead
    shards = [u for u in units if isinstance(u, str) and _wanted(u, start_after)]
    stop = threading.Event()
    feeds = {p: queue.Queue[Any](maxsize=PAGES_AHEAD) for p in shards}
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-list")
    try:
        for p in shards:  # FIFO: shard i starts before shard i+1, so the shard being read always runs
            pool.submit(_feed, client, bucket, p, start_after if start_after and start_after.startswith(p) else None,
                        feeds[p], stop)
        for unit in units:
            if isinstance(unit, str):
                if unit in feeds:
                    yield from _drain(feeds[unit])
            elif start_after is None or unit["Key"] > start_after:
                yield unit
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def _wanted(shard: str, start_after: str | None) -> bool:
    """False when every key under ``shard`` sorts at or before ``start_after`` (already listed)."""
    return start_after is None or start_after < shard or start_after.startswith(shard)


def _units(client: Any, bucket: str, prefix: str) -> list[Any] | None:
    """The prefix's direct objects (dicts) and sub-prefixes (str), sorted; None to list sequentially."""
    top = _level(client, bucket, prefix)
    if top is None:
        return None
    if sum(isinstance(u, str) for u in top) >= MIN_SHARDS:
        return top
    units: list[Any] = []
    for unit in top:  # few folders: one level deeper, where it fits in one page
        deeper = _level(client, bucket, unit) if isinstance(unit, str) else None
        units.extend(deeper if deeper is not None else [unit])
    shards = sum(isinstance(u, str) for u in units)
    return units if shards > 1 else None


def _level(client: Any, bucket: str, prefix: str) -> list[Any] | None:
    """One ``Delimiter="/"`` page: objects and sub-prefixes sorted by key; None if it is truncated."""
    resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/", MaxKeys=1000)
    if resp.get("IsTruncated"):
        return None
    units: list[Any] = [*resp.get("Contents", []), *(p["Prefix"] for p in resp.get("CommonPrefixes", []))]
    return sorted(units, key=lambda u: u if isinstance(u, str) else u["Key"])


def _feed(client: Any, bucket: str, shard: str, start_after: str | None, out: queue.Queue[Any],
          stop: threading.Event) -> None:
    """Producer thread: the shard's pages (lists of objects) into ``out``, then ``_DONE`` or the exception."""
    try:
        kw: dict[str, Any] = {"Bucket": bucket, "Prefix": shard}
        if start_after:
            kw["StartAfter"] = start_after
        for page in client.get_paginator("list_objects_v2").paginate(**kw):
            if not _put(out, page.get("Contents", []), stop):
                return
        _put(out, _DONE, stop)
    except BaseException as exc:  # handed to the reader, which raises it in the caller's thread
        _put(out, exc, stop)


def _put(out: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _drain(feed: queue.Queue[Any]) -> Iterator[dict[str, Any]]:
    while (page := feed.get()) is not _DONE:
        if isinstance(page, BaseException):
            raise page
        yield from page
