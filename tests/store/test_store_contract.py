"""The trial store's contract. Every test runs once per backend (see conftest: `backend`, `store`)."""

from __future__ import annotations

import json
import math
import threading
import traceback

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

import sweeper.store as store_module
from sweeper import migrations
from sweeper.store import StoreError, Sweep, Trial, TrialStore, safe_url
from trainers.base import RoundRecord

SWEEPER_TABLES = {"sweeper_sweeps", "sweeper_trials", "sweeper_rounds", migrations.VERSION_TABLE}
PASSWORD = "s3cretPW"


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(migrations._config()).get_current_head()


def tables(store: TrialStore) -> set[str]:
    return set(inspect(store.engine).get_table_names())


def version_rows(store: TrialStore, table: str) -> list[str]:
    with store.engine.connect() as connection:
        return [row[0] for row in connection.execute(text(f"SELECT version_num FROM {table}"))]


def count(store: TrialStore, table: str) -> int:
    with store.engine.connect() as connection:
        return connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def new_sweep(store: TrialStore, name: str = "s1", mode: str = "min", metric: str = "eval_loss") -> Sweep:
    return store.open_sweep(name, {"model": "tiny", "mode": mode}, f"fp-{name}", metric, mode)


def report(store: TrialStore, sweep: str, key: str, round_: int, value, metric: str = "eval_loss", **extra) -> None:
    store.round_reported(sweep, key, RoundRecord(round_, {metric: value, **extra}))


def trial(store: TrialStore, sweep: str, key: str) -> Trial:
    found = {t.trial_key: t for t in store.trials(sweep)}
    assert key in found, f"trial {key!r} not in {sorted(found)}"
    return found[key]


# -- schema ------------------------------------------------------------------------------------------
def test_upgrade_creates_the_schema_and_ensure_current_passes(new_store):
    store = new_store()
    assert migrations.schema_state(store.engine) == "missing"
    store.upgrade()
    assert SWEEPER_TABLES <= tables(store)
    assert version_rows(store, migrations.VERSION_TABLE) == [head()]
    assert migrations.schema_state(store.engine) == "current"
    store.ensure_current()  # does not raise
    new_sweep(store)
    assert [s.name for s in store.list_sweeps()] == ["s1"]


def test_ensure_current_on_an_empty_database_says_to_upgrade(new_store):
    store = new_store()
    with pytest.raises(StoreError, match="sweeper db upgrade") as caught:
        store.ensure_current()
    assert "missing" in str(caught.value)
    assert not SWEEPER_TABLES & tables(store), "ensure_current must not create anything"


def test_a_database_at_an_older_revision_is_behind(store):
    with store.engine.begin() as connection:
        connection.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0000'"))
    assert migrations.schema_state(store.engine) == "behind"
    with pytest.raises(StoreError, match="sweeper db upgrade") as caught:
        store.ensure_current()
    assert "behind" in str(caught.value)


def test_downgrade_to_base_is_missing_and_upgrade_restores(store):
    from alembic import command

    with store.engine.begin() as connection:
        command.downgrade(migrations._config(connection), "base")
    assert migrations.schema_state(store.engine) == "missing"
    assert not {"sweeper_sweeps", "sweeper_trials", "sweeper_rounds"} & tables(store)
    with pytest.raises(StoreError, match="sweeper db upgrade"):
        store.ensure_current()
    store.upgrade()
    assert migrations.schema_state(store.engine) == "current"
    store.ensure_current()


def test_upgrade_is_idempotent_and_keeps_data(store):
    new_sweep(store)
    store.trial_started("s1", "t1", {"lr": 1e-4})
    report(store, "s1", "t1", 1, 0.5)
    store.upgrade()
    store.upgrade()
    assert version_rows(store, migrations.VERSION_TABLE) == [head()]
    store.ensure_current()
    assert [t.trial_key for t in store.trials("s1")] == ["t1"]
    assert [r.round for r in store.rounds("s1")["t1"]] == [1]


@pytest.mark.parametrize("optuna_first", [True, False], ids=["optuna-first", "sweeper-first"])
def test_coexists_with_an_optuna_storage_on_the_same_url(new_store, db_url, engines, optuna_first):
    store = new_store()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def make_optuna():
        storage = optuna.storages.RDBStorage(db_url)
        engines.append(storage.engine)
        return storage

    if optuna_first:
        storage = make_optuna()
        store.upgrade()
    else:
        store.upgrade()
        storage = make_optuna()
    study = optuna.create_study(study_name="opt", storage=storage, direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -1, 1)) ** 2, n_trials=3)

    new_sweep(store, "opt")  # the same name as the Optuna study, on purpose
    store.trial_started("opt", "t1", {"x": 0.1})
    report(store, "opt", "t1", 1, 0.25)

    names = tables(store)
    assert SWEEPER_TABLES <= names
    assert {"studies", "trials", "alembic_version"} <= names
    optuna_version = version_rows(store, "alembic_version")
    assert optuna_version == [storage.get_current_version()] and optuna_version != [head()]
    assert version_rows(store, migrations.VERSION_TABLE) == [head()]
    store.ensure_current()
    store.upgrade()  # again, with Optuna's tables present
    # both sides see exactly their own rows
    assert len(optuna.load_study(study_name="opt", storage=storage).trials) == 3
    assert [t.trial_key for t in store.trials("opt")] == ["t1"]
    assert count(store, "trials") == 3 and count(store, "sweeper_trials") == 1
    # a second Optuna storage on the same URL still passes its own version check
    make_optuna()


# -- sweeps ------------------------------------------------------------------------------------------
def test_open_sweep_creates_once_and_refuses_a_different_spec(store):
    first = store.open_sweep("s1", {"a": 1}, "fp-1", "eval_loss", "min")
    again = store.open_sweep("s1", {"a": 1}, "fp-1", "eval_loss", "min")
    assert again.id == first.id
    assert [s.name for s in store.list_sweeps()] == ["s1"]
    with pytest.raises(StoreError) as caught:
        store.open_sweep("s1", {"a": 2}, "fp-2", "eval_loss", "min")
    assert "'s1'" in str(caught.value)
    kept = store.get_sweep("s1")
    assert kept.spec_fingerprint == "fp-1" and kept.spec == {"a": 1}
    assert len(store.list_sweeps()) == 1


def test_update_get_and_list_sweeps(store):
    new_sweep(store, "b")
    new_sweep(store, "a")
    store.update_sweep("b", status="running", message="hi", audit={"by": "me"})
    got = store.get_sweep("b")
    assert (got.status, got.message, got.audit) == ("running", "hi", {"by": "me"})
    assert store.get_sweep("a").status == "created"
    assert store.get_sweep("nope") is None
    assert [s.name for s in store.list_sweeps()] == ["b", "a"]  # creation order


# -- trials and rounds -------------------------------------------------------------------------------
def test_reporting_a_round_twice_keeps_one_row_with_the_second_metrics(store):
    new_sweep(store)
    store.trial_started("s1", "t1", {"lr": 1e-4})
    report(store, "s1", "t1", 1, 0.9)
    report(store, "s1", "t1", 2, 0.8, accuracy=0.1)
    report(store, "s1", "t1", 2, 0.7, accuracy=0.2)
    rows = store.rounds("s1")["t1"]
    assert [r.round for r in rows] == [1, 2]
    assert rows[1].metrics["accuracy"] == 0.2 and rows[1].eval_loss == 0.7
    assert count(store, "sweeper_rounds") == 2
    t = trial(store, "s1", "t1")
    assert t.rounds == 2 and t.best_value == 0.7 and t.best_round == 2


@pytest.mark.parametrize("mode, best_value, best_round", [("min", 0.2, 2), ("max", 0.9, 3)])
def test_best_follows_the_direction_over_rounds_not_the_last(store, mode, best_value, best_round):
    new_sweep(store, mode=mode, metric="score")
    store.trial_started("s1", "t1", {})
    for number, value in enumerate([0.5, 0.2, 0.9, float("nan"), 0.4], start=1):
        report(store, "s1", "t1", number, value, metric="score")
    t = trial(store, "s1", "t1")
    assert (t.best_value, t.best_round, t.rounds) == (best_value, best_round, 5)


@pytest.mark.parametrize("nan", [float("nan"), np.float64("nan"), np.float32("nan")], ids=["float", "np64", "np32"])
def test_nan_never_becomes_best(store, nan):
    new_sweep(store)
    store.trial_started("s1", "t1", {})
    report(store, "s1", "t1", 1, nan)
    report(store, "s1", "t1", 2, None)
    t = trial(store, "s1", "t1")
    assert t.best_value is None and t.best_round is None
    report(store, "s1", "t1", 3, 0.3)
    report(store, "s1", "t1", 4, nan)
    t = trial(store, "s1", "t1")
    assert (t.best_value, t.best_round, t.rounds) == (0.3, 3, 4)
    assert [r.round for r in store.rounds("s1")["t1"]] == [1, 2, 3, 4]
    assert store.best_trial("s1").trial_key == "t1"


def test_rounds_and_trials_come_back_ordered(store):
    new_sweep(store)
    for key in ["t-b", "t-a", "t-c"]:  # start order, not alphabetical
        store.trial_started("s1", key, {"key": key})
    for number in [3, 1, 2]:
        for key in ["t-c", "t-a", "t-b"]:
            report(store, "s1", key, number, float(number))
    assert [t.trial_key for t in store.trials("s1")] == ["t-b", "t-a", "t-c"]
    rounds = store.rounds("s1")
    assert list(rounds) == ["t-b", "t-a", "t-c"]
    assert all([r.round for r in rows] == [1, 2, 3] for rows in rounds.values())
    assert trial(store, "s1", "t-a").params == {"key": "t-a"}


@pytest.mark.parametrize("mode, winner", [("min", "low"), ("max", "high")])
def test_best_trial_picks_across_trials_by_best_round(store, mode, winner):
    new_sweep(store, mode=mode)
    values = {"low": [0.6, 0.1, 0.7],   # best at round 2, a bad last round
              "high": [0.2, 0.95, 0.3],
              "mid": [0.5, 0.5, 0.5],
              "nan": [float("nan")] * 3}
    for key, series in values.items():
        store.trial_started("s1", key, {})
        for number, value in enumerate(series, start=1):
            report(store, "s1", key, number, value)
    assert store.best_trial("s1").trial_key == winner
    assert store.best_trial("unknown") is None


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_trial_ties_go_to_the_earlier_trial(store, mode):
    new_sweep(store, mode=mode)
    for key in ["first", "second", "third"]:
        store.trial_started("s1", key, {})
    report(store, "s1", "second", 1, 0.5)
    report(store, "s1", "third", 1, 0.5)
    report(store, "s1", "first", 1, 0.4 if mode == "max" else 0.6)
    assert store.best_trial("s1").trial_key == "second"
    assert [t.trial_key for t in store.ranked_trials("s1")] == ["second", "third", "first"]


def test_paged_and_per_trial_reads_agree_with_whole_sweep_reads(store):
    new_sweep(store)
    new_sweep(store, "other")
    statuses = ["completed", "stopped", "completed", "failed", "running", "completed", "early_stopped"]
    for i, status in enumerate(statuses):
        key = f"t{i}"
        store.trial_started("s1", key, {"i": i})
        store.trial_started("other", key, {"i": i})
        for number in range(1, i % 3 + 2):
            report(store, "s1", key, number, 1.0 / (number + i), accuracy=number / 10)
        if status != "running":
            store.trial_finished("s1", key, status)
    everything = store.trials("s1")
    assert store.trial_counts("s1") == {"completed": 3, "stopped": 1, "failed": 1, "running": 1, "early_stopped": 1}
    assert store.trial_counts("other") == {"running": 7} and store.trial_counts("unknown") == {}
    total, page = store.trial_page("s1", offset=2, limit=3)
    assert total == 7 and [t.trial_key for t in page] == [t.trial_key for t in everything[2:5]]
    total, page = store.trial_page("s1", "completed", offset=1, limit=5)
    assert total == 3 and [t.trial_key for t in page] == ["t2", "t5"]
    assert store.trial_page("s1", offset=7) == (7, [])
    whole = store.rounds("s1")
    at_best = store.best_round_metrics("s1")
    assert set(at_best) == set(whole)
    for t in everything:
        assert [(r.round, r.metrics) for r in store.trial_rounds("s1", t.trial_key)] == \
            [(r.round, r.metrics) for r in whole[t.trial_key]]
        assert at_best[t.trial_key] == next(r.metrics for r in whole[t.trial_key] if r.round == t.best_round)
        assert store.best_round_metrics("s1", t.trial_key) == {t.trial_key: at_best[t.trial_key]}
        assert store.trial("s1", t.trial_key).params == {"i": int(t.trial_key[1:])}
    assert store.trial("s1", "nope") is None and store.trial_rounds("s1", "nope") == []
    assert store.trial_rounds("other", "t1") == [] and store.best_round_metrics("other") == {}


def test_best_trial_is_none_without_any_value(store):
    new_sweep(store)
    assert store.best_trial("s1") is None
    store.trial_started("s1", "t1", {})
    assert store.best_trial("s1") is None
    report(store, "s1", "t1", 1, float("nan"))
    assert store.best_trial("s1") is None


def test_restarts_count_as_retries_only_after_progress(store):
    new_sweep(store)
    store.trial_started("s1", "t1", {})
    store.trial_started("s1", "t1", {})  # a replayed start event of a trial that did nothing yet
    assert trial(store, "s1", "t1").retries == 0
    report(store, "s1", "t1", 1, 0.5)
    store.trial_started("s1", "t1", {})  # restarted after reporting: a retry
    assert trial(store, "s1", "t1").retries == 1
    store.trial_finished("s1", "t1", "failed", "error", "boom")
    store.trial_started("s1", "t1", {})  # restarted after failing: a retry, running again
    t = trial(store, "s1", "t1")
    assert (t.retries, t.status, t.finished_at) == (2, "running", None)
    assert len(store.trials("s1")) == 1


def test_trial_finished_records_status_reason_and_tail_of_error(store):
    new_sweep(store)
    store.trial_started("s1", "t1", {})
    store.trial_finished("s1", "t1", "failed", "error", "x" * 5000 + "END")
    t = trial(store, "s1", "t1")
    assert (t.status, t.stop_reason) == ("failed", "error")
    assert len(t.error) == 4000 and t.error.endswith("END")
    assert t.finished_at is not None


def test_mark_unfinished_marks_only_running_trials(store):
    new_sweep(store, "s1")
    new_sweep(store, "other")
    for key in ["run-1", "done", "failed", "run-2"]:
        store.trial_started("s1", key, {})
    store.trial_started("other", "run-x", {})
    store.trial_finished("s1", "done", "completed", "max_rounds")
    store.trial_finished("s1", "failed", "failed", "error", "boom")
    assert store.mark_unfinished("s1", "interrupted", "driver_died") == 2
    got = {t.trial_key: (t.status, t.stop_reason) for t in store.trials("s1")}
    assert got == {"run-1": ("interrupted", "driver_died"), "run-2": ("interrupted", "driver_died"),
                   "done": ("completed", "max_rounds"), "failed": ("failed", "error")}
    assert trial(store, "other", "run-x").status == "running"
    assert store.mark_unfinished("s1", "interrupted", "driver_died") == 0


def test_best_checkpoint_is_the_best_rounds_checkpoint(store):
    new_sweep(store)
    store.trial_started("s1", "t1", {})
    for number, value in enumerate([0.5, 0.1, 0.3], start=1):
        store.round_reported("s1", "t1", RoundRecord(number, {"eval_loss": value}), f"/ckpt/round-{number}")
    t = trial(store, "s1", "t1")
    assert store.best_checkpoint(t) == "/ckpt/round-2"
    assert [r.checkpoint for r in store.rounds("s1")["t1"]] == ["/ckpt/round-1", "/ckpt/round-2", "/ckpt/round-3"]
    assert count(store, "sweeper_rounds") == 3
    # a round re-reported after its checkpoint keeps the checkpoint
    report(store, "s1", "t1", 2, 0.1)
    assert store.best_checkpoint(trial(store, "s1", "t1")) == "/ckpt/round-2"
    # a trial without a best round has no checkpoint
    store.trial_started("s1", "t2", {})
    store.round_reported("s1", "t2", RoundRecord(1, {"eval_loss": float("nan")}), "/ckpt/t2")
    assert store.best_checkpoint(trial(store, "s1", "t2")) == ""


NOT_JSON = {"config": {"lr": 1e-4}, "history": [1, 2], "missing": None, "obj": object(), "raw": b"\x00\x01",
            "np32": np.float32(0.25), "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")}


def test_non_json_values_are_dropped_not_crashing(store):
    new_sweep(store)
    store.trial_started("s1", "t1", {"lr": 1e-4})
    metrics = {"eval_loss": 0.5, "accuracy": 0.75, "note": "ok", "flag": True, "steps": 12, **NOT_JSON}
    bookkeeping = {"device": "cpu", "examples_seen": 64, "tokens_seen": 1024, "epoch": 0.5, **NOT_JSON}
    store.round_reported("s1", "t1", RoundRecord(1, metrics, bookkeeping), wall_time_s=3.5)
    [row] = store.rounds("s1")["t1"]
    for kept in (row.metrics, row.bookkeeping):
        assert not {"missing", "obj", "raw", "np32", "nan", "inf", "ninf"} & set(kept)
        json.dumps(kept, allow_nan=False)  # strictly JSON: what PostgreSQL's json type accepts
    assert row.metrics == {"eval_loss": 0.5, "accuracy": 0.75, "note": "ok", "flag": True, "steps": 12}  # scalars
    # bookkeeping keeps JSON mappings and lists too (a worker's TrainingArguments, LoraConfig)
    assert row.bookkeeping == {"device": "cpu", "examples_seen": 64, "tokens_seen": 1024, "epoch": 0.5,
                               "config": {"lr": 1e-4}, "history": [1, 2]}
    assert row.eval_loss == 0.5
    t = trial(store, "s1", "t1")
    assert (t.device, t.examples_seen, t.tokens_seen, t.wall_time_s) == ("cpu", 64, 1024, 3.5)
    assert (t.best_value, t.best_round) == (0.5, 1)


def test_metrics_and_bookkeeping_are_stored_apart(store):
    """The worker's record keeps its namespaces: no bookkeeping key among the metrics (and the round number is
    a column, in neither)."""
    new_sweep(store, mode="max", metric="f1_micro")
    store.trial_started("s1", "t1", {})
    bookkeeping = {"epoch": 1.0, "train_loss": 0.9, "stop_reason": "", "node": "n1", "pid": 42, "rss_mb": 700.0}
    store.round_reported("s1", "t1", RoundRecord(1, {"eval_loss": 0.4, "f1_micro": 0.8}, bookkeeping), "/c/1")
    [row] = store.trial_rounds("s1", "t1")
    assert (row.round, row.metrics, row.bookkeeping) == (1, {"eval_loss": 0.4, "f1_micro": 0.8}, bookkeeping)
    assert store.best_round_metrics("s1") == {"t1": {"eval_loss": 0.4, "f1_micro": 0.8}}
    t = trial(store, "s1", "t1")
    assert (t.node, t.best_value, t.wall_time_s) == ("n1", 0.8, 0.0)  # no wall time given: unchanged


def test_rounds_written_before_0005_are_split_by_the_upgrade_and_merged_back_by_the_downgrade(new_store):
    """Before revision 0005 a round's `metrics` held Tune's whole flat result; the upgrade moves everything but the
    holdout metrics to `bookkeeping`, the downgrade merges them back."""
    from alembic import command

    store = new_store()
    migrations.upgrade(store.engine, "0004")
    new_sweep(store)  # sweeps and trials are as they were at 0004
    store.trial_started("s1", "t1", {})
    flat = {"eval_loss": 0.4, "f1_micro": 0.8, "f1_date": 0.7, "round": 2, "epoch": 1.0, "train_loss": 0.9,
            "examples_seen": 64, "objective": 0.8, "stop_reason": "", "device": "cpu", "node": "n1", "rss_mb": 700.0,
            "time_train_s": 3.0, "time_total_s": 4.0, "pid": 42, "hostname": "h", "timestamp": 1700000000,
            "training_iteration": 2, "done": False, "checkpoint_dir_name": "checkpoint_000001"}
    rounds_0004 = sa.table("sweeper_rounds", *map(sa.column, ("trial_id", "round", "eval_loss", "checkpoint",
                                                               "recorded_at")), sa.column("metrics", sa.JSON))
    with store.engine.begin() as connection:
        connection.execute(rounds_0004.insert().values(trial_id=trial(store, "s1", "t1").id, round=2, eval_loss=0.4,
                                                       metrics=flat, checkpoint="/c/2", recorded_at=store_module.now()))
    store.upgrade()
    [row] = store.trial_rounds("s1", "t1")
    holdout = {"eval_loss": 0.4, "f1_micro": 0.8, "f1_date": 0.7}
    assert (row.metrics, row.bookkeeping) == (holdout, {k: v for k, v in flat.items() if k not in holdout})
    with store.engine.begin() as connection:
        command.downgrade(migrations._config(connection), "0004")
        merged = connection.execute(sa.select(rounds_0004.c.metrics)).scalar_one()
    assert merged == flat


def test_delete_sweep_removes_its_trials_rounds_and_promotions_only(store):
    for name in ["gone", "kept"]:
        new_sweep(store, name)
        for key in ["t1", "t2"]:
            store.trial_started(name, key, {})
            for number in [1, 2]:
                record = RoundRecord(number, {"eval_loss": 0.1 * number})
                store.round_reported(name, key, record, f"/{name}/{key}/{number}")
        store.record_promotion(name, "t1", False, "test", {"status": "NOT PROMOTED"})
    assert store.delete_sweep("gone") == {"rounds": 4, "trials": 2, "promotions": 1}
    assert store.get_sweep("gone") is None
    assert store.trials("gone") == [] and store.rounds("gone") == {} and store.latest_promotion("gone") is None
    assert [s.name for s in store.list_sweeps()] == ["kept"]
    assert [t.trial_key for t in store.trials("kept")] == ["t1", "t2"]
    assert {k: [r.round for r in v] for k, v in store.rounds("kept").items()} == {"t1": [1, 2], "t2": [1, 2]}
    assert store.latest_promotion("kept").trial_key == "t1"
    assert [count(store, t) for t in ("sweeper_sweeps", "sweeper_trials", "sweeper_rounds", "sweeper_promotions")] \
        == [1, 2, 4, 1]
    assert store.delete_sweep("gone") is None
    # the name is free again
    new_sweep(store, "gone")
    assert store.trials("gone") == []


# -- error hygiene -----------------------------------------------------------------------------------
@pytest.fixture
def unreachable_url(backend, tmp_path) -> str:
    """A URL of this backend that fails to connect (an OperationalError), with a password where one applies."""
    if backend == "sqlite":
        folder = tmp_path / "a-folder.db"  # a directory where the database file should be: cannot be opened
        folder.mkdir()
        return f"sqlite:///{folder}"
    return f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:1/test"  # port 1 refuses at once


@pytest.fixture
def unreachable_store(unreachable_url) -> TrialStore:
    store = TrialStore(unreachable_url)
    yield store
    store.engine.dispose()


def test_store_errors_come_after_retries_and_never_show_the_password(unreachable_store, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(store_module, "RETRIES", 1)
    monkeypatch.setattr(store_module.time, "sleep", sleeps.append)
    store = unreachable_store
    calls = [store.upgrade, store.ensure_current, lambda: new_sweep(store), lambda: store.trials("s1"),
             lambda: store.round_reported("s1", "t1", RoundRecord(1, {"eval_loss": 0.1}))]
    for call in calls:
        sleeps.clear()
        with pytest.raises(StoreError) as caught:
            call()
        message = str(caught.value)
        assert "unavailable after 1 retries" in message
        assert sleeps == [0.5], "one retry, after one backoff"
        shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
        assert PASSWORD not in shown
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_refused_operations_never_show_the_password(db_url, new_store, backend):
    url = db_url
    if backend == "postgresql":  # trust auth ignores the password: the connection works, the URL carries it
        url = make_url(db_url).set(password=PASSWORD).render_as_string(hide_password=False)
    store = new_store(url)
    with pytest.raises(StoreError, match="sweeper db upgrade") as missing:
        store.ensure_current()
    store.upgrade()
    with pytest.raises(StoreError, match="refused the operation") as refused:
        store.trial_started("no-such-sweep", "t1", {})  # a trial of no sweep violates NOT NULL
    with pytest.raises(StoreError, match="different spec") as conflict:
        new_sweep(store)
        store.open_sweep("s1", {}, "another", "eval_loss", "min")
    for caught in (missing, refused, conflict):
        assert PASSWORD not in "".join(traceback.format_exception(caught.value))
    assert store.trials("no-such-sweep") == []


def test_safe_url_hides_the_password(db_url, backend):
    if backend == "sqlite":  # a file URL has no password: shown unchanged, still a usable URL
        assert safe_url(db_url) == db_url
        with_password = f"postgresql+psycopg://postgres:{PASSWORD}@db.example:5432/sweeps"
    else:
        with_password = make_url(db_url).set(password=PASSWORD).render_as_string(hide_password=False)
        assert safe_url(db_url) == db_url
    assert PASSWORD in with_password
    shown = safe_url(with_password)
    assert PASSWORD not in shown and "***" in shown
    assert make_url(shown).database == make_url(with_password).database
    assert make_url(shown).username == "postgres"


# -- concurrency -------------------------------------------------------------------------------------
def test_two_stores_writing_interleaved_lose_nothing(store, new_store):
    new_sweep(store)
    other = new_store()
    rounds_each = 15
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(writer: TrialStore, key: str):
        try:
            barrier.wait(timeout=10)
            writer.trial_started("s1", key, {"key": key})
            for number in range(1, rounds_each + 1):
                record = RoundRecord(number, {"eval_loss": 1.0 / number, "accuracy": number / 100})
                writer.round_reported("s1", key, record, f"/{key}/{number}")
            writer.trial_finished("s1", key, "completed", "max_rounds")
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(writer, key)) for writer, key in [(store, "a"), (other, "b")]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    rounds = store.rounds("s1")
    assert {k: [r.round for r in v] for k, v in rounds.items()} == {k: list(range(1, rounds_each + 1)) for k in "ab"}
    assert count(other, "sweeper_rounds") == 2 * rounds_each
    for key in "ab":
        t = trial(other, "s1", key)
        assert (t.status, t.rounds, t.best_round, t.retries) == ("completed", rounds_each, rounds_each, 0)
        assert math.isclose(t.best_value, 1.0 / rounds_each)
        assert store.best_checkpoint(t) == f"/{key}/{rounds_each}"


def test_a_trial_that_failed_before_it_started_is_recorded_with_its_params(store):
    """Tune could not start it (no on_trial_start came): its failure still makes a row, so the store counts every
    trial the study does."""
    store.open_sweep("s1", {"a": 1}, "fp-1", "eval_loss", "min")
    store.trial_finished("s1", "t0003", "failed", "error", "could not re-use actor", params={"learning_rate": 0.01})
    [trial] = store.trials("s1")
    assert (trial.trial_key, trial.status, trial.stop_reason, trial.params) == \
        ("t0003", "failed", "error", {"learning_rate": 0.01})
    assert "re-use actor" in trial.error
