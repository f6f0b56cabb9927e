"""sweeper.tracking without Ray: the mode rule, trial runs and the sweep's summary run, read back from disk."""

from __future__ import annotations

import json
import secrets

import pytest
from helpers import small_spec
from wandb_files import finished_records, read_run

from sweeper import tracking
from sweeper.spec import load_spec, stored_spec
from sweeper.store import TrialStore
from trainers.base import RoundRecord


@pytest.mark.parametrize("mode, explicit, env, expected", [
    ("none", True, {"WANDB_API_KEY": "k", "WANDB_MODE": "online"}, "disabled"),
    ("offline", True, {"WANDB_API_KEY": "k"}, "offline"),          # the spec said offline: it stays offline
    ("online", True, {}, "online"),
    ("offline", False, {}, "offline"),                             # the default
    ("offline", False, {"WANDB_API_KEY": "k"}, "online"),          # unset in the spec + a key: online
    ("offline", False, {"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "offline"),
    ("offline", False, {"WANDB_MODE": "disabled"}, "disabled"),
])
def test_mode_rule(mode, explicit, env, expected):
    assert tracking.resolve_mode(mode, explicit, env) == expected


def test_redact():
    secret = "sk-test-" + secrets.token_hex(8)
    value = {"a": f"x{secret}y", "b": [secret, "fine", 3], f"k{secret}": 1}
    assert tracking.redact(value, secret) == {"a": "***", "b": ["***", "fine", 3], "***": 1}
    assert tracking.redact(value, "") == value


@pytest.fixture
def store(tmp_path) -> TrialStore:
    store = TrialStore(f"sqlite:///{tmp_path / 'sweeper.db'}")
    store.upgrade()
    spec = stored_spec(load_spec(small_spec(tmp_path, name="sw", tracking={"mode": "offline", "project": "proj"},
                                            storage={"root": str(tmp_path)})))
    store.open_sweep("sw", spec, "fp", "f1_micro", "max")
    for key, rounds, status, reason in [("t1", [(1.0, 0.2), (0.8, 0.5), (0.9, 0.4)], "early_stopped", "patience"),
                                        ("t2", [(1.1, 0.3)], "stopped", "asha")]:
        store.trial_started("sw", key, {"learning_rate": 1e-3, "lora_r": 8})
        for n, (loss, f1) in enumerate(rounds, start=1):
            store.round_reported("sw", key, RoundRecord(n, {"eval_loss": loss, "f1_micro": f1}, {"time_train_s": n}),
                                 wall_time_s=n)
        store.trial_finished("sw", key, status, reason)
    return store


def test_trial_runs_log_rounds_and_a_summary_from_the_store(store, tmp_path):
    runs = tracking.TrialRuns("proj", "sw", "offline", tmp_path / "runs", store.url)
    runs.start("t1", {"learning_rate": 1e-3, "training": {"seed": 7}})
    for n, (loss, f1) in enumerate([(1.0, 0.2), (0.8, 0.5), (0.9, 0.4)], start=1):
        bookkeeping = {"epoch": n / 2, "train_loss": 1.5, "pid": 1, "device": "cpu", "stop_reason": "", "flag": True,
                       "nan": float("nan")}
        runs.log("t1", tracking.round_log(RoundRecord(n, {"eval_loss": loss, "f1_micro": f1}, bookkeeping)), n)
    runs.log("t1", {"eval_loss": 5.0}, 2)  # a retried trial re-reporting round 2: dropped, steps only grow
    runs.finish("t1")
    runs.close()
    (folder,) = tracking.offline_runs(tmp_path / "runs")
    run = read_run(folder)
    assert (run.run_id, run.group, run.job_type, run.project, run.exit_code) == ("sw-t1", "sw", "trial", "proj", 0)
    assert run.config == {"learning_rate": 1e-3, "training": {"seed": 7}}
    assert [h["_step"] for h in run.history] == [1, 2, 3]
    assert [h["metrics/eval_loss"] for h in run.history] == [1.0, 0.8, 0.9]
    logged = {k for k in run.history[0] if not k.startswith("_")}  # wandb's own: _step, _runtime, _timestamp
    assert logged == {"metrics/eval_loss", "metrics/f1_micro", "bookkeeping/epoch", "bookkeeping/train_loss",
                      "bookkeeping/pid"}  # each namespace under its prefix; numbers only
    s = run.summary
    assert (s["status"], s["stop_reason"], s["best_round"], s["rounds"]) == ("early_stopped", "patience", 2, 3)
    assert (s["best/f1_micro"], s["best/eval_loss"]) == (0.5, 0.8)  # the best round's holdout metrics, not the last
    assert {k for k in s if k.startswith("best/")} == {"best/eval_loss", "best/f1_micro"}


def test_a_trial_run_config_holds_what_its_worker_ran_with(store, tmp_path):
    """From the worker's record (a GPU worker's, here), not from the driver's machine."""
    ran = {"device": "NVIDIA H200", "dtype": "bfloat16", "quantization": "4bit", "gradient_checkpointing": True,
           "micro_batch": 8, "gradient_accumulation": 2, "training_arguments": {"bf16": True, "fp16": False},
           "lora_config": {"r": 8, "target_modules": ["q_proj", "v_proj"]}}
    record = RoundRecord(1, {"eval_loss": 1.0}, {**ran, "epoch": 0.5, "peak_memory_mb": 900.0, "tokens_per_s": 5e4})
    assert tracking.worker_config(record) == ran
    runs = tracking.TrialRuns("proj", "sw", "offline", tmp_path / "runs", store.url)
    runs.start("t1", {"learning_rate": 1e-3})
    runs.configure("t1", {"worker": tracking.worker_config(record)})
    runs.log("t1", tracking.round_log(record), 1)
    runs.configure("t1", {"worker": {**ran, "micro_batch": 4, "gradient_accumulation": 4}})  # after an OOM halving
    runs.finish("t1")
    runs.close()
    (folder,) = tracking.offline_runs(tmp_path / "runs")
    run = read_run(folder)
    assert run.config == {"learning_rate": 1e-3, "worker": {**ran, "micro_batch": 4, "gradient_accumulation": 4}}
    assert (run.history[0]["bookkeeping/micro_batch"], run.history[0]["bookkeeping/tokens_per_s"]) == (8, 5e4)


def test_sweep_summary_run_has_a_table_of_all_trials(store, tmp_path, monkeypatch):
    folder = tracking.log_sweep_summary(store, "sw", {"gate": "passed", "ci": [0.41, 0.55]})
    assert folder.parent == tmp_path / "sweeps" / "sw" / "wandb-runs" / "wandb"  # from the stored spec
    run = read_run(folder)
    assert (run.group, run.job_type, run.project) == ("sw", "summary", "proj")
    assert run.config["sweep"] == "sw" and run.config["spec"]["tracking"]["project"] == "proj"
    s = run.summary
    assert (s["best_trial"], s["best/f1_micro"], s["best_round"], s["n_trials"]) == ("t1", 0.5, 2, 2)
    assert s["promotion"] == {"gate": "passed", "ci": [0.41, 0.55]}
    assert s["trials"]["_type"] == "table-file" and s["trials"]["nrows"] == 2
    table = json.loads((folder / "files" / s["trials"]["path"]).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(r["trial"], r["status"], r["stop_reason"], r["objective"], r["is_best"]) for r in rows] == [
        ("t1", "early_stopped", "patience", 0.5, True), ("t2", "stopped", "asha", 0.3, False)]
    assert rows[0]["best/eval_loss"] == 0.8 and rows[0]["learning_rate"] == 1e-3

    monkeypatch.setenv("WANDB_MODE", "disabled")  # a sweep whose spec left the mode out follows WANDB_MODE
    assert tracking.log_sweep_summary(store, "sw") is None
    assert len(tracking.offline_runs(folder.parent.parent)) == 1


def models(folder) -> list:
    """The model artifacts a run logged (W&B logs a table as an artifact of its own too)."""
    return [r.artifact for r in finished_records(folder)
            if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]


def test_a_promoted_winner_is_logged_as_a_model_artifact_of_the_summary_run(store, tmp_path):
    export = tmp_path / "export"
    (export / "adapter").mkdir(parents=True)
    (export / "adapter" / "adapter_config.json").write_text("{}")
    (export / "winner.json").write_text('{"winner": {"trial_key": "t1"}}')
    promoted = {"promoted": True, "status": "PROMOTED", "trial_key": "t1", "note": "PROMOTED: trial t1 clears every gate"}
    folder = tracking.log_sweep_summary(store, "sw", promoted, export_dir=export)
    (artifact,) = models(folder)
    assert (artifact.name, artifact.type) == ("sw-winner", "model") and "promoted" in artifact.aliases
    assert {entry.path for entry in artifact.manifest.contents} == {"adapter/adapter_config.json", "winner.json"}
    assert json.loads(artifact.metadata)["trial"] == "t1"

    not_promoted = {**promoted, "promoted": False, "status": "NOT PROMOTED"}
    folder = tracking.log_sweep_summary(store, "sw", not_promoted, export_dir=export, directory=tmp_path / "again")
    assert not models(folder)
