"""studies: a posted study's spec and its cells' job records (/api/v1/studies)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from service.db.models import UTCDateTime

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("spec", JSONType, nullable=False),
        sa.Column("cells", JSONType, nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_studies"),
    )
    op.create_index("ix_studies_active", "studies", ["active"])


def downgrade() -> None:
    op.drop_index("ix_studies_active", table_name="studies")
    op.drop_table("studies")
