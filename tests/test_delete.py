"""`sweeper delete NAME`: the sweep's store rows, Optuna study, Tune experiment and folder go; nothing of another
sweep does. On SQLite and PostgreSQL, through the CLI, with the sweep written through TrialStore (no Ray)."""

from __future__ import annotations

import optuna
import pytest
from typer.testing import CliRunner

from sweeper.cli import app
from sweeper.store import TrialStore
from sweeper.study import study_storage
from trainers.base import RoundRecord


def make_sweep(store: TrialStore, url: str, root, name: str, experiment_path: str | None = None) -> dict:
    """A finished sweep as `sweeper run` leaves it: rows, a promotion, its study, Tune's experiment, its folder."""
    spec = {"name": name, "storage": {"root": str(root), "database_url": None, "tune_path": None}}
    store.open_sweep(name, spec, f"fp-{name}", "eval_loss", "min")
    experiment = root / "ray" / name
    store.update_sweep(name, status="completed", experiment_path=experiment_path or str(experiment))
    for key in ("t1", "t2"):
        store.trial_started(name, key, {"lr": 0.1})
        store.round_reported(name, key, RoundRecord(1, {"eval_loss": 0.5}), str(experiment / key))
        store.trial_finished(name, key, "completed", "completed")
    store.record_promotion(name, "t1", False, "test", {"status": "NOT PROMOTED"})
    storage = study_storage(url)
    optuna.create_study(study_name=name, storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    storage.engine.dispose()
    (experiment / "t1").mkdir(parents=True)
    (experiment / "t1" / "checkpoint").write_text("x")
    export = root / "sweeps" / name / "export"
    export.mkdir(parents=True)
    (export / "winner.yaml").write_text("sweep: x")
    return {"experiment": experiment, "folder": root / "sweeps" / name}


def studies(url: str) -> list[str]:
    storage = study_storage(url)
    try:
        return sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    finally:
        storage.engine.dispose()


@pytest.fixture
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")


def cli(*args, input: str | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


@pytest.mark.parametrize("url", ["sqlite", "postgresql"], indirect=True)
def test_delete_removes_the_sweep_everywhere_and_keeps_the_others(url, tmp_path):
    root = tmp_path / "state"
    store = TrialStore(url)
    store.upgrade()
    gone = make_sweep(store, url, root, "gone")
    kept = make_sweep(store, url, root, "kept")

    declined = cli("delete", "gone", "--db", url, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output, declined.output
    assert store.get_sweep("gone") is not None and gone["experiment"].is_dir() and gone["folder"].is_dir()

    result = cli("delete", "gone", "--db", url, input="y\n")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"removed {gone['experiment']}" in text and f"removed {gone['folder']}" in text
    assert "removed the Optuna study 'gone'" in text
    assert "removed sweep 'gone' from the store: 2 trial(s), 2 round(s), 1 promotion(s)" in text

    assert store.get_sweep("gone") is None and store.trials("gone") == []
    assert not gone["experiment"].exists() and not gone["folder"].exists()
    assert studies(url) == ["kept"]
    assert [t.trial_key for t in store.trials("kept")] == ["t1", "t2"] and store.latest_promotion("kept")
    assert kept["experiment"].is_dir() and kept["folder"].is_dir() and (root / "ray").is_dir()

    missing = cli("delete", "gone", "--yes", "--db", url)
    assert missing.exit_code == 2 and "no sweep named 'gone'" in missing.output
    store.engine.dispose()


def test_a_running_sweep_is_refused_and_a_dead_drivers_is_not(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TrialStore(url)
    store.upgrade()
    sweep = make_sweep(store, url, tmp_path / "state", "busy")
    store.update_sweep("busy", status="running")
    with store.driving("busy"):  # this process is its live driver
        result = cli("delete", "busy", "--yes", "--db", url)
        assert result.exit_code == 2 and "sweep 'busy' is running" in result.output, result.output
        assert store.get_sweep("busy") is not None and sweep["folder"].is_dir() and studies(url) == ["busy"]
    # `running` with no driver behind it (killed before it could say so) shows as interrupted: deletable
    result = cli("delete", "busy", "--yes", "--db", url)
    assert result.exit_code == 0, result.output
    assert store.get_sweep("busy") is None and not sweep["folder"].exists()
    store.engine.dispose()


@pytest.mark.parametrize("where", ["s3://bucket/prefix/far", "/elsewhere/far", "{root}/ray/other-name"])
def test_a_tune_experiment_outside_the_sweeps_storage_is_left_and_said(tmp_path, where):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    root = tmp_path / "state"
    store = TrialStore(url)
    store.upgrade()
    experiment = where.format(root=root)
    sweep = make_sweep(store, url, root, "far", experiment_path=experiment)
    result = cli("delete", "far", "--yes", "--db", url)
    assert result.exit_code == 0, result.output
    assert f"not removed: {experiment}" in " ".join(result.output.split())
    assert not sweep["folder"].exists() and sweep["experiment"].is_dir()  # the default place was not the recorded one
    store.engine.dispose()
