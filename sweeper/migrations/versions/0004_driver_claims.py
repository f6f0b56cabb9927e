"""driver claims: one live driver per sweep name

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeper_claims",
        sa.Column("sweep", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=300), nullable=False),
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sweep"),
    )


def downgrade() -> None:
    op.drop_table("sweeper_claims")
