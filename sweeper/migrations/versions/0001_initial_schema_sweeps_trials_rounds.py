"""initial schema: sweeps, trials, rounds

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 14:45:51.345003
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sweeper_sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('spec_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('objective_metric', sa.String(length=128), nullable=False),
    sa.Column('objective_mode', sa.String(length=3), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('experiment_path', sa.Text(), nullable=False),
    sa.Column('audit', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('sweeper_trials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('trial_key', sa.String(length=64), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('stop_reason', sa.String(length=32), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('rounds', sa.Integer(), nullable=False),
    sa.Column('best_round', sa.Integer(), nullable=True),
    sa.Column('best_value', sa.Float(), nullable=True),
    sa.Column('wall_time_s', sa.Float(), nullable=False),
    sa.Column('device', sa.String(length=128), nullable=False),
    sa.Column('examples_seen', sa.Integer(), nullable=False),
    sa.Column('tokens_seen', sa.Integer(), nullable=False),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeper_sweeps.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sweep_id', 'trial_key')
    )
    with op.batch_alter_table('sweeper_trials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sweeper_trials_sweep_id'), ['sweep_id'], unique=False)

    op.create_table('sweeper_rounds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trial_id', sa.Integer(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('eval_loss', sa.Float(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('checkpoint', sa.Text(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['trial_id'], ['sweeper_trials.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('trial_id', 'round')
    )
    with op.batch_alter_table('sweeper_rounds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sweeper_rounds_trial_id'), ['trial_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('sweeper_rounds', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sweeper_rounds_trial_id'))

    op.drop_table('sweeper_rounds')
    with op.batch_alter_table('sweeper_trials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sweeper_trials_sweep_id'))

    op.drop_table('sweeper_trials')
    op.drop_table('sweeper_sweeps')
