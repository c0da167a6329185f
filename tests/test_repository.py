"""Repository semantics on real SQLite and PostgreSQL: idempotent listing, leases, replace-on-rewrite."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from labelfleet.db import migrate
from labelfleet.db import repository as repo
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.models import Detection, Item, ItemStatus, ItemTag, ReviewDecision
from labelfleet.db.queries import job_summary
from labelfleet.errors import ConfigError
from labelfleet.types import ImageRef


@pytest.fixture
def factory(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


def _job(factory, n: int = 10):  # type: ignore[no-untyped-def]
    with factory() as s:
        job, _ = repo.get_or_create_job(s, "j", "/src", {"a": 1}, {})
        s.commit()
        repo.add_items(s, job, (ImageRef("/src", f"k{i:03d}.jpg", 10) for i in range(n)), batch_size=3)
        return job.id


def test_add_items_is_idempotent_and_resumable(factory) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(factory)
    with factory() as s:
        job = repo.get_job(s, "j")
        assert job.listing_cursor == "k009.jpg" and job.listing_done
        again = repo.add_items(s, job, (ImageRef("/src", f"k{i:03d}.jpg") for i in range(12)))
        assert again == 2
        assert s.scalar(select(func.count()).select_from(Item).where(Item.job_id == job_id)) == 12


def test_job_config_conflicts(factory) -> None:  # type: ignore[no-untyped-def]
    _job(factory)
    with factory() as s:
        with pytest.raises(ConfigError, match="job 'j' already exists for source '/src', not '/other'"):
            repo.get_or_create_job(s, "j", "/other", {"a": 1}, {})
        with pytest.raises(ConfigError, match=r"job 'j' already exists with different settings \(a\)"):
            repo.get_or_create_job(s, "j", "/src", {"a": 2}, {})
        with pytest.raises(ConfigError, match="no job named 'x'; known jobs: j"):
            repo.get_job(s, "x")


def test_claims_do_not_overlap_and_expired_leases_return(factory) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(factory)
    with factory() as s:
        a = repo.claim_items(s, job_id, "A", limit=4, lease_seconds=60)
        b = repo.claim_items(s, job_id, "B", limit=100, lease_seconds=60)
    assert len(a) == 4 and len(b) == 6 and not set(a) & set(b)
    with factory() as s:
        assert repo.claim_items(s, job_id, "C", limit=10, lease_seconds=60) == []
        s.execute(update(Item).where(Item.id.in_(a)).values(lease_expires_at=repo.utcnow() - timedelta(seconds=1)))
        s.commit()
        c = repo.claim_items(s, job_id, "C", limit=10, lease_seconds=60)
    assert c == a
    with factory() as s:  # A's lease was taken over: A cannot write labels any more
        assert not repo.finish_item(s, a[0], "A", repo.LabelRows(tags=[("cat", 0.9)]), facts={})
        assert repo.finish_item(s, a[0], "C", repo.LabelRows(tags=[("cat", 0.9)]), facts={})
        item = s.get(Item, a[0])
        assert item is not None and item.status == ItemStatus.DONE and item.attempts == 2


def test_rewrite_replaces_labels(factory) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(factory, 1)
    det = {"x0": 0.0, "y0": 0.0, "x1": 1.0, "y1": 1.0, "score": 0.5, "class_name": "cat", "phrase": "cat",
           "tag": None, "mask": None, "area": None}
    for _ in range(2):
        with factory() as s:
            (item_id,) = repo.claim_items(s, job_id, "W", limit=1, lease_seconds=60) or [None]
            if item_id is None:  # second round: put it back as a re-label would
                s.execute(update(Item).values(status=ItemStatus.PENDING))
                s.commit()
                (item_id,) = repo.claim_items(s, job_id, "W", limit=1, lease_seconds=60)
            labels = repo.LabelRows(tags=[("cat", 0.9), ("dog", 0.7)], detections=[det, det])
            assert repo.finish_item(s, item_id, "W", labels, facts={"width": 5, "height": 4})
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(ItemTag)) == 2
        assert s.scalar(select(func.count()).select_from(Detection)) == 2
        summary = job_summary(s, repo.get_job(s, "j"))
    assert (summary["done"], summary["total"], summary["tags"], summary["detections"]) == (1, 1, 2, 2)
    assert summary["state"] == "done"


def test_release_and_end_item(factory) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(factory, 3)
    with factory() as s:
        ids = repo.claim_items(s, job_id, "W", limit=3, lease_seconds=60)
        assert repo.end_item(s, ids[0], "W", ItemStatus.FAILED, "not an image")
        assert repo.release_items(s, ids, "W") == 2
        summary = job_summary(s, repo.get_job(s, "j"))
        attempts = sorted(s.scalars(select(Item.attempts)).all())
    assert (summary["failed"], summary["pending"], summary["running"]) == (1, 2, 0)
    assert summary["failures"] == [{"status": "failed", "reason": "not an image", "count": 1}]
    assert attempts == [0, 0, 1]


class _FlakyListing:
    """A source whose listing dies after ``fail_after`` keys on the first pass (like a dropped S3 connection)."""

    uri = "/flaky"

    def __init__(self, keys: list[str], fail_after: int) -> None:
        self.keys, self.fail_after, self.calls = keys, fail_after, []  # type: ignore[var-annotated]

    def list(self, start_after: str | None = None):  # type: ignore[no-untyped-def]
        self.calls.append(start_after)
        for n, key in enumerate(k for k in self.keys if start_after is None or k > start_after):
            if len(self.calls) == 1 and n == self.fail_after:
                raise ConnectionError("listing connection dropped")
            yield ImageRef(self.uri, key)


def test_interrupted_listing_resumes_at_the_cursor(factory) -> None:  # type: ignore[no-untyped-def]
    from orchestrator.jobs import prepare_job

    keys = [f"{i:04d}.jpg" for i in range(2500)]
    src = _FlakyListing(keys, fail_after=1500)
    with pytest.raises(ConnectionError):
        prepare_job(factory, name="flaky", source=src, config={}, models={})  # type: ignore[arg-type]
    job_id, created = prepare_job(factory, name="flaky", source=src, config={}, models={})  # type: ignore[arg-type]
    assert not created
    assert src.calls == [None, "0999.jpg"]  # batches of 1000 were committed before the failure
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Item).where(Item.job_id == job_id)) == 2500
        assert repo.get_job(s, "flaky").listing_done


def test_crash_release_counts_the_attempt_and_poisons(factory) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(factory, 2)
    with factory() as s:
        for _ in range(3):  # an image that always crashes its worker
            ids = repo.claim_items(s, job_id, "W", limit=2, lease_seconds=60)
            repo.release_items(s, ids, "W", refund=False, max_attempts=3, reason="SoftTimeLimitExceeded")
        rows = s.execute(select(Item.status, Item.attempts, Item.error, Item.enqueued_at)).all()
    assert {r.status for r in rows} == {ItemStatus.POISON}
    assert all(r.attempts == 3 and r.error == "gave up after 3 attempts: SoftTimeLimitExceeded" for r in rows)


def test_local_and_cluster_jobs_do_not_mix(factory) -> None:  # type: ignore[no-untyped-def]
    _job(factory, 1)  # a local job (no queue)
    with factory() as s, pytest.raises(ConfigError, match=r"job 'j' is a local job \(labelfleet label\)"):
        repo.get_or_create_job(s, "j", "/src", {"a": 1}, {}, queue="lf.default")


def test_final_failure_on_relabel_drops_stale_machine_labels(factory) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(factory, 1)
    det = {"x0": 0.0, "y0": 0.0, "x1": 1.0, "y1": 1.0, "score": 0.5, "class_name": "cat", "phrase": "cat",
           "tag": None, "mask": None, "area": None}
    with factory() as s:
        (item_id,) = repo.claim_items(s, job_id, "W", limit=1, lease_seconds=60)
        repo.finish_item(s, item_id, "W", repo.LabelRows(tags=[("cat", 0.9)], detections=[det, det]), facts={})
        first = s.scalar(select(Detection).where(Detection.idx == 0))
        s.add(ReviewDecision(item_id=item_id, prediction_id=first.id, run_id=first.run_id, action="accept",
                             reviewer="alice", decided_at=repo.utcnow(), **{k: det[k] for k in (
                                 "x0", "y0", "x1", "y1", "class_name", "score")}))
        s.commit()
        repo.reset_for_relabel(s, job_id)
        (item_id,) = repo.claim_items(s, job_id, "W", limit=1, lease_seconds=60)
        assert repo.end_item(s, item_id, "W", ItemStatus.SKIPPED, "object no longer exists")
        assert s.scalar(select(func.count()).select_from(ItemTag)) == 0
        assert s.scalars(select(Detection.id)).all() == [first.id]  # the prediction a person decided on stays
        assert s.scalars(select(ReviewDecision.action)).all() == ["accept"]
