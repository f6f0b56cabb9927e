"""Promotion runs on the Ray workers, like the trials, not in the process that asks for it.

`ray.cluster_utils.Cluster` starts a head with no CPUs (the K8s head: it only coordinates) and one worker node.
A real one-trial MiniLM sweep on restaurant8k-small runs there, then `sweeper promote --address` re-evaluates the
winner on the test split and re-trains it with one more seed. The promotion record says where each step ran: on
the worker node, never on the head, where the driver (the `sweeper promote` process) is. A step that fails on a
worker comes back as a one-line PromotionError (what `sweeper promote` prints, exit 2), not a Ray traceback.
"""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
from helpers import run_cli, small_spec, synthetic_spec

from sweeper.promotion import PromotionError, predict_checkpoint
from sweeper.spec import load_spec

pytestmark = pytest.mark.slow

ONE_TRIAL = dict(  # one short real training: the trial; the seed's re-training is the second
    search_space={"name": "on-workers", "params": {"learning_rate": {"type": "float", "low": 9e-3, "high": 1e-2}}},
    fixed={"batch_size": 16, "num_epochs": 1, "lr_scheduler_type": "constant", "warmup_ratio": 0.0,
           "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
    budget={"trials": 1, "max_concurrent": 1},
    scheduler={"type": "none", "evals_per_epoch": 1},
    resources={"cpus": 1, "gpus": 0},
    promotion={"gates": ["eval_loss <= 50"], "seeds": 1, "bootstrap_samples": 100},  # generous: placement is tested
)


@pytest.fixture
def cluster(headless_ray):
    ray_cluster, add_workers = headless_ray
    return ray_cluster, add_workers(1)[0]


def stored_promotions(db) -> list[dict]:
    with sqlite3.connect(db) as con:
        return [json.loads(result) for (result,) in con.execute("select result from sweeper_promotions order by id")]


def test_promotion_predicts_and_retrains_on_a_worker_node(tmp_path, cluster):
    ray_cluster, worker = cluster
    spec = small_spec(tmp_path, **ONE_TRIAL)
    db = tmp_path / "state" / "sweeper.db"
    run_cli(["run", spec, "--address", ray_cluster.address], tmp_path, check=True)

    promote = ["promote", "small-sweep", "--address", ray_cluster.address, "--db", f"sqlite:///{db}"]
    result = run_cli(promote, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Started a local Ray instance" not in result.stderr  # it joined the cluster
    [record] = stored_promotions(db)
    assert record["promoted"] and record["seeds"] == [8]
    steps = record["workers"]
    assert sorted(s["step"] for s in steps) == ["predict", "seed"], steps
    assert {s["node"] for s in steps} == {worker.node_id}, f"a step ran off the worker node: {steps}"
    assert ray_cluster.head_node.node_id not in {s["node"] for s in steps}  # where the driver is
    assert all(g["seed_values"] for g in record["checked"][0]["gates"])  # the seed was scored on the test split
    assert f"ran on node {worker.node_id[:12]}" in result.stderr


def test_a_step_that_fails_on_a_worker_is_a_promotion_error(tmp_path, shared_ray):
    """What a failed step says: its label and the worker's exception in one line, never a Ray traceback; a step
    that finds no checkpoint where the worker looks says so (None) without failing."""
    from sweeper import controller

    spec = load_spec(synthetic_spec(tmp_path))
    try:
        workers = controller.Workers(spec, shared_ray)
        [(missing, where)] = workers.run(predict_checkpoint, [{"config": None, "checkpoint": str(tmp_path / "gone"),
                                                               "storage": ""}])
        assert missing is None and where["pid"] != os.getpid()
        with pytest.raises(PromotionError) as failed:
            workers.run(json.loads, [{"label": "re-evaluating trial t1"}, {"label": "never reached"}])
    finally:
        controller.shutdown()
    message = str(failed.value)
    assert message.startswith("re-evaluating trial t1 failed on a Ray worker: TypeError: the JSON object must be str")
    assert "Traceback" not in message and "\n" not in message
