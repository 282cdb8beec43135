"""Jobs, results, fronts and cached problems.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("model", sa.String(128), nullable=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("timings", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("heartbeat_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_jobs_status_created", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_created", "jobs", ["created_at"])
    op.create_index("ix_jobs_model", "jobs", ["model"])
    for name, column in (("results", None), ("fronts", "front"), ("problems", "problem")):
        cols = ([sa.Column("config", sa.Text, nullable=False),
                 sa.Column("measured", sa.Text, nullable=False),
                 sa.Column("uniform", sa.Text, nullable=False)] if column is None
                else [sa.Column(column, sa.Text, nullable=False)])
        op.create_table(
            name,
            sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                      primary_key=True),
            *cols,
        )


def downgrade() -> None:
    for name in ("problems", "fronts", "results", "jobs"):
        op.drop_table(name)
