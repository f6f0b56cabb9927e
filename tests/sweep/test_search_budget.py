"""`search.enqueue`, `budget.max_compute` and a finished sweep given more budget, through the real controller on
Ray (the synthetic task: deterministic curves, no training)."""

from __future__ import annotations

import sqlite3

import optuna
import pytest
from helpers import run_cli, synthetic_spec

from sweeper.spec import load_spec, stored_spec
from sweeper.store import TrialStore

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


@pytest.mark.slow  # one driver on the shared Ray, no trial (~10 s)
def test_a_sweep_recorded_under_the_earlier_rung_default_runs_again_with_it(tmp_path, shared_ray):
    spec = synthetic_spec(tmp_path)
    new = load_spec(spec)
    earlier = new.model_copy(update={"scheduler": new.scheduler.model_copy(update={"rung_metric": "objective"})})
    recorded = stored_spec(earlier)
    del recorded["scheduler"]["rung_metric"]  # recorded before the key existed, when objective was the default
    store = TrialStore(new.database_url())
    store.upgrade()
    store.open_sweep(new.name, recorded, earlier.fingerprint(), "accuracy", "max")
    store.update_sweep(new.name, status="completed")
    again = run_cli(["run", spec, "--address", shared_ray], tmp_path)  # the spec leaves rung_metric unset
    assert again.returncode == 0 and "already completed" in again.stdout, again.stdout + again.stderr
    synthetic_spec(tmp_path, scheduler={**new.scheduler.model_dump(), "rung_metric": "holdout_loss"})
    said = run_cli(["run", spec, "--address", shared_ray], tmp_path)
    assert said.returncode != 0 and "scheduler.rung_metric" in said.stderr, said.stdout + said.stderr
    assert store.get_sweep(new.name).spec_fingerprint == earlier.fingerprint()
