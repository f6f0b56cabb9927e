"""What the budget buys, said before the sweep: the probe on real MiniLM, `validate --probe`, and a `run` whose time
budget cannot buy one round (the synthetic task: its round time is set here, never the machine's speed)."""

from __future__ import annotations

import json
import math
import sqlite3

import optuna
import pytest
from helpers import run_cli, small_spec, synthetic_spec

from sweeper.budget import PROBE_STEPS, CostModel, Plan, probe_shapes, run_probe
from sweeper.spec import load_spec
from sweeper.trial_config import template
from trainers.models import resolve_model


@pytest.mark.slow  # real MiniLM training, two shapes of a few steps (~10 s on 2 cores)
def test_the_probe_times_real_minilm_steps_and_an_evaluation(tmp_path):
    spec = load_spec(small_spec(tmp_path))  # lora-quick: batch sizes 16 and 32
    measured = run_probe(template(spec, resolve_model(spec.model.path), torch_threads=1), probe_shapes(spec))
    assert [m["batch_size"] for m in measured] == [16, 32]
    for m in measured:
        assert 1 <= m["steps"] <= PROBE_STEPS and m["train_s"] > 0 and m["eval_s"] > 0, m
        assert m["train_rows"] >= 96 and m["device"] == "cpu", m  # restaurant8k-small: 96 rows, more if windowed
        assert m["first_report_s"] > m["train_s"] + m["eval_s"], m  # the model's load comes first
    model = CostModel.fit(measured, spec.scheduler.evals_per_epoch)
    assert model.step_s(32) >= model.step_s(16) > 0  # a step of 32 examples costs no less than one of 16
    assert model.round_steps(16) == math.ceil(math.ceil(model.train_rows / 16) / 2)  # 2 rounds an epoch
    assert Plan.make(spec, model).trial_s > 0


def test_validate_probe_prints_the_plan_and_the_warning(tmp_path):
    spec = synthetic_spec(tmp_path, round_seconds=1.0, budget={"trials": 8, "max_concurrent": 2, "time_budget_s": 3})
    plain = run_cli(["validate", spec], tmp_path, check=True)
    assert "sweeper validate --probe" in plain.stdout and "probe on" not in plain.stdout  # opt-in: no training
    result = run_cli(["validate", spec, "--probe"], tmp_path, check=True)
    out = result.stdout
    assert "probe on synthetic: start-up 0 s, a round 1" in out, out
    assert "budget: 3 s x 2 at a time buys" in out and "first ASHA rung at 1 round(s)" in out, out
    # 8 trials of at least 1 s to their first rung, 2 at a time: 4 s or more, in a 3 s budget.
    assert "warning: budget.time_budget_s: 3 s cannot fill the first ASHA rung for budget.trials (8)" in out, out


@pytest.mark.slow  # a sweep on Ray (~30 s)
def test_no_trial_is_started_that_cannot_reach_its_first_round(tmp_path, shared_ray):
    """A 6 s budget and rounds of 8 s: the probe says so before the sweep, and no trial starts. (Before the probe,
    the first two started with nothing measured yet and were stopped at the deadline with 0 rounds.) One batch
    size, so the probe times one shape."""
    space = {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    fixed = {"batch_size": 16, "num_epochs": 2, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
             "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
    spec = synthetic_spec(tmp_path, round_seconds=8.0, budget={"trials": 6, "max_concurrent": 2, "time_budget_s": 6},
                          search_space=space, fixed=fixed)
    result = run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    assert "probe on synthetic: start-up" in result.stdout, result.stdout + result.stderr
    assert "to reach its first round, more than the 6 s budget" in result.stdout, result.stdout
    db = tmp_path / "state" / "sweeper.db"
    with sqlite3.connect(db) as con:
        assert con.execute("select trial_key, rounds from sweeper_trials").fetchall() == []
        assert con.execute("select status from sweeper_sweeps").fetchall() == [("completed",)]
    study = optuna.load_study(study_name="synthetic-sweep", storage=f"sqlite:///{db}").trials
    assert [t.state.name for t in study] in ([], ["PRUNED"]), study  # asked, never started: closed pruned


@pytest.mark.slow  # a sweep on Ray (~15 s)
def test_asha_rungs_in_training_steps(tmp_path, shared_ray):
    """`scheduler.rung_unit: steps`: rounds report the optimizer steps so far and ASHA's rungs count them. Rounds
    here are 2 or 3 steps (96 rows, batch 16 or 32, 2 rounds an epoch), so a 4-step first rung is round 2; in
    rounds, a grace period of 4 would let no trial be stopped before its 4th round."""
    spec = synthetic_spec(tmp_path, budget={"trials": 8, "max_concurrent": 2},
                          scheduler={"type": "asha", "grace_period": 4, "reduction_factor": 2, "evals_per_epoch": 2,
                                     "rung_unit": "steps"},
                          early_stopping={"patience": 8})
    run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    with sqlite3.connect(tmp_path / "state" / "sweeper.db") as con:
        trials = con.execute("select trial_key, stop_reason, rounds from sweeper_trials").fetchall()
    stopped = [t for t in trials if t[1] == "asha"]
    assert all(t[2] >= 2 for t in stopped) and any(t[2] < 4 for t in stopped), trials  # judged before round 4
    results = list((tmp_path / "state" / "ray" / "synthetic-sweep").glob("*/result.json"))
    steps = [json.loads(line)["steps"] for path in results for line in path.read_text().splitlines()]
    assert steps and all(s % 2 == 0 or s % 3 == 0 for s in steps), steps  # whole rounds of 2 or 3 steps
