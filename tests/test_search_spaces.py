"""Search spaces: a registry that refuses duplicates; define-by-run sampling with conditions."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

import search_spaces
from search_spaces.space import SearchSpace
from trainers.base import HYPERPARAMETERS


def test_shipped_spaces_cover_every_hyperparameter():
    assert {"lora-default", "lora-quick"} <= set(search_spaces.registered_search_spaces())
    for name in ("lora-default", "lora-quick"):
        assert set(search_spaces.get_search_space(name).params) == set(HYPERPARAMETERS)


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="already registered"):
        search_spaces.register_search_space(SearchSpace(name="lora-default", params={
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2}}))


def test_unknown_space_names_the_registered_ones():
    with pytest.raises(KeyError, match="lora-default"):
        search_spaces.get_search_space("no-such-space")


def test_conditional_parameter_is_sampled_only_when_its_condition_holds():
    space = search_spaces.get_search_space("lora-default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        constants = space.sample(trial)
        scheduler = trial.params["lr_scheduler_type"]
        seen.add(scheduler)
        if scheduler == "constant":
            assert "warmup_ratio" not in trial.params and constants == {"warmup_ratio": 0.0}
        else:
            assert 0.0 <= trial.params["warmup_ratio"] <= 0.2 and constants == {}
        assert 1e-5 <= trial.params["learning_rate"] <= 1e-2
        study.tell(trial, 0.0)
    assert "constant" in seen and len(seen) > 1


@pytest.mark.parametrize("params, message", [
    ({"x": {"type": "float", "low": 1.0, "high": 1.0}}, "must be below high"),
    ({"x": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, "low > 0"),
    ({"x": {"type": "int", "low": 5, "high": 2}}, "must not exceed high"),
    ({"x": {"type": "categorical", "choices": []}}, "at least 1"),
    ({"x": {"type": "uniform", "low": 0, "high": 1}}, "type"),
    ({"x": {"type": "float", "low": 0, "high": 1, "when": {"y": [1]}, "otherwise": 0}}, "defined before"),
    ({"x": {"type": "float", "low": 0.0, "high": float("inf")}}, "finite number"),
    ({"x": {"type": "float", "low": float("nan"), "high": 1.0}}, "finite number"),
    ({"x": {"type": "float", "low": 0, "high": 1, "when": {}, "otherwise": None},
      "y": {"type": "int", "low": 0, "high": 1, "when": {"x": [0]}}}, "otherwise"),
])
def test_malformed_parameters_are_refused(params, message):
    with pytest.raises(ValidationError, match=message):
        SearchSpace(params=params)


def test_upper_bound_sizes_asha():
    assert search_spaces.get_search_space("lora-default").upper_bound("num_epochs") == 6
    assert search_spaces.get_search_space("lora-quick").upper_bound("batch_size") == 32


def test_values_are_what_bounds_a_trial_config():
    """The values `sweeper validate` checks against what a trial accepts: range ends, choices, otherwise."""
    space = SearchSpace(params={
        "s": {"type": "categorical", "choices": ["a", "b"]},
        "x": {"type": "float", "low": 0.1, "high": 0.5, "when": {"s": ["a"]}, "otherwise": 0.0},
        "n": {"type": "int", "low": 1, "high": 4}})
    assert space.params["s"].values() == [("choices.0", "a"), ("choices.1", "b")]
    assert space.params["x"].values() == [("low", 0.1), ("high", 0.5), ("otherwise", 0.0)]
    assert space.params["n"].values() == [("low", 1), ("high", 4)]

