"""rounds keep the worker's bookkeeping apart from the holdout metrics

Revision ID: 0005
Revises: 0004

Until 0004 a round's `metrics` held one flat result: the holdout metrics, sweeper's bookkeeping and the keys Ray
Tune adds (pid, hostname, timestamps, ...). Upgrading splits those rows once, by the rule `sweeper compare` read
them with until then: a finite number whose key is not one of LEGACY_BOOKKEEPING and does not start with `time_`
is a holdout metric; everything else moves, unchanged, to `bookkeeping`. Rows written from 0005 on arrive split by
the worker. Downgrading merges the two back into `metrics`.
"""

import math

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen with this revision: the non-metric keys that writers up to 0004 put beside the metrics (sweeper's, Ray's).
LEGACY_BOOKKEEPING = frozenset({
    "round", "epoch", "train_loss", "examples_seen", "tokens_seen", "objective", "objective_name", "stop_reason",
    "device", "node", "rss_mb", "rss_start_mb", "timestamp", "training_iteration", "time_this_iter_s", "time_total_s",
    "time_since_restore", "iterations_since_restore", "pid", "date", "hostname", "node_ip", "trial_id",
    "experiment_tag", "done", "should_checkpoint", "checkpoint_dir_name", "config", "experiment_id"})
BATCH = 1000
ROUNDS = sa.table("sweeper_rounds", sa.column("id", sa.Integer), sa.column("metrics", sa.JSON),
                  sa.column("bookkeeping", sa.JSON))


def upgrade() -> None:
    with op.batch_alter_table("sweeper_rounds") as batch_op:
        batch_op.add_column(sa.Column("bookkeeping", sa.JSON(), nullable=False, server_default="{}"))
    _rewrite(_split)


def downgrade() -> None:
    _rewrite(lambda metrics, bookkeeping: ({**bookkeeping, **metrics}, {}))
    with op.batch_alter_table("sweeper_rounds") as batch_op:
        batch_op.drop_column("bookkeeping")


def _legacy_metric(key: str, value) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return number and key not in LEGACY_BOOKKEEPING and not key.startswith("time_")


def _split(metrics: dict, bookkeeping: dict) -> tuple[dict, dict]:
    holdout = {k: v for k, v in metrics.items() if _legacy_metric(k, v)}
    return holdout, {**bookkeeping, **{k: v for k, v in metrics.items() if k not in holdout}}


def _rewrite(split) -> None:
    """Rewrite every round's (metrics, bookkeeping) with `split`, a batch of rows at a time."""
    connection, last = op.get_bind(), 0
    update = ROUNDS.update().where(ROUNDS.c.id == sa.bindparam("row_id")).values(
        metrics=sa.bindparam("new_metrics"), bookkeeping=sa.bindparam("new_bookkeeping"))
    while True:
        rows = connection.execute(sa.select(ROUNDS).where(ROUNDS.c.id > last).order_by(ROUNDS.c.id).limit(BATCH)).all()
        if not rows:
            return
        changed = [(r.id, *split(r.metrics or {}, r.bookkeeping or {})) for r in rows]
        connection.execute(update, [{"row_id": i, "new_metrics": m, "new_bookkeeping": b} for i, m, b in changed])
        last = rows[-1].id
