"""sweeper.search on a real SQLite store and Optuna study: what a resumed driver makes of what a killed one left.

Each case writes the state a SIGKILL at one moment leaves (a trial closed in one record but not the other, a trial
half-sampled, a checkpoint Tune already deleted) and checks the reconciliation; tests/reliability/test_driver_kills.py
kills real drivers.
"""

from __future__ import annotations

import json

import optuna
import pytest
from helpers import synthetic_spec
from optuna.trial import TrialState

from sweeper.search import SweepSearch, close_stopped_trials, load_study, trial_key
from sweeper.spec import load_spec
from sweeper.store import TrialStore
from sweeper.sweeps import stored_spec
from trainers.base import HYPERPARAMETERS, RoundRecord


@pytest.fixture
def sweep(tmp_path):
    spec = load_spec(synthetic_spec(tmp_path, budget={"trials": 4, "max_concurrent": 2}))
    url = spec.database_url()
    store = TrialStore(url)
    store.upgrade()
    store.open_sweep(spec.name, stored_spec(spec), spec.fingerprint(), spec.objective.metric, spec.objective.mode)
    yield spec, url, store
    store.engine.dispose()


def states(spec, url) -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name=spec.name, storage=url).get_trials()]


def run_trial(store, spec, search, checkpoint_dir=None, rounds=2, finish="completed"):
    """What the controller does for one trial: start it in the store, report rounds, finish it in both."""
    s = search.suggest()
    store.trial_started(spec.name, s.key, s.params)
    for n in range(1, rounds + 1):
        checkpoint = ""
        if checkpoint_dir is not None:
            (checkpoint_dir / f"{s.key}-{n}").mkdir(parents=True)
            checkpoint = str(checkpoint_dir / f"{s.key}-{n}")
        stop = {"stop_reason": "completed" if n == rounds else ""}
        record = RoundRecord(n, {"accuracy": 0.1 * n, "eval_loss": 1.0}, stop)
        store.round_reported(spec.name, s.key, record, checkpoint)
        search.round_reported(s.key, n, 0.1 * n)
    if finish:
        store.trial_finished(spec.name, s.key, finish, "completed")
        search.finished(s.key, 0.1 * rounds, error=finish == "failed")
    return s


def test_a_fresh_sweep_proposes_the_budget_once_with_complete_configs(sweep):
    spec, url, store = sweep
    search = SweepSearch(spec, url)
    assert not search.resumed and not search.done()
    suggestions = [search.suggest() for _ in range(4)]
    assert [s.key for s in suggestions] == ["t0000", "t0001", "t0002", "t0003"]
    assert all(set(HYPERPARAMETERS) <= set(s.params) | set(spec.fixed) for s in suggestions)
    assert search.suggest() is None and search.done()


def test_a_trial_closed_in_the_store_only_is_told_to_the_study(sweep):
    spec, url, store = sweep
    first = SweepSearch(spec, url)
    run_trial(store, spec, first, finish=None)
    store.trial_finished(spec.name, "t0000", "completed", "completed")  # killed before the study heard of it
    second = run_trial(store, spec, first, finish=None)
    store.trial_finished(spec.name, second.key, "failed", "error", "boom")
    resumed = SweepSearch(spec, url)
    assert resumed.pending == [] and resumed.resumed
    assert states(spec, url) == ["COMPLETE", "FAIL"]
    assert optuna.load_study(study_name=spec.name, storage=url).trials[0].value == pytest.approx(0.2)


def test_a_trial_closed_in_the_study_only_is_settled_in_the_store(sweep):
    spec, url, store = sweep
    first = SweepSearch(spec, url)
    s = run_trial(store, spec, first, finish=None)
    first.finished(s.key, 0.2, error=False)  # the study heard; the driver died before the store did
    SweepSearch(spec, url)
    trial = store.trial(spec.name, s.key)
    assert (trial.status, trial.stop_reason) == ("completed", "completed")


def test_an_unfinished_trial_resumes_from_its_newest_checkpoint_still_on_disk(sweep, tmp_path):
    spec, url, store = sweep
    first = SweepSearch(spec, url)
    s = run_trial(store, spec, first, tmp_path / "ckpt", rounds=3, finish=None)
    (tmp_path / "ckpt" / f"{s.key}-3").rmdir()  # the newest recorded is gone: the next newest
    resumed = SweepSearch(spec, url)
    [again] = resumed.pending
    assert (again.key, again.params, again.resume_from) == (s.key, s.params, str(tmp_path / "ckpt" / f"{s.key}-2"))
    assert resumed.suggest() == again
    assert [resumed.suggest().key for _ in range(3)] == ["t0001", "t0002", "t0003"]  # the budget counts it once
    assert resumed.suggest() is None


def test_a_trial_left_half_sampled_is_completed_not_replaced(sweep):
    spec, url, store = sweep
    trial = load_study(spec, url).ask()
    lr = spec.space().params["learning_rate"]
    trial.suggest_float("learning_rate", lr.low, lr.high, log=lr.log)  # killed before the other parameters
    [again] = SweepSearch(spec, url).pending
    assert again.key == "t0000" and again.resume_from == ""
    assert again.params["learning_rate"] == trial.params["learning_rate"]
    assert set(HYPERPARAMETERS) <= set(again.params) | set(spec.fixed)
    assert states(spec, url) == ["RUNNING"]


def test_a_resumed_sweep_does_not_propose_the_first_points_again(sweep):
    spec, url, store = sweep
    first = SweepSearch(spec, url)
    done = [run_trial(store, spec, first) for _ in range(2)]
    resumed = SweepSearch(spec, url)
    later = [resumed.suggest() for _ in range(2)]
    seen = {json.dumps(s.params, sort_keys=True) for s in done}
    assert all(json.dumps(s.params, sort_keys=True) not in seen for s in later)
    assert [s.key for s in later] == [trial_key(2), trial_key(3)]
    assert states(spec, url) == ["COMPLETE", "COMPLETE", "RUNNING", "RUNNING"]
    assert TrialState.RUNNING.name not in states(spec, url)[:2]


def test_no_trial_is_started_that_could_not_reach_a_round_before_the_deadline(tmp_path):
    spec = load_spec(synthetic_spec(tmp_path, budget={"trials": 10, "max_concurrent": 1, "time_budget_s": 100}))
    store = TrialStore(spec.database_url())
    store.upgrade()
    now = [0.0]
    search = SweepSearch(spec, spec.database_url(), clock=lambda: now[0])
    first = search.suggest()
    now[0] = 30.0  # its first round took 30 s: start-up, loading, a round of training
    search.round_reported(first.key, 1, 0.5)
    search.finished(first.key, 0.5, error=False)
    now[0] = 65.0  # 35 s left: a trial started now can still reach its first round
    assert search.suggest() is not None and not search.out_of_time
    now[0] = 75.0  # 25 s left: it could not
    assert search.suggest() is None and search.out_of_time
    store.engine.dispose()


def test_trials_stopped_at_the_time_budget_are_closed_with_what_they_reached(sweep):
    spec, url, store = sweep
    search = SweepSearch(spec, url)
    reported = search.suggest()
    search.suggest()  # a second trial that reports no round before the deadline
    search.round_reported(reported.key, 1, 0.3)
    search.round_reported(reported.key, 2, 0.4)
    close_stopped_trials(spec.name, url)
    trials = optuna.load_study(study_name=spec.name, storage=url).trials
    assert [(t.state.name, t.value) for t in trials] == [("COMPLETE", 0.4), ("PRUNED", None)]
