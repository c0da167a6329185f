"""predictions vs review decisions: label runs, review_decisions, job_classes (issue #12)

Existing verdicts (``detections.review_status / reviewed_by / reviewed_at``) become one
decision each (accepted -> accept, rejected -> reject, edited -> edit, with the row's
box/class/mask as the reviewer left them); every existing detection is attached to run 1 of
its job. The downgrade writes the current decisions on predictions back onto the
detections (delete -> rejected); labels a reviewer added have no detection row and are lost.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TO_ACTION = {"accepted": "accept", "rejected": "reject", "edited": "edit"}
_GEOMETRY = ("x0", "y0", "x1", "y1", "class_name", "score", "phrase", "tag", "mask", "area")


def _create_run_and_class_tables() -> None:
    op.create_table(
        "label_runs",
        sa.Column("id", BigId, nullable=False),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "number"),
    )
    op.create_index(op.f("ix_label_runs_job_id"), "label_runs", ["job_id"], unique=False)
    op.create_table(
        "job_classes",
        sa.Column("id", BigId, nullable=False),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "class_id"),
        sa.UniqueConstraint("job_id", "name"),
    )
    op.create_index(op.f("ix_job_classes_job_id"), "job_classes", ["job_id"], unique=False)


def _create_decisions_table() -> None:
    op.create_table(
        "review_decisions",
        sa.Column("id", BigId, nullable=False),
        sa.Column("item_id", BigId, nullable=False),
        sa.Column("prediction_id", BigId, nullable=True),
        sa.Column("replaces_id", BigId, nullable=True),
        sa.Column("run_id", BigId, nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("x0", sa.Float(), nullable=False),
        sa.Column("y0", sa.Float(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
        sa.Column("class_name", sa.String(length=200), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("phrase", sa.Text(), nullable=True),
        sa.Column("tag", sa.String(length=200), nullable=True),
        sa.Column("mask", sa.JSON(), nullable=True),
        sa.Column("area", sa.Integer(), nullable=True),
        sa.Column("mask_stale", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["prediction_id"], ["detections.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["replaces_id"], ["review_decisions.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["run_id"], ["label_runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    for col in ("item_id", "prediction_id", "replaces_id"):
        op.create_index(op.f(f"ix_review_decisions_{col}"), "review_decisions", [col], unique=False)


def _table(name: str) -> sa.Table:
    return sa.Table(name, sa.MetaData(), autoload_with=op.get_bind())


def _runs_for_jobs() -> dict[int, int]:
    """Run 1 for every job; returns job id -> run id."""
    conn = op.get_bind()
    jobs, runs = _table("jobs"), _table("label_runs")
    out: dict[int, int] = {}
    for job_id, models, config in conn.execute(sa.select(jobs.c.id, jobs.c.models, jobs.c.config)).all():
        conn.execute(runs.insert().values(job_id=job_id, number=1, models=models or {}, config=config or {}))
        out[job_id] = int(conn.execute(sa.select(runs.c.id).where(runs.c.job_id == job_id,
                                                                  runs.c.number == 1)).scalar_one())
    return out


def upgrade() -> None:
    # Order matters on SQLite: the batch operation below re-creates ``detections``, which would
    # fire ON DELETE SET NULL on review_decisions.prediction_id, so verdicts are read first and
    # review_decisions is created after it.
    _create_run_and_class_tables()
    conn = op.get_bind()
    runs = _runs_for_jobs()
    dets, items = _table("detections"), _table("items")
    reviewed = [dict(r) for r in conn.execute(
        sa.select(dets, items.c.job_id).join(items, dets.c.item_id == items.c.id)
        .where(dets.c.review_status.is_not(None))).mappings().all()]
    with op.batch_alter_table("detections", schema=None) as batch_op:
        batch_op.drop_column("reviewed_at")
        batch_op.drop_column("reviewed_by")
        batch_op.drop_column("review_status")
        batch_op.add_column(sa.Column("run_id", BigId, nullable=True))
        batch_op.create_index(batch_op.f("ix_detections_run_id"), ["run_id"], unique=False)
        batch_op.create_foreign_key("fk_detections_run_id_label_runs", "label_runs", ["run_id"], ["id"],
                                    ondelete="SET NULL")
    dets, items = _table("detections"), _table("items")
    for job_id, run_id in runs.items():
        conn.execute(dets.update().where(dets.c.item_id.in_(sa.select(items.c.id).where(items.c.job_id == job_id)))
                     .values(run_id=run_id))
    _create_decisions_table()
    now = datetime.now(UTC)
    rows = [{"item_id": r["item_id"], "prediction_id": r["id"], "run_id": runs.get(r["job_id"]),
             "action": _TO_ACTION.get(r["review_status"], "accept"), "reviewer": r["reviewed_by"] or "unknown",
             "decided_at": r["reviewed_at"] or now, "mask_stale": False, **{k: r[k] for k in _GEOMETRY}}
            for r in reviewed]
    if rows:
        conn.execute(_table("review_decisions").insert(), rows)


def downgrade() -> None:
    conn = op.get_bind()
    dec = _table("review_decisions")
    replaced = sa.select(dec.c.replaces_id).where(dec.c.replaces_id.is_not(None))
    current = [dict(d) for d in conn.execute(sa.select(dec).where(
        dec.c.prediction_id.is_not(None), dec.c.id.not_in(replaced))).mappings().all()]
    op.drop_table("review_decisions")
    with op.batch_alter_table("detections", schema=None) as batch_op:
        batch_op.drop_constraint("fk_detections_run_id_label_runs", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_detections_run_id"))
        batch_op.drop_column("run_id")
        batch_op.add_column(sa.Column("review_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("reviewed_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
    dets = _table("detections")
    status = {"accept": "accepted", "reject": "rejected", "edit": "edited", "delete": "rejected"}
    for d in current:
        conn.execute(dets.update().where(dets.c.id == d["prediction_id"]).values(
            review_status=status[d["action"]], reviewed_by=d["reviewer"], reviewed_at=d["decided_at"],
            **({k: d[k] for k in _GEOMETRY} if d["action"] == "edit" else {})))
    op.drop_index(op.f("ix_job_classes_job_id"), table_name="job_classes")
    op.drop_table("job_classes")
    op.drop_index(op.f("ix_label_runs_job_id"), table_name="label_runs")
    op.drop_table("label_runs")
