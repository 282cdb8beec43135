"""The broker outbox mark and attempt history of jobs; process heartbeats.

`jobs.dispatched_at`: when the job id last went to the broker (NULL: never, or re-queued
since), so the API re-sends jobs a down broker never got. `jobs.attempts_log`: one JSON
object per run (worker, start, end, outcome, reason), kept after a retried job succeeds.
`heartbeats`: one row per live API or worker process, for `/health`.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("dispatched_at", sa.DateTime, nullable=True))
    op.add_column("jobs", sa.Column("attempts_log", sa.Text, nullable=True))
    # Only process liveness lives here (no job data): a copy left behind by a tool that
    # dropped the job tables but not this one is taken over as it is.
    if "heartbeats" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "heartbeats",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("host", sa.String(128), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
    )
    op.create_index("ix_heartbeats_role_at", "heartbeats", ["role", "heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_heartbeats_role_at", table_name="heartbeats")
    op.drop_table("heartbeats")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attempts_log")
        batch.drop_column("dispatched_at")
