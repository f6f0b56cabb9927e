"""Faults a sweep must survive or report clearly (real Ray, real processes, real databases).

The sweeps run on the session's shared local Ray cluster (`--address`)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from helpers import run_cli, small_spec, synthetic_spec

pytestmark = pytest.mark.slow


def test_a_sweep_whose_every_trial_fails_ends_failed_with_the_cause(tmp_path, shared_ray):
    # A folder that looks like a model (config.json) but holds no weights passes validation and fails in
    # every trial: a broken setup must not end "completed" with exit 0.
    model = tmp_path / "not-a-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    spec = small_spec(tmp_path, model=str(model), budget={"trials": 2, "max_concurrent": 2, "max_failures": 0})
    result = run_cli(["run", spec, "--address", shared_ray], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "all 2 trials failed" in " ".join(result.stderr.split())
    with sqlite3.connect(tmp_path / "state" / "sweeper.db") as db:
        assert db.execute("select status from sweeper_sweeps").fetchall() == [("failed",)]
        errors = db.execute("select status, error from sweeper_trials").fetchall()
    assert len(errors) == 2 and all(status == "failed" and error for status, error in errors)
    assert not (tmp_path / "state" / "sweeps" / "small-sweep" / "export").exists()


@pytest.mark.parametrize("field, resources", [("cpus", {"cpus": 64}), ("gpus", {"cpus": 1, "gpus": 1})])
def test_resources_no_node_has_are_refused_before_anything_is_written(tmp_path, shared_ray, field, resources):
    """A trial that asks for more than any node has would wait forever (and hold a service slot): refused."""
    spec = synthetic_spec(tmp_path, resources=resources)
    result = run_cli(["run", spec, "--address", shared_ray], tmp_path, timeout=120)
    output = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"resources.{field}: each trial asks for {resources[field]}" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "state").exists(), "something was written for a refused sweep"
