"""Parallel S3 listing (issue 13) on a real S3 API (moto server): key order, resume points, skips.

Folders are listed by several threads; the caller must still get S3's lexicographic order, so that
``start_after`` (the listing cursor) resumes exactly where an interrupted listing stopped.
"""

from __future__ import annotations

import uuid

import pytest

from labelfleet.storage.s3 import S3Source
from labelfleet.storage.s3_listing import list_objects

# Files beside folders whose names sort around them ("a.jpg" < "a/" < "a0.jpg"), nested folders,
# a flat folder bigger than one page, a hidden key and a non-image.
KEYS = sorted(["a.jpg", "a/1.jpg", "a/2.jpg", "a0.jpg", "b/x/1.jpg", "b/x/2.jpg", "b/y.jpg", "c.txt",
               *(f"d/{i:05d}.jpg" for i in range(1203)), "e/.hidden/1.jpg", "e/2.jpg", "z.jpg"])


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"listing-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=name)
    for key in KEYS:
        s3.put_object(Bucket=name, Key=f"root/{key}", Body=b"x")
    s3.put_object(Bucket=name, Key="rootless.jpg", Body=b"x")  # beside the prefix: never listed
    return name


@pytest.mark.parametrize("workers", [1, 4])
def test_listing_is_in_key_order_with_the_usual_skips(s3_endpoint: str, bucket: str, workers: int) -> None:
    src = S3Source(f"s3://{bucket}/root", endpoint_url=s3_endpoint)
    src.list_workers = workers
    keys = [r.key for r in src.list()]
    assert keys == [k for k in KEYS if k != "c.txt" and "/." not in k]
    assert src.report.images == len(keys) and sum(src.report.skipped.values()) == 2


@pytest.mark.parametrize("after", ["a.jpg", "a/1.jpg", "a/2.jpg", "a0.jpg", "b/x/2.jpg", "d/00999.jpg", "d/01202.jpg",
                                   "e/2.jpg", "z.jpg"])
def test_start_after_resumes_exactly_after_the_cursor(s3_endpoint: str, bucket: str, after: str) -> None:
    src = S3Source(f"s3://{bucket}/root/", endpoint_url=s3_endpoint)
    objs = [o["Key"] for o in list_objects(src.client, bucket, "root/", start_after="root/" + after, workers=4)]
    assert objs == ["root/" + k for k in KEYS if k > after]


def test_a_listing_abandoned_midway_stops_its_threads(s3_endpoint: str, bucket: str) -> None:
    import threading

    src = S3Source(f"s3://{bucket}/root/", endpoint_url=s3_endpoint)
    before = {t.name for t in threading.enumerate()}
    it = src.list()
    assert [next(it).key for _ in range(3)] == ["a.jpg", "a/1.jpg", "a/2.jpg"]
    it.close()  # the caller stopped (an error while inserting): the producer threads end with the generator
    assert not {t.name for t in threading.enumerate() if t.name.startswith("s3-list")} - before
