"""Migration 0003 on a database with review verdicts (SQLite and PostgreSQL): every verdict survives."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from labelfleet.db import migrate
from labelfleet.db.engine import make_engine, session_factory
from labelfleet.db.labels import current_labels
from labelfleet.masks import encode_rle
from tests.test_review_support import mask_in_box

WHEN = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
#: (review_status, reviewed_by, class) of the 0002-era detections of one image
ROWS = [("accepted", "alice", "cat"), ("rejected", "bob", "dog"), ("edited", "alice", "car"), (None, None, "cat")]


def _fill_0002(engine: sa.Engine) -> list[int]:
    md = sa.MetaData()
    jobs, items, dets = (sa.Table(n, md, autoload_with=engine) for n in ("jobs", "items", "detections"))
    with engine.begin() as conn:
        job_id = conn.execute(jobs.insert().values(name="old", source="/src", config={"classes": ["cat", "dog"]},
                                                   models={"preset": "default"}, state="done", listing_done=True)
                              .returning(jobs.c.id)).scalar_one()
        item_id = conn.execute(items.insert().values(job_id=job_id, key="a.jpg", status="done", attempts=1,
                                                     width=64, height=48).returning(items.c.id)).scalar_one()
        ids = []
        for i, (status, who, cls) in enumerate(ROWS):
            box = (4.0 + 14 * i, 4.0, 14.0 + 14 * i, 30.0)
            m = mask_in_box(box, seed=i, noisy=False)
            ids.append(conn.execute(dets.insert().values(
                item_id=item_id, idx=i, x0=box[0], y0=box[1], x1=box[2], y1=box[3], score=0.5 + i / 10,
                class_name=cls, phrase=cls, mask=encode_rle(m), area=int(m.sum()), review_status=status,
                reviewed_by=who, reviewed_at=WHEN if status else None)).inserted_primary_key[0])
    return ids


def test_upgrade_keeps_review_verdicts_and_downgrade_restores_them(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate.upgrade(engine, "0002")
    ids = _fill_0002(engine)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT prediction_id, action, reviewer, class_name, decided_at "
                                   "FROM review_decisions ORDER BY prediction_id")).all()
        runs = conn.execute(sa.text("SELECT DISTINCT run_id FROM detections")).scalars().all()
        cols = {c["name"] for c in sa.inspect(conn).get_columns("detections")}
    assert [(r[0], r[1], r[2], r[3]) for r in got] == [(ids[0], "accept", "alice", "cat"),
                                                       (ids[1], "reject", "bob", "dog"),
                                                       (ids[2], "edit", "alice", "car")]
    assert all(r[4] is not None for r in got) and len(runs) == 1 and runs[0] is not None
    assert not {"review_status", "reviewed_by", "reviewed_at"} & cols  # predictions carry no verdicts now
    with session_factory(engine)() as s:
        item_id = s.execute(sa.text("SELECT id FROM items")).scalar_one()
        view = current_labels(s, [item_id], include_rejected=True)[item_id]
    assert sorted((lab["prediction_id"], lab["review_status"], lab["reviewed_by"]) for lab in view) == [
        (ids[0], "accepted", "alice"), (ids[1], "rejected", "bob"), (ids[2], "edited", "alice"), (ids[3], None, None)]
    migrate.downgrade(engine, "0002")
    with engine.connect() as conn:
        back = conn.execute(sa.text("SELECT review_status, reviewed_by FROM detections ORDER BY idx")).all()
    assert [tuple(r) for r in back] == [(s, w) for s, w, _ in ROWS]
    engine.dispose()
