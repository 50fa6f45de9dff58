"""metrics.attempt: the attempt that wrote each point

After a resume, the steps between the last checkpoint and the crash are written again by the
next attempt; the attempt tells the two apart, and the API serves the latest attempt's timeline
by default. Points written before this migration have NULL (the earliest).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("metrics", sa.Column("attempt", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("metrics", "attempt")
