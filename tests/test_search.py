"""sweeper.search on a real SQLite store and Optuna study: what a resumed driver makes of what a killed one left.

Each case writes the state a SIGKILL at one moment leaves (a trial closed in one record but not the other, a trial
half-sampled, a checkpoint Tune already deleted) and checks the reconciliation; tests/reliability/test_driver_kills.py
kills real drivers.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pytest
import yaml
from helpers import synthetic_spec
from optuna.trial import TrialState

from sweeper.search import SweepSearch, close_stopped_trials, compute_used, extend_budget, grid, load_study, trial_key
from sweeper.spec import SpecError, load_spec, outside, parse_spec
from sweeper.store import ClaimHeld, TrialStore
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


def opened(tmp_path, **overrides):
    spec = load_spec(synthetic_spec(tmp_path, **overrides))
    store = TrialStore(spec.database_url())
    store.upgrade()
    store.open_sweep(spec.name, stored_spec(spec), spec.fingerprint(), spec.objective.metric, spec.objective.mode)
    return spec, spec.database_url(), store


def test_known_configurations_are_tried_first_and_enqueued_once_across_driver_kills(tmp_path):
    known = [{"learning_rate": 0.001, "batch_size": 32, "num_epochs": 2}, {"learning_rate": 0.005}]
    spec, url, store = opened(tmp_path, budget={"trials": 4, "max_concurrent": 2}, search={"enqueue": known})
    SweepSearch(spec, url)  # killed before it asked for anything: the two wait in the study
    first = SweepSearch(spec, url)
    a = run_trial(store, spec, first)
    b = first.suggest()  # asked, then the driver dies
    assert {k: a.params[k] for k in known[0]} == known[0] and b.params["learning_rate"] == 0.005
    resumed = SweepSearch(spec, url)
    assert [s.key for s in resumed.pending] == [b.key]
    later = [resumed.suggest() for _ in range(3)]
    assert [s.key for s in later] == [b.key, "t0002", "t0003"] and resumed.suggest() is None
    assert all(s.params["learning_rate"] not in (0.001, 0.005) for s in later[1:])
    trials = optuna.load_study(study_name=spec.name, storage=url).trials
    assert len(trials) == 4 and [t.user_attrs.get("sweeper_enqueued") for t in trials] == [0, 1, None, None]
    store.engine.dispose()


def report_rounds(store, spec, search, s, rounds, finish=True):
    for n in range(1, rounds + 1):
        store.round_reported(spec.name, s.key, RoundRecord(n, {"accuracy": 0.1, "eval_loss": 1.0}, {}))
        search.round_reported(s.key, n, 0.1)
    if finish:
        store.trial_finished(spec.name, s.key, "stopped", "asha")
        search.finished(s.key, 0.1, error=False)


def test_max_compute_counts_what_trials_spent_and_what_running_ones_are_started_for(tmp_path):
    known = [{"num_epochs": 2}, {"num_epochs": 3}, {"num_epochs": 4}]  # 2 rounds an epoch (small_spec)
    spec, url, store = opened(tmp_path, budget={"trials": 10, "max_concurrent": 2, "max_compute": 5},
                              search={"enqueue": known})
    search = SweepSearch(spec, url)
    s1, s2 = search.suggest(), search.suggest()
    for s in (s1, s2):
        store.trial_started(spec.name, s.key, s.params)
    assert search.suggest() is None and search.waiting_for_compute and not search.done()  # 2 + 3 committed
    report_rounds(store, spec, search, s1, rounds=2)  # ASHA stopped it after 1 epoch: 1 + 3 committed
    s3 = search.suggest()
    assert s3.params["num_epochs"] == 4 and search.suggest() is None
    store.trial_started(spec.name, s3.key, s3.params)
    report_rounds(store, spec, search, s2, rounds=6)
    report_rounds(store, spec, search, s3, rounds=2)  # 1 + 3 + 1 epochs spent: the budget is
    assert search.suggest() is None and not search.waiting_for_compute and search.done()
    store.engine.dispose()


def test_compute_in_tokens_extrapolates_a_running_trial_at_its_own_rate_or_the_others():
    row = lambda key, rounds, tokens: SimpleNamespace(trial_key=key, rounds=rounds, tokens_seen=tokens)  # noqa: E731
    rows = [row("t0000", 4, 4000), row("t0001", 2, 3000)]  # 2 and 1 epochs (2 rounds an epoch)
    assert compute_used(rows, {}, 2, "tokens") == 7000
    assert compute_used(rows, {}, 2, "epochs") == 3
    # t0001 runs for 3 epochs at 3000 a epoch; t0002, not yet reported, at the mean rate (2000 and 3000)
    assert compute_used(rows, {"t0001": 3, "t0002": 2}, 2, "tokens") == 7000 + 6000 + 5000


@pytest.mark.parametrize("kind", ["random", "grid", "gp"])
def test_each_sampler_proposes_complete_configs_from_the_space(tmp_path, kind):
    spec, url, store = opened(tmp_path, budget={"trials": 4, "max_concurrent": 1},
                              search={"sampler": kind, "startup_trials": 2, "seed": 3})
    search = SweepSearch(spec, url)
    assert type(search.study.sampler).__name__ == {"random": "RandomSampler", "grid": "GridSampler",
                                                   "gp": "GPSampler"}[kind]
    made = [run_trial(store, spec, search) for _ in range(4)]  # GP models the results after 2
    for s in made:
        assert set(HYPERPARAMETERS) <= set(s.params) | set(spec.fixed)
        for name, value in s.params.items():
            assert outside(spec.space().params[name], value) is None, (name, value)
    if kind == "grid":
        assert all(s.params["num_epochs"] in (2, 3, 4) and s.params["warmup_ratio"] in grid(spec.space())["warmup_ratio"]
                   for s in made)
    store.engine.dispose()


def test_a_finished_sweep_given_more_trials_continues_its_study_and_nothing_else_may_change(tmp_path):
    spec, url, store = opened(tmp_path, budget={"trials": 2, "max_concurrent": 1})
    search = SweepSearch(spec, url)
    done = [run_trial(store, spec, search) for _ in range(2)]
    store.update_sweep(spec.name, status="completed")
    raw = yaml.safe_load(synthetic_spec(tmp_path, budget={"trials": 1, "max_concurrent": 1}).read_text())
    with pytest.raises(SpecError, match="1 is below the 2 trials the sweep has already started"):
        extend_budget(store, parse_spec(raw))
    with pytest.raises(SpecError, match="only budget.trials, budget.max_compute and budget.time_budget_s may change"):
        extend_budget(store, parse_spec({**raw, "budget": {"trials": 4, "max_concurrent": 1}, "seed": 99}))
    more = parse_spec({**raw, "budget": {"trials": 4, "max_concurrent": 1, "max_compute": 100}})
    other = store.claim(spec.name, owner="another-host:1")  # a driver elsewhere still runs it with the old budget
    with pytest.raises(ClaimHeld):
        extend_budget(store, more)
    store.release(spec.name, other)
    assert extend_budget(store, more) and not extend_budget(store, more)
    sweep = store.get_sweep(spec.name)
    assert (sweep.status, sweep.spec_fingerprint, sweep.spec["budget"]["trials"]) == ("interrupted", more.fingerprint(), 4)
    store.open_sweep(more.name, stored_spec(more), more.fingerprint(), "accuracy", "max")  # no longer refused
    again = SweepSearch(more, url)
    later = [again.suggest() for _ in range(2)]
    assert [s.key for s in later] == ["t0002", "t0003"] and again.suggest() is None
    assert all(s.params != d.params for s in later for d in done)
    store.engine.dispose()


def test_a_run_that_only_sampled_a_left_trial_does_not_make_the_next_run_repeat_its_point(sweep):
    """Found by the random driver-kill test: run 1 was killed right after asking t0000 (no parameter sampled), run 2
    sampled t0000's parameters and was killed before asking a trial, and run 3, seeded like run 2 (one trial
    started in both), proposed t0001 at t0000's very point."""
    spec, url, store = sweep
    load_study(spec, url).ask()  # run 1
    [left] = SweepSearch(spec, url).pending  # run 2 samples it, and is killed
    run_3 = SweepSearch(spec, url)
    [again] = run_3.pending
    assert again.params == left.params
    assert run_3.suggest() == again
    new = run_3.suggest()
    assert new.key == "t0001" and new.params != left.params
