"""sweep drivers: which driver (a sweep's run, its promotion) a service last started, and whether a cancel was asked

Revision ID: 0006
Revises: 0005

The service keeps no state of its own: any replica reads this table to watch, cancel and restart a sweep's
driver (a Ray job, or a local `sweeper run` process), and the driver reads its cancel request from it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeper_drivers",
        sa.Column("sweep", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("spec_path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("driver_id", sa.String(length=300), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("launched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sweep", "role"),
    )


def downgrade() -> None:
    op.drop_table("sweeper_drivers")
