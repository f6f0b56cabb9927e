"""sweeper.budget: the cost model's arithmetic, the plan and its warnings, and admission by the probe's estimate
(sweeper.search on a real SQLite study, with a test clock: the machine's speed never decides a result)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import optuna
import pytest
from helpers import synthetic_spec

from sweeper.budget import CostModel, Plan, measurement, probe_params, probe_shapes, step_line
from sweeper.controller import _scheduler
from sweeper.search import SweepSearch
from sweeper.spec import load_spec
from sweeper.store import TrialStore
from trainers.base import RoundRecord


def spec_with(tmp_path, **overrides):
    overrides.setdefault("search_space", "lora-default")  # batch sizes 8 to 64, 1 to 6 epochs
    return load_spec(synthetic_spec(tmp_path, **overrides))


def model(**kw) -> CostModel:
    # 800 rows; a step 0.1 s + 0.01 s an example; an evaluation 2 s; start-up 5 s; 1 round an epoch
    return CostModel(**{"train_rows": 800, "evals_per_epoch": 1, "startup_s": 5.0, "eval_s": 2.0,
                        "step_fixed_s": 0.1, "step_example_s": 0.01, **kw})


def test_a_step_is_a_line_through_two_batch_sizes_and_proportional_through_one():
    assert step_line([(8, 0.18), (64, 0.74)]) == pytest.approx((0.1, 0.01))
    assert step_line([(16, 0.32)]) == pytest.approx((0.0, 0.02))
    # Noise that would make a step of batch 0 cost less than nothing: proportional through the larger batch.
    assert step_line([(8, 0.05), (64, 1.28)]) == pytest.approx((0.0, 0.02))
    # Larger batches measured cheaper (noise): never a negative cost per example.
    fixed, per_example = step_line([(8, 0.5), (64, 0.4)])
    assert per_example == 0.0 and fixed == pytest.approx(0.5)


def test_rounds_and_trials_cost_what_their_steps_and_evaluations_do():
    m = model()
    assert m.round_steps(8) == 100 and m.round_steps(64) == 13  # ceil(800 / 64)
    assert m.round_s(8) == pytest.approx(100 * 0.18 + 2.0)
    assert m.round_s(64) == pytest.approx(13 * 0.74 + 2.0)
    assert m.first_round_s(8) == pytest.approx(5.0 + 20.0)
    assert m.trial_s(8, epochs=3) == pytest.approx(5.0 + 3 * 20.0)
    two = model(evals_per_epoch=2)  # two evaluations an epoch: half the steps a round, twice the rounds
    assert two.round_steps(8) == 50 and two.trial_s(8, 3) == pytest.approx(5.0 + 6 * (50 * 0.18 + 2.0))


def test_the_first_rung_in_steps_lands_on_the_first_round_at_or_past_it():
    m = model(evals_per_epoch=4)  # batch 8: 25 steps a round; batch 64: 4 steps a round
    assert m.rung_s(8, grace=1, unit="rounds") == pytest.approx(5.0 + 25 * 0.18 + 2.0)
    assert m.rung_s(8, grace=60, unit="steps") == pytest.approx(5.0 + 3 * (25 * 0.18 + 2.0))  # rounds 1-3
    assert m.rung_s(64, grace=60, unit="steps") == pytest.approx(5.0 + 15 * (4 * 0.74 + 2.0))


def test_a_trainer_that_does_not_time_its_steps_is_costed_by_its_round():
    measured = [{"batch_size": 8, "steps": 4, "first_report_s": 3.0, "wall_s": 3.0, "train_s": None, "step_s": None,
                 "eval_s": 0.0, "train_rows": 96, "device": "synthetic"}]
    m = CostModel.fit(measured, evals_per_epoch=2, overhead_s=1.5)
    assert m.round_s(8) == m.round_s(64) == 3.0 and m.first_round_s(64) == 4.5 and m.trial_s(8, 2) == 13.5


def test_fit_reads_the_trainers_timings():
    measured = [{"batch_size": 8, "steps": 4, "first_report_s": 10.0, "wall_s": 10.0, "train_s": 0.72, "step_s": 0.18,
                 "eval_s": 2.0, "train_rows": 800, "device": "cpu"},  # its start-up holds the first imports: 7.28 s
                {"batch_size": 64, "steps": 4, "first_report_s": 7.96, "wall_s": 8.0, "train_s": 3.5, "step_s": 0.74,
                 "eval_s": 2.0, "train_rows": 800, "device": "cpu"}]  # its first step took 0.54 s more: start-up
    m = CostModel.fit(measured, evals_per_epoch=1, overhead_s=1.0)
    assert (m.step_fixed_s, m.step_example_s) == pytest.approx((0.1, 0.01))
    assert m.startup_s == pytest.approx(3.0 + 1.0) and m.eval_s == 2.0  # the warm shape's start-up, plus the process


def test_a_probe_measurement_counts_steps_from_the_record():
    class Done:
        record = RoundRecord(1, {"eval_loss": 1.0}, {"examples_seen": 64, "time_train_s": 0.4, "time_eval_s": 1.0,
                                                     "time_checkpoint_s": 0.2, "device": "cpu",
                                                     "time_first_step_s": 0.16})
        reported_s = 3.0

    got = measurement(16, examples=100, reporter=Done(), wall_s=3.5)
    assert (got["steps"], got["train_s"], got["eval_s"], got["train_rows"]) == (4, 0.4, pytest.approx(1.2), 100)
    assert got["step_s"] == pytest.approx(0.08)  # the 3 steps after the first


def test_probe_shapes_are_the_smallest_and_largest_batch_with_valid_values(tmp_path):
    spec = spec_with(tmp_path)
    shapes = probe_shapes(spec)
    assert [s["batch_size"] for s in shapes] == [8, 64]
    assert shapes[0]["lora_r"] == 32  # the costliest adapter
    assert shapes[0]["warmup_ratio"] == 0.0  # lr_scheduler_type linear: warmup searched, its lowest value
    space = {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    fixed = spec_with(tmp_path, search_space=space, fixed={**spec.fixed, "batch_size": 16, "num_epochs": 2,
                                                           "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
                                                           "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16,
                                                           "lora_dropout": 0.0})
    assert len(probe_shapes(fixed)) == 1 and "batch_size" not in probe_params(fixed, 16)  # the trial's fixed one


def test_the_plan_warns_when_the_budget_cannot_fill_the_first_rung(tmp_path):
    spec = spec_with(tmp_path, budget={"trials": 20, "max_concurrent": 2, "time_budget_s": 150})
    plan = Plan.make(spec, model())
    # Batch 8, 16, 32, 64 equally likely: rounds of 20, 18.8, 18.2 and 11.6 s (13 steps of batch 64), start-up 5 s.
    rung = 5.0 + (20.0 + (50 * 0.26 + 2) + (25 * 0.42 + 2) + (13 * 0.74 + 2)) / 4
    assert plan.rung_s() == pytest.approx(rung)
    assert plan.fill_rung_s() == pytest.approx(10 * rung)  # 20 trials, 2 at a time
    [warning] = plan.warnings
    assert "budget.time_budget_s" in warning and "budget.trials (20)" in warning
    assert f"at least {math.ceil(10 * rung)}" in warning and "scheduler.grace_period" in warning
    text = "\n".join(plan.lines())
    assert "first ASHA rung at 1 round(s)" in text and f"warning: {warning}" in text
    assert "budget: 2.5 min x 2 at a time buys" in text


def test_no_warning_when_the_rung_fits_and_a_total_without_a_time_budget(tmp_path):
    fits = Plan.make(spec_with(tmp_path, budget={"trials": 4, "max_concurrent": 2, "time_budget_s": 3600}), model())
    assert fits.warnings == []
    unbounded = Plan.make(spec_with(tmp_path, budget={"trials": 4, "max_concurrent": 2}), model())
    assert unbounded.warnings == []
    [total] = [line for line in unbounded.lines() if line.startswith("no time budget")]
    assert f"~{unbounded.trial_s * 2:.3g} s" in total  # 4 trials, 2 at a time: two trials' time


def test_the_plan_warns_when_a_trial_cannot_reach_its_first_round(tmp_path):
    plan = Plan.make(spec_with(tmp_path, budget={"trials": 4, "max_concurrent": 1, "time_budget_s": 20},
                               scheduler={"type": "none", "evals_per_epoch": 1}), model())
    [warning] = plan.warnings  # batch 8: 25 s to its first round
    assert "batch size 8 needs ~25 s" in warning and "scheduler.evals_per_epoch" in warning


def test_steps_rungs_say_which_round_they_land_on(tmp_path):
    spec = spec_with(tmp_path, budget={"trials": 4, "max_concurrent": 2, "time_budget_s": 3600},
                     scheduler={"type": "asha", "grace_period": 60, "rung_unit": "steps", "evals_per_epoch": 4})
    text = "\n".join(Plan.make(spec, model(evals_per_epoch=4)).lines())
    assert "first ASHA rung at 60 training steps (round 3 of batch 8, round 15 of batch 64)" in text
    too_late = spec.model_copy(update={"scheduler": spec.scheduler.model_copy(update={"grace_period": 5000})})
    [warning] = Plan.make(too_late, model(evals_per_epoch=4)).warnings  # batch 8 x 6 epochs: 600 steps at most
    assert "scheduler.grace_period: 5000 steps, but the longest trial trains ~600" in warning


def test_rung_unit_rounds_keeps_older_fingerprints(tmp_path):
    default = spec_with(tmp_path)
    explicit = spec_with(tmp_path, scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2,
                                              "evals_per_epoch": 2, "rung_unit": "rounds"})
    steps = spec_with(tmp_path, scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2,
                                           "evals_per_epoch": 2, "rung_unit": "steps"})
    assert default.fingerprint() == explicit.fingerprint() != steps.fingerprint()


def test_rungs_judged_on_holdout_loss_rank_by_the_best_loss_so_far(tmp_path):
    asha = {"type": "asha", "grace_period": 1, "reduction_factor": 2, "evals_per_epoch": 2}
    default, objective, on_loss = (spec_with(tmp_path, scheduler=s) for s in (
        asha, {**asha, "rung_metric": "objective"}, {**asha, "rung_metric": "holdout_loss"}))
    # The earlier default, objective, stays out of the fingerprint: sweeps recorded before the change keep theirs.
    assert default.fingerprint() == on_loss.fingerprint() != objective.fingerprint()

    def decision(spec, second: dict) -> str:
        """ASHA's word on a second trial at the first rung, after a first trial reported there."""
        scheduler = _scheduler(spec)
        first, other = SimpleNamespace(trial_id="t0"), SimpleNamespace(trial_id="t1")
        for trial, result in ((first, {"objective": 0.5, "holdout_loss": 1.0}), (other, second)):
            scheduler.on_trial_add(None, trial)
            last = scheduler.on_trial_result(None, trial, {"round": 1, **result})
        return last

    higher_f1_higher_loss = {"objective": 0.6, "holdout_loss": 2.0}  # the rules disagree on this one
    assert decision(objective, higher_f1_higher_loss) == "CONTINUE"
    assert decision(default, higher_f1_higher_loss) == decision(on_loss, higher_f1_higher_loss) == "STOP"


def test_asha_keeps_the_best_quarter_at_a_rung_by_default(tmp_path):
    """Issue 13's ninth pass: a reduction factor of 4 (Ray's and Optuna's default) beat 2 on both replays."""
    default, halving = (spec_with(tmp_path, scheduler={"type": "asha", "grace_period": 1, "evals_per_epoch": 2, **s})
                        for s in ({}, {"reduction_factor": 2}))

    def fourth(spec) -> str:
        """ASHA's word on a fourth trial at the first rung, second best by holdout loss after the three before it."""
        scheduler = _scheduler(spec)
        for i, loss in enumerate((1.0, 2.0, 3.0, 1.6)):
            trial = SimpleNamespace(trial_id=f"t{i}")
            scheduler.on_trial_add(None, trial)
            last = scheduler.on_trial_result(None, trial, {"round": 1, "objective": 0.5, "holdout_loss": loss})
        return last

    assert default.scheduler.reduction_factor == 4
    # Ray cuts at the (1 - 1/factor) quantile of the trials before it: 2.0 with factor 2, 1.5 with factor 4
    assert fourth(halving) == "CONTINUE" and fourth(default) == "STOP"


# -- admission by the estimate --------------------------------------------------------------------------
@pytest.fixture
def clocked(tmp_path):
    spec = spec_with(tmp_path, budget={"trials": 10, "max_concurrent": 1, "time_budget_s": 100})
    store = TrialStore(spec.database_url())
    store.upgrade()
    now = [0.0]
    yield spec, now, SweepSearch(spec, spec.database_url(), clock=lambda: now[0])
    store.engine.dispose()


def test_the_first_trial_of_a_run_is_admitted_by_the_estimate(clocked):
    spec, now, search = clocked
    now[0] = 50.0  # the probe took 50 s: the deadline starts after it
    search.admit_by(lambda params: 120.0)  # every trial needs 120 s to its first round
    assert search.deadline == 150.0
    assert search.suggest() is None and search.out_of_time  # no measurement yet, and still held back
    assert optuna.load_study(study_name=spec.name, storage=spec.database_url()).trials == []  # nothing asked


def test_a_sampled_shape_too_slow_for_the_time_left_is_not_started(clocked):
    spec, now, search = clocked
    search.admit_by(lambda params: 10.0 if params is None else 10.0 * params["batch_size"] / 8)
    now[0] = 40.0  # 60 s left: the quickest trial fits; a batch-64 trial (80 s) would not
    started = []
    while (s := search.suggest()) is not None:
        started.append(s)
        search.round_reported(s.key, 1, 0.5)  # as estimated: ratio 1 (the clock does not move)
        search.finished(s.key, 0.5, error=False)
    assert search.out_of_time
    assert all(s.params["batch_size"] * 10.0 / 8 <= 60.0 for s in started)
    last = optuna.load_study(study_name=spec.name, storage=spec.database_url()).trials[-1]
    assert last.params["batch_size"] * 10.0 / 8 > 60.0
    assert last.state.name == "PRUNED" and "time budget" in last.user_attrs["not_started"]


def test_measured_rounds_correct_the_estimate(clocked):
    spec, now, search = clocked
    search.admit_by(lambda params: 20.0)
    first = search.suggest()
    now[0] = 10.0  # its first round came in 10 s, half the estimate: later trials need ~10 s
    search.round_reported(first.key, 1, 0.5)
    search.finished(first.key, 0.5, error=False)
    assert search.first_round_needed(None) == pytest.approx(10.0)
    now[0] = 85.0  # 15 s left: admitted by the corrected estimate, not by the probe's 20 s
    assert search.suggest() is not None
    now[0] = 95.0
    assert search.suggest() is None and search.out_of_time
