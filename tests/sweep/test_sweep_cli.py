"""End to end through the CLI: real MiniLM training, SQLite store, export, re-run.

The sweeps run on the session's shared local Ray cluster (`--address`), except the Ctrl+C of real training,
whose driver starts its own local Ray and must take it down with it (its re-run joins the shared one)."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import narrow_training, run_cli, small_spec, start_cli, synthetic_spec, wait_for_ray_to_go

pytestmark = pytest.mark.slow


def store_rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql).fetchall()


def study_trials(db: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(deepcopy=False)


def test_sweep_runs_records_and_exports(tmp_path, shared_ray):
    spec = small_spec(tmp_path)
    result = run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    db = tmp_path / "state" / "sweeper.db"

    trials = store_rows(db, "select trial_key, status, stop_reason, rounds, best_round, best_value from sweeper_trials")
    assert len(trials) == 4
    assert {t[1] for t in trials} <= {"completed", "early_stopped", "stopped"}
    assert any(t[2] in ("asha", "patience") for t in trials), f"no trial stopped early: {trials}"
    for key, _, _, rounds, best_round, best_value in trials:
        logged = store_rows(db, f"select round, eval_loss from sweeper_rounds join sweeper_trials t on t.id = trial_id "
                                f"where t.trial_key = '{key}' order by round")
        assert [r for r, _ in logged] == list(range(1, rounds + 1))
        assert all(loss is not None and loss > 0 for _, loss in logged)
        assert 1 <= best_round <= rounds and 0.0 <= best_value <= 1.0

    assert sorted(t.state.name for t in study_trials(db, "small-sweep")) == ["COMPLETE"] * 4
    export = tmp_path / "state" / "sweeps" / "small-sweep" / "export"
    assert str(export / "winner.yaml") in result.stdout.replace("\n", "")
    record = yaml.safe_load((export / "winner.yaml").read_text())
    assert record == json.loads((export / "winner.json").read_text())
    best = max(trials, key=lambda t: t[5])
    assert record["winner"]["trial_key"] == best[0] and record["winner"]["best_round"] == best[4]
    assert (export / "adapter" / "adapter_config.json").is_file()
    assert (export / "adapter" / "adapter_model.safetensors").stat().st_size > 10_000
    for role in ("train", "holdout", "test"):
        entry = record["data_fingerprints"][role]
        assert entry["sha256"] == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
        assert entry == record["audit"]["fingerprints"][role]  # what the audit read, and what the trials checked
        assert record["trial"]["data"]["sha256"][role] == entry["sha256"]
    assert (export / ".sweeper-export").is_file()
    assert record["training_arguments"]["learning_rate"] == record["trial"]["hparams"]["learning_rate"]
    assert record["lora_config"]["r"] == record["trial"]["hparams"]["lora_r"]
    assert record["lora_config"]["target_modules"] == ["query", "value"]  # `auto`: PEFT's default for MiniLM (bert)
    worker = record["worker"]  # as the winner's worker recorded it at its best round
    assert (worker["device"], worker["dtype"], worker["quantization"]) == ("cpu", "float32", "none")
    assert record["training_arguments"]["per_device_train_batch_size"] == worker["micro_batch"]
    assert record["versions"]["torch"].startswith("2.13.0")
    assert record["reproduce"].startswith("sweeper train ") and f"--rounds {best[4]}" in record["reproduce"]

    listing = run_cli(["trials", "small-sweep", "--db", f"sqlite:///{db}"], tmp_path, check=True).stdout
    assert all(t[0] in listing for t in trials)
    status = run_cli(["status", "--db", f"sqlite:///{db}"], tmp_path, check=True).stdout
    assert "small-sweep" in status and "completed" in status

    # `sweeper export` never writes over what it did not write: the working folder (store, Tune's checkpoints, spec,
    # data) is refused as it is; a new folder is written; --force replaces that export, and only an export.
    def files() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if not p.name.endswith(("-wal", "-shm")))

    before, url = files(), f"sqlite:///{db}"
    refused = run_cli(["export", "small-sweep", "--out", ".", "--db", url], tmp_path)
    assert refused.returncode == 2 and "not empty and holds no export" in " ".join(refused.stderr.split())
    assert files() == before
    run_cli(["export", "small-sweep", "--out", "winner", "--db", url], tmp_path, check=True)
    assert yaml.safe_load((tmp_path / "winner" / "winner.yaml").read_text())["winner"] == record["winner"]
    assert run_cli(["export", "small-sweep", "--out", "winner", "--db", url], tmp_path).returncode == 2
    run_cli(["export", "small-sweep", "--out", "winner", "--force", "--db", url], tmp_path, check=True)
    assert sorted(p.name for p in (tmp_path / "winner").iterdir()) == [".sweeper-export", "adapter", "winner.json",
                                                                       "winner.yaml"]

    # The exported config re-runs without Ray and reproduces the recorded holdout metric on CPU; without --out its
    # checkpoints go with it (they were left in the temp folder: 5 MB a run here, gigabytes for a 1B model).
    scratch = tmp_path / "train-tmp"
    scratch.mkdir()
    rerun = run_cli(["train", export / "winner.yaml", "--rounds", record["winner"]["best_round"]], tmp_path, check=True,
                    env={"TMPDIR": str(scratch)})
    comparison = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert comparison["rerun"] == pytest.approx(comparison["recorded"], abs=1e-6)
    assert not list(scratch.glob("sweeper-train-*"))  # (torch keeps its compile cache there: not ours)

    again = run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    assert "already completed" in again.stdout
    assert len(store_rows(db, "select id from sweeper_trials")) == 4


def _rows_once_there(db: Path, sql: str) -> list[tuple]:
    """store_rows, or [] while the driver has not yet made the store (its file or its tables)."""
    try:
        return store_rows(db, sql) if db.is_file() else []
    except sqlite3.OperationalError:
        return []


def _wait_for_rounds(db: Path, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(n for (n,) in _rows_once_there(db, "select count(*) from sweeper_rounds")) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"the sweep reported fewer than {count} rounds in {timeout} s")


# Ctrl+C's sweep: real training, no ASHA and no early stop (what is resumed is the point, not the scheduler), a narrow
# space at a fixed batch of 16: every trial has 4 rounds (2 epochs x 2 evaluations), so at the third round reported
# no trial has ended and the third trial waits for a slot.
RESUMABLE = dict(
    **narrow_training("resume-e2e", epochs=2),
    budget={"trials": 3, "max_concurrent": 2},
    scheduler={"type": "none", "evals_per_epoch": 2},
    early_stopping={"patience": 20, "min_delta": 0.0},
)


@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["sigint"])  # SIGKILL: tests/reliability/test_driver_kills.py
def test_interrupted_sweep_resumes_without_duplicates(tmp_path, ray_cleanup, shared_ray, sig):
    """Ctrl+C mid-sweep with real MiniLM training (Tune saves its state; the checkpoints are real adapters).

    The interrupted driver started its own local Ray, which must go with it; the re-run resumes on the session's
    shared Ray (as on a cluster: which Ray resumes the sweep is not the point, the store and checkpoints are)."""
    spec = small_spec(tmp_path, **RESUMABLE)
    db = tmp_path / "state" / "sweeper.db"
    driver = start_cli(["run", spec], tmp_path)
    _wait_for_rounds(db, 3)
    driver.send_signal(sig)
    assert driver.wait(timeout=120) != 0
    assert store_rows(db, "select count(*) from sweeper_trials where status != 'running'")[0][0] < 3

    wait_for_ray_to_go(tmp_path)

    result = run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    keys = [k for (k,) in store_rows(db, "select trial_key from sweeper_trials")]
    assert len(keys) == len(set(keys)) == 3
    assert store_rows(db, "select status from sweeper_sweeps") == [("completed",)]
    assert not store_rows(db, "select trial_key from sweeper_trials where status = 'running'")
    rounds = store_rows(db, "select trial_id, round, count(*) from sweeper_rounds group by trial_id, round having count(*) > 1")
    assert rounds == []
    study = study_trials(db, "small-sweep")
    assert sorted(t.state.name for t in study) == ["COMPLETE"] * 3
    assert len({json.dumps(t.params, sort_keys=True) for t in study}) == 3
    assert "winner.yaml" in result.stdout


def test_ctrl_c_after_the_last_trial_started_leaves_the_sweep_resumable(tmp_path, shared_ray):
    """Every trial of the budget has started when Ctrl+C comes: Tune's clean-up marks them all TERMINATED,
    yet the sweep is interrupted, not completed, and the re-run finishes the same trials.

    Synthetic trials, held (hold file) once a round is recorded, so Ctrl+C lands while both still run."""
    hold = tmp_path / "hold"
    hold.touch()
    spec = synthetic_spec(tmp_path, round_seconds=0.3, hold_file=hold, budget={"trials": 2, "max_concurrent": 2},
                          scheduler={"type": "none", "evals_per_epoch": 2},
                          early_stopping={"patience": 20, "min_delta": 0.0})  # every round: 2 to 4 epochs of 2
    db = tmp_path / "state" / "sweeper.db"
    driver = start_cli(["run", spec, "--address", shared_ray], tmp_path)

    def trials() -> list[tuple]:
        return _rows_once_there(db, "select trial_key, status, rounds from sweeper_trials")

    _wait_until(lambda: len(trials()) == 2, driver)  # the whole budget started, held before its first round
    hold.unlink()
    _wait_until(lambda: sum(t[2] for t in trials()) >= 1, driver, every=0.05)
    hold.touch()  # no trial starts another round (each has 4 or more): both still run when Ctrl+C comes
    started = trials()
    assert [t[1] for t in started] == ["running", "running"], started
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) != 0
    assert store_rows(db, "select status from sweeper_sweeps") == [("interrupted",)]
    assert store_rows(db, "select count(*) from sweeper_trials where status = 'running'") != [(0,)]
    assert not (tmp_path / "state" / "sweeps" / "synthetic-sweep" / "export").exists()

    hold.unlink()
    run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    assert store_rows(db, "select status from sweeper_sweeps") == [("completed",)]
    after = store_rows(db, "select trial_key, status, retries from sweeper_trials")
    assert len(after) == 2 and all(t[1] in ("completed", "early_stopped") for t in after), after
    assert sorted(t[0] for t in after) == sorted(t[0] for t in started)  # the same trials, none added


def _wait_until(reached, driver, timeout: float = 180, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not reached():
        assert driver.poll() is None, "the driver ended first"
        assert time.monotonic() < deadline, f"not reached in {timeout} s"
        time.sleep(every)


def test_time_budget_ends_running_trials_and_exports(tmp_path, shared_ray):
    """The sweep's time budget runs out mid-trial: the trials Tune stops at the deadline end `stopped`
    (time_budget) in the store, none is left `running`, and the winner's checkpoint is there to export.

    The test holds the pace, not the machine: once both trials have started and one has reported a round, the hold
    file stops every trial before its next round, so the deadline falls while they run (trials of at least 20 rounds
    of 0.3 s: none can end meanwhile) and no third trial can start, however fast or loaded the machine. The budget
    only has to cover the probe's estimate of a first round (mostly a fresh trial worker's start-up: ~3 s on a quiet
    machine, 15-20 s when every process compiled its imports), or no trial would be admitted at all. (A 14 s budget
    with 2 s rounds admitted none on a machine that slow.)"""
    hold = tmp_path / "hold"
    spec = synthetic_spec(tmp_path, round_seconds=0.3, hold_file=hold,
                          budget={"trials": 12, "max_concurrent": 2, "time_budget_s": 30},
                          scheduler={"type": "none", "evals_per_epoch": 10},  # no ASHA: trials run to the deadline
                          early_stopping={"patience": 100})
    db = tmp_path / "state" / "sweeper.db"
    driver = start_cli(["run", spec, "--address", shared_ray], tmp_path)
    _wait_until(lambda: _rows_once_there(db, "select count(*), max(rounds) >= 1 from sweeper_trials") == [(2, 1)],
                driver)
    hold.touch()
    assert driver.wait(timeout=180) == 0, "the time budget did not end the sweep"
    assert store_rows(db, "select status from sweeper_sweeps") == [("completed",)]
    trials = store_rows(db, "select trial_key, status, stop_reason, rounds from sweeper_trials")
    assert len(trials) == 2, trials  # both held, neither ended: no third trial started
    assert all(t[1:3] == ("stopped", "time_budget") for t in trials), trials
    # The study closes them too: COMPLETE with the objective so far, PRUNED before any round; none left RUNNING.
    study = sorted(t.state.name for t in study_trials(db, "synthetic-sweep"))
    assert study == sorted("COMPLETE" if t[3] > 0 else "PRUNED" for t in trials), (study, trials)
    export = tmp_path / "state" / "sweeps" / "synthetic-sweep" / "export"
    assert (export / "adapter" / "synthetic_state.json").is_file()
    recorded = store_rows(db, "select t.trial_key, r.checkpoint from sweeper_rounds r join sweeper_trials t "
                              "on t.id = r.trial_id where r.round = t.best_round")
    assert recorded and all(path for _, path in recorded), recorded  # every best round names its checkpoint
