"""studies.cancelled_at: a cancel stored as such, so no API process's pass can undo it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from service.db.models import UTCDateTime

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("cancelled_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("studies", "cancelled_at")  # SQLite >= 3.35 drops a plain column in place
