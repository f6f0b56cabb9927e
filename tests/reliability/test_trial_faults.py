"""A trial's worker process or its whole node dies mid-training: the trial goes on from its last checkpoint.

Proof of "not from zero" comes from what the worker recorded with each round in the store: the rounds reported
before the fault keep the killed process's `pid`; the first round of the retry is a later round (HF's
global step restored from the checkpoint) and `examples_seen` carries on.

The killed worker trains MiniLM for real (the HF Trainer's resume); the removed node runs the synthetic task
(trainers/synthetic.py: Ray's rescheduling is under test, and the hold file keeps the trial mid-way while the
node goes, on any machine).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from fault_kit import FIXED, SPACE, Rows, cli_log, fault_spec, our_ray_worker, registered_round, wait_for
from helpers import kill_processes, start_cli, synthetic_spec

pytestmark = pytest.mark.slow
NAME = "fault-sweep"
# 8 rounds of a few steps: the fault, made as soon as a checkpoint is registered (round 2 recorded), lands mid-trial
# with 6 rounds to go, on a quiet machine or a fast one (with 4 rounds, a quiet machine once finished the trial
# before the kill).
EPOCHS = 4
ROUNDS = EPOCHS * 2


def assert_resumed_not_restarted(rounds: list[dict], old: set, key: str) -> dict:
    """The rounds of trial `key` before and after the fault (old: the pids/nodes of the first attempt)."""
    mine = [r for r in rounds if r["trial"] == key]
    assert [r["round"] for r in mine] == list(range(1, ROUNDS + 1)), mine
    before = [r for r in mine if r["bookkeeping"]["pid"] in old]
    after = [r for r in mine if r["bookkeeping"]["pid"] not in old]
    assert before and after, f"no rounds from the first attempt or none from the retry: {mine}"
    assert max(r["round"] for r in before) < min(r["round"] for r in after), "a round of the first attempt was re-run"
    assert after[0]["round"] > 1, "the retried trial started again from round 1"
    seen = [r["bookkeeping"]["examples_seen"] for r in mine]
    assert seen == sorted(set(seen)), f"examples_seen went back: {seen}"  # the global step continued
    return {"before": before, "after": after}


def test_killed_trial_worker_resumes_from_its_last_checkpoint(tmp_path, ray_cleanup, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the workers' temporary folders, checked at the end
    (tmp_path / "tmp").mkdir()
    spec = fault_spec(tmp_path, name=NAME, trials=1, epochs=EPOCHS)
    rows = Rows(tmp_path / "state" / "sweeper.db")
    driver = start_cli(["run", spec], tmp_path)
    try:
        victim = wait_for(lambda: registered_round(rows, NAME), 180, "a registered checkpoint", every=0.05)
        worker = our_ray_worker(victim["bookkeeping"]["pid"], tmp_path)
        worker.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert driver.wait(timeout=300) == 0, cli_log(tmp_path)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    print(f"killed {worker.pid} after round {victim['round']}; sweep done {time.monotonic() - killed_at:.1f} s later")

    assert rows.sweep_status(NAME)[0] == "completed"
    [trial] = rows.trials(NAME)
    assert trial["key"] == victim["trial"] and trial["status"] == "completed" and trial["retries"] == 1, trial
    parts = assert_resumed_not_restarted(rows.rounds(NAME), {worker.pid}, victim["trial"])
    assert max(r["round"] for r in parts["before"]) >= victim["round"]
    print(f"rounds of the killed process: {[r['round'] for r in parts['before']]}, "
          f"of the retry: {[r['round'] for r in parts['after']]}")
    assert rows.study_states(NAME) == ["COMPLETE"]
    # Disk stays bounded: Ray keeps the 2 best checkpoints by the objective (CheckpointConfig num_to_keep=2)
    # plus the latest one (its rule: the newest is never deleted, a retry restores from it), so at most 3.
    experiment = tmp_path / "state" / "ray" / NAME
    [trial_dir] = [d for d in experiment.iterdir() if d.is_dir()]
    kept = {d.name for d in trial_dir.glob("checkpoint_*")}
    by_round = {r["round"]: r for r in rows.rounds(NAME)}
    ranked = sorted(by_round, key=lambda n: (by_round[n]["metrics"]["f1_micro"], n), reverse=True)  # Ray's order
    expected = {by_round[n]["checkpoint"].rsplit("/", 1)[-1] for n in {*ranked[:2], max(by_round)}}
    assert kept == expected and len(kept) <= 3, (kept, expected)
    best = by_round[trial["best_round"]]["checkpoint"]
    assert best.rsplit("/", 1)[-1] in kept, (kept, best)  # the export's checkpoint is among them
    assert (tmp_path / "state" / "sweeps" / NAME / "export" / "adapter").is_dir()
    # every trial folder was removed, the killed attempt's included (by its retry)
    assert not [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith(("sweeper-", "checkpoint_tmp"))]


@pytest.fixture
def cluster(headless_ray):
    ray_cluster, add_workers = headless_ray
    return ray_cluster, add_workers(2)


def test_removed_worker_node_has_its_trial_rescheduled(tmp_path, cluster):
    ray_cluster, workers = cluster
    hold = tmp_path / "hold"
    spec = synthetic_spec(tmp_path, round_seconds=0.3, hold_file=hold, name=NAME, search_space=SPACE,
                          fixed={**FIXED, "num_epochs": EPOCHS}, budget={"trials": 1, "max_concurrent": 1,
                                                                     "max_failures": 2},
                          scheduler={"type": "none", "evals_per_epoch": 2},
                          early_stopping={"patience": 20, "min_delta": 0.0})  # fault_spec's, on the synthetic task
    rows = Rows(tmp_path / "state" / "sweeper.db")
    driver = start_cli(["run", spec, "--address", ray_cluster.address], tmp_path)
    try:
        victim = wait_for(lambda: registered_round(rows, NAME), 180, "a registered checkpoint", every=0.05)
        hold.touch()  # the trial waits before its next round: the node goes mid-trial
        node = next(n for n in workers if n.node_id == victim["bookkeeping"]["node"])
        worker = our_ray_worker(victim["bookkeeping"]["pid"], tmp_path)
        ray_cluster.remove_node(node, allow_graceful=False)  # its raylet dies
        # ... and, as when a machine goes, the processes on it: a worker left to notice its raylet was gone went on
        # training (at load 13, every later round came from it and the retry's were never recorded)
        kill_processes([worker])
        ray_cluster.add_node(num_cpus=1)  # a replacement, as an autoscaler would start
        hold.unlink()
        assert driver.wait(timeout=300) == 0, cli_log(tmp_path)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    assert rows.sweep_status(NAME)[0] == "completed"
    [moved] = rows.trials(NAME)
    assert moved["key"] == victim["trial"] and moved["status"] == "completed", moved
    assert moved["retries"] >= 1 and moved["node"] != node.node_id, moved
    rounds = rows.rounds(NAME)
    old_pids = {r["bookkeeping"]["pid"] for r in rounds if r["bookkeeping"]["node"] == node.node_id}
    parts = assert_resumed_not_restarted(rounds, old_pids, victim["trial"])
    assert {r["bookkeeping"]["node"] for r in parts["before"]} == {node.node_id}
    assert node.node_id not in {r["bookkeeping"]["node"] for r in parts["after"]}
    print(f"removed node {node.node_id[:8]} after round {victim['round']}; rounds there: "
          f"{[r['round'] for r in parts['before']]}, on {moved['node'][:8]}: {[r['round'] for r in parts['after']]}")
    assert rows.study_states(NAME) == ["COMPLETE"]
