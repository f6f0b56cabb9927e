"""bench/adaptive_halving.py, AdaptiveHalving (a replay candidate the product does not use yet): ASHA's rungs and cutoff, stopping only on evidence (no Ray needed to run it;
Ray's own ASHAScheduler is the reference it must match when it waits for nothing)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from adaptive_halving import AdaptiveHalving  # noqa: E402


def test_without_waiting_it_decides_exactly_as_rays_asha():
    from ray.tune.schedulers import ASHAScheduler

    rng = random.Random(0)
    for mode in ("max", "min"):
        ray_asha = ASHAScheduler(time_attr="round", metric="v", mode=mode, max_t=8, grace_period=1, reduction_factor=2)
        mine = AdaptiveHalving(1, 2, 8, mode, min_trials=1, margin=0.0)
        decisions = []
        alive = {}
        for step in range(400):
            if len(alive) < 3:
                trial = SimpleNamespace(trial_id=f"t{step}")
                ray_asha.on_trial_add(None, trial)
                alive[trial.trial_id] = [trial, 0]
            trial_id = rng.choice(sorted(alive))
            trial, t = alive[trial_id]
            t += 1
            alive[trial_id][1] = t
            value = rng.random()
            theirs = ray_asha.on_trial_result(None, trial, {"round": t, "v": value}) == "STOP"
            ours = mine.stop(trial_id, t, value)
            decisions.append((theirs, ours))
            if theirs:
                ray_asha.on_trial_complete(None, trial, {"round": t, "v": value})
                del alive[trial_id]
        assert all(a == b for a, b in decisions), mode
        assert 20 < sum(a for a, _ in decisions) < len(decisions)  # it did stop trials, and not all of them


def test_a_rung_stops_nothing_until_min_trials_have_reached_it():
    rungs = AdaptiveHalving(1, 2, 8, "max", min_trials=4, margin=0.0)
    assert [rungs.stop(f"t{i}", 1, v) for i, v in enumerate([0.9, 0.8, 0.7, 0.6])] == [False] * 4
    assert rungs.stop("t4", 1, 0.1) is True  # the fifth, far below the top half of four recorded values
    assert rungs.stop("t5", 1, 0.85) is False


def test_a_value_inside_the_margin_below_the_cutoff_continues():
    rungs = AdaptiveHalving(1, 2, 8, "max", min_trials=2, margin=0.1)
    rungs.stop("a", 1, 0.50)
    rungs.stop("b", 1, 0.50)  # cutoff 0.5: stop below 0.45 only
    assert rungs.stop("c", 1, 0.46) is False
    assert rungs.stop("d", 1, 0.44) is True


def test_on_loss_lower_is_better_and_a_trial_is_judged_once_a_rung():
    rungs = AdaptiveHalving(1, 2, 8, "min", min_trials=2, margin=0.0)
    rungs.stop("a", 1, 1.0)
    rungs.stop("b", 1, 1.2)
    assert rungs.stop("c", 1, 2.0) is True and rungs.stop("d", 1, 0.5) is False
    assert rungs.stop("a", 1, 9.0) is False  # "a" was recorded at this rung: no second judgement
    assert rungs.stop("a", 8, 0.1) is True  # max_t: as ASHA, nothing runs past it


def test_nan_values_neither_stop_a_trial_nor_count_towards_a_rung():
    rungs = AdaptiveHalving(1, 2, 8, "max", min_trials=2, margin=0.0)
    assert rungs.stop("a", 1, float("nan")) is False
    rungs.stop("b", 1, 0.9)
    assert rungs.stop("c", 1, 0.1) is False  # only one value recorded, not two


@pytest.mark.parametrize("kwargs, words", [
    (dict(mode="maximize"), "mode"), (dict(grace_period=0), "grace_period"), (dict(min_trials=0), "min_trials"),
    (dict(margin=-0.1), "margin"),
])
def test_bad_settings_are_refused_naming_the_setting(kwargs, words):
    settings = dict(grace_period=1, reduction_factor=2, max_t=8, mode="max", min_trials=4, margin=0.1) | kwargs
    with pytest.raises(ValueError, match=words):
        AdaptiveHalving(**settings)
