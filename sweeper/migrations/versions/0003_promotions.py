"""promotion outcomes: gates checked on the test split, per sweep

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeper_promotions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("trial_key", sa.String(length=64), nullable=False),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=False),
        sa.Column("runner_up", sa.String(length=64), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("export_path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["sweep_id"], ["sweeper_sweeps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sweeper_promotions") as batch_op:
        batch_op.create_index(batch_op.f("ix_sweeper_promotions_sweep_id"), ["sweep_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sweeper_promotions") as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweeper_promotions_sweep_id"))
    op.drop_table("sweeper_promotions")
