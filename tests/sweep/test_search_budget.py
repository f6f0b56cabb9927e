"""`search.enqueue`, `budget.max_compute` and a finished sweep given more budget, through the real controller on
Ray (the synthetic task: deterministic curves, no training)."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
from helpers import run_cli, synthetic_spec

KNOWN = {"learning_rate": 0.001, "batch_size": 16, "num_epochs": 2}


def spent(db) -> tuple[int, float]:
    """(trials, trial-epochs): small_spec evaluates twice an epoch."""
    with sqlite3.connect(db) as con:
        rounds = [r for (r,) in con.execute("select rounds from sweeper_trials")]
        status = con.execute("select status from sweeper_sweeps").fetchone()[0]
    assert status == "completed"
    return len(rounds), sum(rounds) / 2


@pytest.mark.slow  # two short sweeps on the shared Ray (~40 s on a quiet 2-core machine)
def test_max_compute_enqueue_and_a_budget_raised_after_the_sweep_finished(tmp_path, shared_ray):
    budget = {"trials": 20, "max_concurrent": 2, "max_compute": 4}
    spec = synthetic_spec(tmp_path, budget=budget, scheduler={"type": "none", "evals_per_epoch": 2},
                          search={"enqueue": [KNOWN]})
    first = run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    assert "trial-epochs" in first.stdout, first.stdout  # the final summary shows the compute spent
    db = tmp_path / "state" / "sweeper.db"
    trials, epochs = spent(db)
    # No trial is started once spent + committed compute reaches 4 epochs: the two first trials (2 + 2-4 epochs)
    # hold it; a trial starts only while less than 4 is spent or committed, so less than 4 + 4 is ever spent.
    assert trials >= 2 and 4 <= epochs < 4 + 4, (trials, epochs)
    study = optuna.load_study(study_name="synthetic-sweep", storage=f"sqlite:///{db}")
    assert {k: study.trials[0].params[k] for k in KNOWN} == KNOWN

    synthetic_spec(tmp_path, budget={**budget, "max_compute": 12}, scheduler={"type": "none", "evals_per_epoch": 2},
                   search={"enqueue": [KNOWN]})  # the same spec with more compute: the sweep goes on
    run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    more, more_epochs = spent(db)
    assert more > trials and 12 <= more_epochs < 12 + 4, (more, more_epochs)
    study = optuna.load_study(study_name="synthetic-sweep", storage=f"sqlite:///{db}")
    assert [t.user_attrs.get("sweeper_enqueued") for t in study.trials].count(0) == 1  # enqueued once
    assert len(study.trials) == more

    # A budget lowered below what was spent, or any other change: refused (tests/test_search.py, tests/test_spec.py).
