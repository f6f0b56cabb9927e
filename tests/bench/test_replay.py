"""The replay benchmark (bench/replay.py) on small synthetic tables: its compute accounting, its policies' behaviour
and the shape of what it writes. Seconds, no training."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import replay  # noqa: E402


def _table(tmp_path, n_configs, good=None, name="t.jsonl"):
    return replay.Table.load(replay.write_synthetic_table(tmp_path / name, n_configs, good), evals_per_epoch=2)


class Oracle:
    """Always proposes the table's best configuration."""

    def __init__(self, table):
        self.params = max(table.configs, key=lambda c: np.nanmax(c.curves[0].holdout)).params

    def ask(self, number):
        return None, dict(self.params)

    def report(self, *args):
        return replay.CONTINUE

    def end(self, handle, reason):
        pass


def test_a_policy_that_picks_the_best_configuration_reaches_95_percent_at_that_curves_own_compute(tmp_path):
    table = _table(tmp_path, 24)
    best = max(table.configs, key=lambda c: np.nanmax(c.curves[0].holdout)).curves[0]
    first_at_95 = float(best.epoch[np.argmax(best.holdout >= 0.95 * table.best)])
    run = replay.simulate(Oracle(table), table, budget=50, concurrency=1, seed=0)
    assert replay.compute_to(run["events"], 0.95 * table.best) == pytest.approx(first_at_95)
    # two at a time: both trials' reported epochs count, so the same point costs more compute, never less
    two = replay.simulate(Oracle(table), table, budget=50, concurrency=2, seed=0)
    assert replay.compute_to(two["events"], 0.95 * table.best) > first_at_95


def test_random_search_needs_more_compute_when_the_one_good_configuration_is_rarer(tmp_path):
    # 1 good configuration in 6 vs in 36: random search needs ~6x the trials, and 3x must show in a median of 9
    # seeds. Each run goes on to its budget, so each table gets one that covers its need (seconds, not a minute).
    def median_to_95(table, budget):
        runs = [replay.simulate(replay.make_policy("random", spec, s), table, budget, 2, s) for s in range(9)]
        return statistics.median(replay.compute_to(r["events"], 0.95 * table.best) for r in runs)

    small, large = _table(tmp_path, 6, good=3, name="s.jsonl"), _table(tmp_path, 36, good=3, name="l.jsonl")
    spec = replay.replay_spec(small, 600, 2, 2, 0)
    assert median_to_95(large, 600) > 3 * median_to_95(small, 150)


def test_the_oracle_stop_bound_tries_random_searchs_configurations_and_never_needs_more_compute(tmp_path):
    # One trial at a time: the bound runs the same seeded configurations as random search, each trial that will
    # not reach the target for one round only, so it reaches 95% at the same trial and never later in compute.
    table = _table(tmp_path, 36, good=3)
    target = 0.95 * table.best
    spec = replay.replay_spec(table, 200, 1, 2, 0)
    for seed in range(6):
        random_ = replay.simulate(replay.make_policy("random", spec, seed), table, 200, 1, seed)
        bound = replay.simulate(replay.make_policy("oracle_stop", spec, seed, target), table, 200, 1, seed)
        reached = replay.compute_to(random_["events"], target)
        n = len(random_["configs"])
        assert bound["configs"][:n] == random_["configs"][:n]
        assert replay.compute_to(bound["events"], target) <= reached
        # a trial past its first round is one that reaches the target, or the last, cut by the budget
        winners = {e[3] for e in bound["events"] if e[1] >= target} | {bound["trials"] - 1}
        assert winners and all(e[4] == 1 for e in bound["events"] if e[3] not in winners)


def test_compute_never_exceeds_the_budget_and_every_event_is_a_recorded_round(tmp_path):
    table = _table(tmp_path, 24)
    spec = replay.replay_spec(table, 20, 2, 2, 0)
    run = replay.simulate(replay.make_policy("random", spec, 0), table, 20, 2, 0)
    computes = [e[0] for e in run["events"]]
    assert computes == sorted(computes) and computes[-1] <= 20
    recorded = {round(v, 5) for c in table.configs for cv in c.curves for v in cv.holdout}
    assert all(round(e[1], 5) in recorded for e in run["events"])


def test_sweepers_asha_stops_trials_so_it_runs_more_of_them_than_random_search(tmp_path):
    table = _table(tmp_path, 48)
    spec = replay.replay_spec(table, 40, 2, 2, 0)
    sweeper = [replay.simulate(replay.make_policy("sweeper", spec, s), table, 40, 2, s) for s in range(5)]
    random_ = [replay.simulate(replay.make_policy("random", spec, s), table, 40, 2, s) for s in range(5)]
    assert sum(r["stops"].get("asha", 0) for r in sweeper) > 0
    assert sum(r["trials"] for r in sweeper) > sum(r["trials"] for r in random_)


def test_a_repeat_is_a_trial_that_replays_a_curve_the_run_has_replayed_before(tmp_path):
    table = _table(tmp_path, 24)
    same = replay.simulate(Oracle(table), table, budget=50, concurrency=1, seed=0)  # one configuration, one curve
    assert same["trials"] > 1 and same["repeats"] == same["trials"] - 1
    spec = replay.replay_spec(table, 50, 1, 2, 0)
    random_ = replay.simulate(replay.make_policy("random", spec, 0), table, 50, 1, 0)
    assert random_["repeats"] == len(random_["configs"]) - len(set(random_["configs"])) < random_["trials"] - 1


def test_the_default_reduction_factor_is_4_and_the_ninth_pass_variants_name_theirs(tmp_path):
    table = _table(tmp_path, 48)
    spec = replay.replay_spec(table, 40, 2, 2, 0)
    factor = {name: replay.make_policy(name, spec, 1).scheduler._reduction_factor
              for name in ("sweeper", "sweeper_rf2", "sweeper_rf3_loss", "sweeper_tell_loss")}
    assert factor == {"sweeper": 4, "sweeper_rf2": 2, "sweeper_rf3_loss": 3, "sweeper_tell_loss": 2}
    spec = replay.replay_spec(table, 120, 2, 2, 0)
    stopped = {name: sum(replay.simulate(replay.make_policy(name, spec, s), table, 120, 2, s)["stops"].get("asha", 0)
                         for s in range(3)) for name in ("sweeper", "sweeper_rf2")}
    assert stopped["sweeper"] > stopped["sweeper_rf2"]  # a quarter kept at each rung, not a half


def test_the_tell_loss_variant_tells_the_sampler_each_trials_best_holdout_loss(tmp_path):
    import optuna

    table = _table(tmp_path, 48)
    spec = replay.replay_spec(table, 40, 2, 2, 0)
    policy = replay.make_policy("sweeper_tell_loss", spec, 1)
    replay.simulate(policy, table, 40, 2, 1)
    done = policy.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert policy.study.direction == optuna.study.StudyDirection.MINIMIZE and done
    losses = {round(v, 5) for c in table.configs for cv in c.curves for v in cv.loss}
    # the best loss so far: at most every loss it reported (ASHA's last round, withheld from the study, may be lower)
    assert all(round(t.value, 5) in losses and t.value <= min(t.intermediate_values.values(), default=t.value)
               for t in done)


def test_patience_is_transformers_rule_best_loss_before_the_round_and_min_delta():
    one = replay.Patience(1, 0.005)
    assert [one.stop(x) for x in (1.0, 0.9, 0.898)] == [False, False, True]  # improved by less than min_delta
    two = replay.Patience(2, 0.0)
    # 0.95 is worse than 0.9 (1), 0.91 still is (2): stop; a new best in between would have reset the count
    assert [two.stop(x) for x in (1.0, 0.9, 0.95, 0.91)] == [False, False, False, True]
    reset = replay.Patience(2, 0.0)
    assert [reset.stop(x) for x in (1.0, 1.1, 0.9, 0.95)] == [False, False, False, False]


def test_the_pruned_variant_tells_stopped_trials_pruned_with_their_intermediate_values(tmp_path):
    import optuna

    table = _table(tmp_path, 48)
    spec = replay.replay_spec(table, 40, 2, 2, 0)
    default, pruned = replay.make_policy("sweeper", spec, 1), replay.make_policy("sweeper_pruned", spec, 1)
    stopped = replay.simulate(default, table, 40, 2, 1)["stops"].get("asha", 0)
    replay.simulate(pruned, table, 40, 2, 1)
    states = [t.state for t in pruned.study.get_trials(deepcopy=False)]
    assert stopped > 0 and optuna.trial.TrialState.PRUNED in states
    assert all(t.intermediate_values for t in pruned.study.get_trials(deepcopy=False)
               if t.state == optuna.trial.TrialState.PRUNED)
    assert optuna.trial.TrialState.PRUNED not in [t.state for t in default.study.get_trials(deepcopy=False)]


def test_lr_first_points_stratify_the_log_learning_rate_and_hold_the_rest_at_the_middle(tmp_path):
    table = _table(tmp_path, 6)
    space = replay.replay_spec(table, 20, 2, 2, 0).space()
    points = replay.lr_first_points(space, 5, seed=3)
    slices = sorted(int((np.log10(p["learning_rate"]) + 5) / 3 * 5) for p in points)  # [1e-5, 1e-2] in 5 slices
    assert slices == [0, 1, 2, 3, 4]
    assert {(p["batch_size"], p["num_epochs"], p["lora_r"], p["lr_scheduler_type"]) for p in points} == \
        {(32, 4, 16, "constant_with_warmup")}
    assert points != replay.lr_first_points(space, 5, seed=4) and replay.lr_first_points(space, 0, 3) == []


def test_the_lr_first_variant_tries_those_points_first_then_samples(tmp_path):
    table = _table(tmp_path, 24)
    spec = replay.replay_spec(table, 30, 2, 2, 0)
    policy = replay.make_policy("sweeper_lr_first5", spec, 2)
    replay.simulate(policy, table, 30, 2, 2)
    trials = policy.study.get_trials(deepcopy=False)
    expected = [p["learning_rate"] for p in replay.lr_first_points(spec.space(), 5, 2)]
    assert [t.params["learning_rate"] for t in trials[:5]] == pytest.approx(expected)
    assert len(trials) > 5 and len({t.params["batch_size"] for t in trials}) > 1


def test_the_lr_spread_variant_fixes_only_the_learning_rate_of_its_first_trials(tmp_path):
    table = _table(tmp_path, 24)
    spec = replay.replay_spec(table, 30, 2, 2, 0)
    policy = replay.make_policy("sweeper_lr_spread5", spec, 2)
    replay.simulate(policy, table, 30, 2, 2)
    first = policy.study.get_trials(deepcopy=False)[:5]
    expected = [p["learning_rate"] for p in replay.lr_first_points(spec.space(), 5, 2)]
    assert [t.params["learning_rate"] for t in first] == pytest.approx(expected)
    assert len({(t.params["batch_size"], t.params["num_epochs"]) for t in first}) > 1  # the rest: random draws


def test_the_qmc_variant_tries_sobol_points_first_spread_over_each_parameter(tmp_path):
    table = _table(tmp_path, 24)
    spec = replay.replay_spec(table, 30, 2, 2, 0)
    points = replay.qmc_points(spec.space(), 8, seed=2)
    # a scrambled Sobol set of 8 puts one point in each eighth of every [0, 1) coordinate: here the log learning rate
    assert sorted(int((np.log10(p["learning_rate"]) + 5) / 3 * 8) for p in points) == list(range(8))
    assert points != replay.qmc_points(spec.space(), 8, seed=3) and replay.qmc_points(spec.space(), 0, 2) == []
    policy = replay.make_policy("sweeper_qmc5", spec, 2)
    replay.simulate(policy, table, 30, 2, 2)
    trials = policy.study.get_trials(deepcopy=False)
    expected = [p["learning_rate"] for p in replay.qmc_points(spec.space(), 5, 2)]
    assert [t.params["learning_rate"] for t in trials[:5]] == pytest.approx(expected) and len(trials) > 5


def test_tpe_variants_pass_their_settings_to_the_sampler_and_say_independent_or_multivariate(tmp_path):
    table = _table(tmp_path, 6)
    spec = replay.replay_spec(table, 20, 2, 2, 0)
    default = replay.make_policy("sweeper", spec, 1).study
    independent = replay.make_policy("sweeper_tpe_independent", spec, 1).study
    ends = replay.make_policy("sweeper_tpe_endpoints_multivariate", spec, 1).study
    assert default.sampler._is_multivariate(default) and not independent.sampler._is_multivariate(independent)
    assert ends.sampler._is_multivariate(ends) and ends.sampler._parzen_estimator_parameters.consider_endpoints
    assert independent.sampler._n_startup_trials == default.sampler._n_startup_trials


def test_start_up_variants_build_the_products_sampler_and_the_earlier_passes_keep_their_independent_tpe(tmp_path):
    table = _table(tmp_path, 6)
    spec = replay.replay_spec(table, 20, 2, 2, 0)
    clean, earlier = (replay.make_policy(name, spec, 1).study for name in ("sweeper_startup5_mv", "sweeper_startup5"))
    assert clean.sampler._n_startup_trials == earlier.sampler._n_startup_trials == 5
    assert clean.sampler._is_multivariate(clean) and not earlier.sampler._is_multivariate(earlier)
    assert replay.make_policy("sweeper_startup5_mv", spec, 1).spec.search.startup_trials == 5  # through the spec


def test_a_charged_evaluation_adds_its_cost_to_every_round_and_more_rounds_cost_more(tmp_path):
    path = replay.write_synthetic_table(tmp_path / "t.jsonl", 12)
    free, charged = replay.Table.load(path, 2), replay.Table.load(path, 2, eval_cost=0.25)
    for a, b in zip(free.configs, charged.configs):
        rounds = np.arange(1, len(a.curves[0].epoch) + 1)
        assert list(a.curves[0].cost) == list(a.curves[0].epoch)
        assert b.curves[0].cost == pytest.approx(a.curves[0].epoch + 0.25 * rounds)
    best = max(charged.configs, key=lambda c: np.nanmax(c.curves[0].holdout)).curves[0]
    at = int(np.argmax(best.holdout >= 0.95 * charged.best))
    run = replay.simulate(Oracle(charged), charged, budget=50, concurrency=1, seed=0)
    assert replay.compute_to(run["events"], 0.95 * charged.best) == pytest.approx(best.epoch[at] + 0.25 * (at + 1))


def test_the_measured_evaluation_cost_is_a_rounds_untimed_seconds_over_an_epochs_training_seconds(tmp_path):
    header = {"kind": "header", "columns": ["round", "epoch", "train_s"]}
    # 2 rounds, 1 epoch: 10 s of training an epoch; 16 s wall - 2 s of test passes - 10 s training = 4 s, 2 s a round
    curves = [{"kind": "curve", "wall_s": 16.0, "test_s": 2.0, "rounds": [[1, 0.5, 5.0], [2, 1.0, 10.0]]},
              {"kind": "curve", "wall_s": 30.0, "test_s": 0.0, "rounds": [[1, 1.0, 10.0], [2, 2.0, 20.0]]}]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in [header, *curves]) + '{"kind": "cu')  # a cut last line
    assert replay.measured_eval_cost(path) == pytest.approx((0.2 + 0.5) / 2)
    with pytest.raises(ValueError, match="--eval-cost"):  # a synthetic table has no timings
        replay.measured_eval_cost(replay.write_synthetic_table(tmp_path / "s.jsonl", 4))


def test_rungs_that_wait_stop_fewer_trials_than_asha_and_the_loss_rung_judges_loss(tmp_path):
    table = _table(tmp_path, 48)
    spec = replay.replay_spec(table, 40, 2, 2, 0)

    def stopped(name):
        return sum(replay.simulate(replay.make_policy(name, spec, s), table, 40, 2, s)["stops"].get("asha", 0)
                   for s in range(4))

    asha, waiting = stopped("sweeper"), stopped("sweeper_rungs_wait")
    assert asha > waiting
    loss = replay.make_policy("sweeper_rungs_loss", spec, 0)
    assert loss.rung_metric == "holdout_loss" and loss.scheduler.rungs.sign == -1.0


def test_the_half_epoch_variant_replays_every_round_with_the_same_targets_and_patience_in_epochs(tmp_path):
    path = replay.write_synthetic_table(tmp_path / "t.jsonl", 24)
    replay._init(str(path), 1, 30.0, 2)
    one_epoch = replay.policy_spec("sweeper", replay._table_for(1), 30, 2, 1, 0)
    half = replay.policy_spec("sweeper_half_epoch", replay._table_for(1), 30, 2, 1, 0)
    assert (half.scheduler.evals_per_epoch, one_epoch.scheduler.evals_per_epoch) == (2, 1)
    assert half.early_stopping.patience == 2 * one_epoch.early_stopping.patience
    run = replay.run_one(("sweeper_half_epoch", 0))
    assert set(replay._WORK["tables"]) == {1, 2} and run["trials"] > 0  # its rounds come from the 2-an-epoch table
    assert replay._table_for(2).best >= replay._table_for(1).best  # so its targets must be the 1-an-epoch table's


def test_the_table_keeps_only_epoch_end_rounds_for_one_evaluation_an_epoch(tmp_path):
    path = replay.write_synthetic_table(tmp_path / "t.jsonl", 6)
    two, one = replay.Table.load(path, 2), replay.Table.load(path, 1)
    for a, b in zip(two.configs, one.configs):
        assert list(b.curves[0].epoch) == list(a.curves[0].epoch[1::2]) == list(range(1, a.params["num_epochs"] + 1))


def test_smoke_writes_the_issue_shape_and_a_regret_plot(tmp_path):
    out = tmp_path / "replay.json"
    assert replay.main(["--smoke", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (task,) = report["tasks"].values()
    assert set(task["policies"]) == set(replay.POLICIES)
    for policy in task["policies"].values():
        assert {"compute_to_95", "compute_to_95_iqr", "compute_to_99", "compute_to_99_iqr", "seeds"} <= set(policy)
        assert policy["seeds"] == 3 and len(policy["compute_to_95_iqr"]) == 2
    assert (tmp_path / "replay_regret_synthetic.png").stat().st_size > 1000
    assert task["goals"]["met_regret_at_every_budget"] == (task["goals"]["regret_points_behind"] == [])


def test_the_regret_goal_lists_each_budget_point_where_another_policy_is_ahead_of_sweeper():
    n = replay.REGRET_POINTS
    curve = lambda *head: [*head, *[0.0] * (n - len(head))]  # noqa: E731 - regret at the first points, then 0
    summary = {"sweeper": {"regret_median": curve(None, 0.5, 0.2)}, "random": {"regret_median": curve(None, 0.4, 0.3)},
               "grid": {"regret_median": curve(0.9, 0.6, 0.1)},
               "sweeper_rf2": {"regret_median": curve(0.0, 0.0, 0.0)},  # a variant of sweeper: not a rival
               "oracle_stop": {"regret_median": curve(0.0, 0.0, 0.0)}}  # a bound: not a rival
    step = 60 / (n - 1)
    assert replay.regret_points_behind(summary, 60) == [[0.0, None, 0.9, "grid"], [step, 0.5, 0.4, "random"],
                                                        [2 * step, 0.2, 0.1, "grid"]]
    assert replay.regret_points_behind({"random": summary["random"]}, 60) is None


@pytest.mark.slow
def test_record_curves_smoke_records_every_round_and_resumes_without_repeating(tmp_path):
    """Real training (2 one-epoch configurations, one of them with a second seed): each job is one line with both
    rounds of its curve, and a second run finds every job recorded and trains nothing."""
    import subprocess

    out = tmp_path / "curves.jsonl"
    command = [sys.executable, str(ROOT / "bench" / "record_curves.py"), "--task", "restaurant8k-small", "--smoke",
               "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, timeout=600)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["versions"]["torch"]
    curves = lines[1:]
    assert sorted((c["id"], c["seed"]) for c in curves) == sorted({(c["id"], c["seed"]) for c in curves})
    assert len(curves) == 3 and all(len(c["rounds"]) == 2 for c in curves)  # 1 epoch, 2 evaluations
    assert all(r[lines[0]["columns"].index("test")] is not None for c in curves for r in c["rounds"])
    table = replay.Table.load(out)
    assert [len(c.curves) for c in table.configs] == [2, 1]
    again = subprocess.run(command, check=True, env=env, capture_output=True, text=True, timeout=600)
    assert "seed=" not in again.stdout and out.read_text().count("\n") == 4


@pytest.mark.slow
def test_a_real_tune_run_with_a_replaying_trainable_decides_as_the_simulation(tmp_path, shared_ray):
    """bench/replay_tune.py: sweeper's searcher and ASHA, plain OptunaSearch, and random search with Ray's
    AsyncHyperBand, each in a real Tune run, take trial by trial the decisions the simulation takes (configuration,
    round it ended at). One at a time, so no race of two trials decides; the benchmark's own runs at two at a time
    are reported in bench/RESULTS.md."""
    import subprocess

    out = tmp_path / "replay_tune.json"
    command = [sys.executable, str(ROOT / "bench" / "replay_tune.py"), "--smoke", "--concurrency", "1",
               "--seconds-per-epoch", "0.2", "--policies", "sweeper,tune_optuna,asha_random", "--address", shared_ray,
               "--json", str(out)]
    done = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    policies = json.loads(out.read_text())["tasks"]["synthetic"]
    assert sorted(policies) == ["asha_random", "sweeper", "tune_optuna"]
    for (run,) in policies.values():
        assert len(run["simulated"]) == 6
        assert run["tune"] == run["simulated"], run
    # the policies differ: ASHA stops some trials of random search, OptunaSearch runs each to its end
    assert policies["asha_random"][0]["simulated"] != policies["tune_optuna"][0]["simulated"]


def test_replay_vs_live_agrees_with_live_runs_drawn_from_the_replay_and_not_with_three_times_their_cost(tmp_path):
    import replay_vs_live

    table_path = replay.write_synthetic_table(tmp_path / "t.jsonl", 30)
    table = replay.Table.load(table_path, 1)

    def live_file(name, scale):  # "live" random runs: the replay's own, one trial at a time, their cost scaled
        runs = []
        for seed in range(6):
            run = replay.simulate(replay.make_policy("random", replay.replay_spec(table, 20, 1, 1, seed), seed),
                                  table, 20, 1, seed)
            runs.append({"method": "random", "seed": seed,
                         "events": [{"trial": f"t{e[3]:03d}", "compute": e[0] * scale, "value": e[1]}
                                    for e in run["events"]]})
        path = tmp_path / name
        path.write_text(json.dumps({"args": {"task": "synthetic", "budget": 20 * scale, "space": "lora-default",
                                             "command": "x"}, "runs": runs}))
        return path

    out = tmp_path / "out.json"
    for name, scale, agrees in (("same.json", 1, True), ("costly.json", 3, False)):
        assert replay_vs_live.main([str(live_file(name, scale)), "--table", str(table_path), "--seeds", "30",
                                    "--json", str(out)]) == 0
        result = json.loads(out.read_text())["methods"]["random"]
        assert result["agrees"] is agrees, result
        if scale == 1:  # random search with seed s replays the same configurations: the same compute, seed by seed
            assert result["replay_to95_at_live_seeds"] == result["live_to95"]


def test_replay_vs_live_compares_each_live_random_trial_with_the_curve_of_the_configuration_it_snaps_to(tmp_path):
    import replay_vs_live

    table = replay.Table.load(replay.write_synthetic_table(tmp_path / "t.jsonl", 30), 1)
    target = 0.95 * table.best

    def live_runs(lift):  # "live" random runs: the replay's own trials, each value `lift` above the recorded one
        runs = []
        for seed in range(3):
            run = replay.simulate(replay.make_policy("random", replay.replay_spec(table, 40, 1, 1, seed), seed),
                                  table, 40, 1, seed)
            runs.append({"method": "random", "seed": seed,
                         "events": [{"trial": f"t{e[3]:03d}", "value": e[1] + lift} for e in run["events"]]})
        return runs

    same = replay_vs_live.random_trials(table, live_runs(0.0), "lora-default", target)
    assert same["gap_median"] == 0.0 and same["trials"] >= 3 * 5
    assert same["live_share_reaching_target"] == same["table_share_reaching_target"] > 0
    lifted = replay_vs_live.random_trials(table, live_runs(0.3), "lora-default", target)
    assert lifted["gap_median"] == pytest.approx(0.3)
    assert lifted["live_share_reaching_target"] > lifted["table_share_reaching_target"]


def test_replay_vs_live_compares_a_tables_jobs_trained_again_job_by_job(tmp_path):
    import replay_vs_live

    table = replay.write_synthetic_table(tmp_path / "t.jsonl", 12)
    lines = [json.loads(line) for line in table.read_text().splitlines()]
    for row in lines[1:4]:  # three jobs trained again, each 0.2 higher at every round
        row["rounds"] = [[*r[:6], r[6] + 0.2, *r[7:]] for r in row["rounds"]]
    again = tmp_path / "again.jsonl"
    again.write_text("".join(json.dumps(line) + "\n" for line in lines[:4]))
    result = replay_vs_live.retrained(table, again, target=0.5)
    assert (result["jobs"], result["higher_again"], result["lower_again"]) == (3, 3, 0)
    assert result["gap_mean"] == pytest.approx(0.2) and result["gap_median"] == pytest.approx(0.2)
    assert result["again_reaching_target"] >= result["table_reaching_target"]


def test_record_curves_shards_split_the_jobs_left_between_them_without_overlap():
    import record_curves

    configs = record_curves.grid()[:12]
    done = {(0, 1), (0, 2), (3, 1)}
    left = [(c["id"], s) for c, s in record_curves.todo_jobs(configs, done)]
    shards = [[(c["id"], s) for c, s in record_curves.todo_jobs(configs, done, f"{k}/3")] for k in range(3)]
    assert sorted(sum(shards, [])) == sorted(left) and len(set(sum(shards, []))) == len(left) == 12 + 3 - 3
    with pytest.raises(SystemExit, match="--shard"):
        record_curves.todo_jobs(configs, done, "3/3")
    # --ids: those configurations only, each with the seeds the grid gives it (a second one every 5th)
    a, b, c = (configs[i]["id"] for i in (0, 5, 7))
    assert [(x["id"], s) for x, s in record_curves.todo_jobs(configs, set(), ids={a, b, c})] == \
        [(a, 1), (a, 2), (b, 1), (b, 2), (c, 1)]


def test_record_curves_merges_shards_once_and_refuses_one_recorded_on_other_data(tmp_path):
    import record_curves

    table = replay.write_synthetic_table(tmp_path / "table.jsonl", 4)
    lines = table.read_text().splitlines()
    header, curves = lines[0], lines[1:]
    table.write_text("\n".join([header, *curves[:2]]) + "\n")
    shard = tmp_path / "shard.jsonl"
    shard.write_text("\n".join([header, *curves[1:], '{"kind": "cu']) + "\n")  # one already in, a cut last line
    assert record_curves.merge(table, [shard]) == 2 and record_curves.merge(table, [shard]) == 0
    assert [json.loads(line)["id"] for line in table.read_text().splitlines()[1:]] == [0, 1, 2, 3]
    other = json.loads(header)
    other["data"]["train"]["path"] = "elsewhere.json"
    shard.write_text(json.dumps(other) + "\n" + curves[0] + "\n")
    with pytest.raises(SystemExit, match="other data"):
        record_curves.merge(table, [shard])
