"""jobs: tags, note, archived_at (organising experiments) and the webhook columns (notify on a
terminal state: the URL, the delivery state, attempts and when to try next)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.db.models import UTCDateTime

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("tags", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
        batch.add_column(sa.Column("archived_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("notify_state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("notify_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("notify_next_at", UTCDateTime(), nullable=True))
    op.create_index("ix_jobs_notify_state", "jobs", ["notify_state"])


def downgrade() -> None:
    op.drop_index("ix_jobs_notify_state", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("notify_next_at", "notify_attempts", "notify_state", "webhook_url", "archived_at",
                       "note", "tags"):
            batch.drop_column(column)
