"""drop jobs.run_dir: the run directory is derived from the artifact root (Settings.run_dir)

It was written at submit and never read; a path stored at submit would also be wrong on a box
that mounts the artifact root elsewhere.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_column("jobs", "run_dir")  # SQLite >= 3.35 drops a plain column in place


def downgrade() -> None:
    op.add_column("jobs", sa.Column("run_dir", sa.Text(), nullable=False, server_default=""))
