"""A real small sweep with W&B offline: read the offline run files back, and look for the API key everywhere.

The sweep runs once for the module (2 trials side by side, real MiniLM training on a local Ray) with a
fake `WANDB_API_KEY` in its environment.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, kill_processes, ray_processes, ray_tmp, run_cli, small_spec
from wandb_files import read_run

from sweeper.compare import trial_rows
from sweeper.store import TrialStore
from sweeper.tracking import offline_runs

pytestmark = pytest.mark.slow
KEY = f"sk-test-{secrets.token_hex(20)}"
# What Ray Tune adds to every result: none of it may reach the store, W&B or the export.
RAY_RESULT_KEYS = {"training_iteration", "hostname", "node_ip", "date", "timestamp", "trial_id", "done",
                   "time_total_s", "time_this_iter_s", "iterations_since_restore", "checkpoint_dir_name"}
# lora-quick's space (categorical, log and linear parameters: all logged to W&B) at one epoch (2 rounds) a trial
QUICK_SPACE_BUT_EPOCHS = {name: param for name, param in
                          yaml.safe_load((ROOT / "search_spaces" / "lora-quick.yaml").read_text())["params"].items()
                          if name != "num_epochs"}
BOOKKEEPING_KEYS = {"round", "epoch", "train_loss", "examples_seen", "tokens_seen", "stop_reason", "device", "node",
                    "pid", "rss_mb", "rss_start_mb", "objective"}


def assert_holdout_only(metrics: dict) -> None:
    """Token tagging's holdout metrics (eval_loss, micro P/R/F1, f1_<field>) and nothing else."""
    assert {k for k in metrics if not k.startswith("f1_")} == {"eval_loss", "precision_micro", "recall_micro"}, metrics
    assert not (RAY_RESULT_KEYS | BOOKKEEPING_KEYS) & set(metrics), metrics


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb-sweep")
    spec = small_spec(tmp, tracking={"mode": "offline", "project": "t"}, budget={"trials": 2, "max_concurrent": 2},
                      search_space={"name": "quick-one-epoch", "params": QUICK_SPACE_BUT_EPOCHS},
                      fixed={"num_epochs": 1})
    env = pytest.MonkeyPatch()
    env.setenv("WANDB_API_KEY", KEY)
    env.setenv("WANDB_MODE", "offline")
    try:
        result = run_cli(["run", spec], tmp, check=True)
    finally:
        env.undo()
        kill_processes(ray_processes(tmp))  # the Ray this test started, by id
    store = TrialStore(f"sqlite:///{tmp / 'state' / 'sweeper.db'}")
    runs = [read_run(folder) for folder in offline_runs(tmp / "state" / "sweeps" / "small-sweep" / "wandb-runs")]
    yield tmp, result, store, runs
    store.engine.dispose()


def test_one_run_per_trial_grouped_with_config_and_rounds(sweep):
    _, result, store, runs = sweep
    trials = {t.trial_key: t for t in store.trials("small-sweep")}
    rounds = store.rounds("small-sweep")
    trial_runs = {r.run_id: r for r in runs if r.job_type == "trial"}
    assert len(trials) == 2 and set(trial_runs) == {f"small-sweep-{k}" for k in trials}
    for key, trial in trials.items():
        run = trial_runs[f"small-sweep-{key}"]
        assert (run.project, run.group, run.exit_code) == ("t", "small-sweep", 0)
        # config: the sampled parameters at the top level, plus the resolved trial config
        assert {k: run.config[k] for k in trial.params} == trial.params
        training = run.config["training"]
        assert training["hparams"] == {**trial.params, "num_epochs": 1}
        assert training["seed"] == 7 and training["task"] == "token_tagging"
        assert training["data"]["holdout"].endswith("holdout.json") and training["evals_per_epoch"] == 2
        assert run.config["objective"] == {"metric": "f1_micro", "mode": "max"}
        # one history row per evaluation round, step = round, values as the store recorded them
        stored = rounds[key]
        assert [h["_step"] for h in run.history] == [r.round for r in stored] == list(range(1, trial.rounds + 1))
        for logged, row in zip(run.history, stored):
            assert math.isclose(logged["metrics/eval_loss"], row.eval_loss, rel_tol=1e-9)
            assert math.isclose(logged["metrics/f1_micro"], row.metrics["f1_micro"], rel_tol=1e-9)
            spaces = {k.split("/")[0] for k in logged if not k.startswith("_")}  # `_step` and such are wandb's
            assert spaces == {"metrics", "bookkeeping"} and "bookkeeping/train_loss" in logged
            assert {k.removeprefix("metrics/") for k in logged if k.startswith("metrics/")} == set(row.metrics)
        # summary: best holdout metrics (at the best round, not the last) and why the trial stopped
        s = run.summary
        assert (s["status"], s["stop_reason"], s["best_round"]) == (trial.status, trial.stop_reason, trial.best_round)
        assert math.isclose(s["best/f1_micro"], trial.best_value, rel_tol=1e-9)
        at_best = next(r for r in stored if r.round == trial.best_round)
        assert math.isclose(s["best/eval_loss"], at_best.eval_loss, rel_tol=1e-9)
    assert {r.summary["stop_reason"] for r in trial_runs.values()} <= {"completed", "patience", "asha"}
    wandb_dir = Path(result.stdout.split("wandb:", 1)[1].split()[0])
    assert wandb_dir.name == "wandb-runs" and "wandb sync" in result.stdout


def test_metrics_are_holdout_metrics_only_in_the_store_compare_wandb_and_the_export(sweep):
    tmp, _, store, runs = sweep
    for rows in store.rounds("small-sweep").values():
        for row in rows:
            assert_holdout_only(row.metrics)
            assert {"epoch", "train_loss", "examples_seen", "node", "pid", "rss_mb"} <= set(row.bookkeeping)
            assert not RAY_RESULT_KEYS & set(row.bookkeeping), row.bookkeeping
    for row in trial_rows(store, ["small-sweep"]):
        assert_holdout_only(row.metrics)
    for run in runs:
        if run.job_type == "trial":
            assert_holdout_only({k.removeprefix("best/"): v for k, v in run.summary.items() if k.startswith("best/")})
    winner = yaml.safe_load((tmp / "state" / "sweeps" / "small-sweep" / "export" / "winner.yaml").read_text())
    assert_holdout_only(winner["winner"]["holdout_metrics"])


def test_summary_run_tables_every_trial(sweep):
    _, _, store, runs = sweep
    (summary,) = [r for r in runs if r.job_type == "summary"]
    assert (summary.group, summary.project) == ("small-sweep", "t")
    best = store.best_trial("small-sweep")
    assert summary.summary["best_trial"] == best.trial_key and summary.summary["n_trials"] == 2
    assert summary.summary["sweep_status"] == "completed" and summary.exit_code == 0
    table = json.loads((summary.folder / "files" / summary.summary["trials"]["path"]).read_text())
    keys = [row[table["columns"].index("trial")] for row in table["data"]]
    assert sorted(keys) == sorted(t.trial_key for t in store.trials("small-sweep"))


def test_live_progress_is_one_line_per_trial_when_not_a_terminal(sweep):
    _, result, _, _ = sweep
    lines = [line for line in result.stdout.splitlines() if line.startswith("[small-sweep] trial ")]
    assert len(lines) == 2 and "2/2 done" in lines[-1]


def test_api_key_is_in_no_file_the_sweep_wrote(sweep):
    tmp, result, _, runs = sweep
    assert runs  # the sweep did write W&B runs
    needle = KEY.encode()
    scanned = []
    for root in (tmp, ray_tmp(tmp)):  # the spec folder (store, Tune experiment, W&B runs, export) and Ray's temp
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert needle not in path.read_bytes(), f"the API key leaked into {path}"
                scanned.append(path)
    names = {p.name for p in scanned}
    assert "sweeper.db" in names and "winner.yaml" in names and any(n.endswith(".wandb") for n in names)
    assert any(p.suffix == ".log" for p in scanned if ray_tmp(tmp) in p.parents)  # Ray's logs were searched too
    assert KEY not in result.stdout and KEY not in result.stderr
