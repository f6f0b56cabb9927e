"""`sweeper compare` on a store whose trials are known exactly (written through TrialStore, no Ray), locally and
through the sweep service."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from sweeper import compare
from sweeper.cli import app
from sweeper.client import ServiceClient
from sweeper.service import create_app
from sweeper.settings import ServiceSettings
from sweeper.store import StoreError, TrialStore
from trainers.base import RoundRecord

# alpha maximises f1_micro. Rounds are (eval_loss, f1_micro); each trial's best round is NOT its last.
ALPHA = {
    "a1": ("completed", "completed", {"learning_rate": 1e-3, "batch_size": 16, "num_epochs": 3, "lora_r": 8},
           [(1.20, 0.40), (0.90, 0.70), (0.95, 0.65)]),
    "a2": ("early_stopped", "patience", {"learning_rate": 5e-4, "batch_size": 32, "num_epochs": 3, "lora_r": 16},
           [(1.10, 0.55), (1.00, 0.60), (1.05, 0.58)]),
    "a3": ("stopped", "asha", {"learning_rate": 1e-4, "batch_size": 16, "num_epochs": 2, "lora_r": 8},
           [(1.50, 0.20)]),
    "a4": ("failed", "error", {"learning_rate": 2e-2, "batch_size": 32, "num_epochs": 2, "lora_r": 16}, []),
}
# beta minimises eval_loss.
BETA = {
    "b1": ("completed", "completed", {"learning_rate": 2e-4, "batch_size": 16, "num_epochs": 2, "lora_r": 8},
           [(0.80, 0.50), (0.70, 0.52)]),
    "b2": ("completed", "completed", {"learning_rate": 3e-3, "batch_size": 16, "num_epochs": 2, "lora_r": 8},
           [(0.60, 0.61), (0.75, 0.66)]),
}


def _sweep(store: TrialStore, name: str, metric: str, mode: str, trials: dict) -> None:
    store.open_sweep(name, {"name": name}, f"fp-{name}", metric, mode)
    for key, (status, reason, params, rounds) in trials.items():
        store.trial_started(name, key, params)
        for n, (loss, f1) in enumerate(rounds, start=1):
            bookkeeping = {"train_loss": 9.9, "epoch": float(n), "rss_mb": 812.5, "stop_reason": "", "device": "cpu"}
            store.round_reported(name, key, RoundRecord(n, {"eval_loss": loss, "f1_micro": f1, "f1_date": f1 / 2},
                                                        bookkeeping), wall_time_s=10.0 * n)
        store.trial_finished(name, key, status, reason, "Traceback ...\nValueError: boom" if status == "failed" else "")


@pytest.fixture
def db(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = TrialStore(url)
    store.upgrade()
    _sweep(store, "alpha", "f1_micro", "max", ALPHA)
    _sweep(store, "beta", "eval_loss", "min", BETA)
    store.engine.dispose()
    return url


def test_rows_carry_the_metrics_of_the_best_round(db):
    rows = {r.trial: r for r in compare.trial_rows(TrialStore(db), ["alpha", "beta"])}
    assert set(rows) == {"a1", "a2", "a3", "a4", "b1", "b2"}
    a1 = rows["a1"]
    assert (a1.best_round, a1.objective, a1.status, a1.stop_reason) == (2, 0.70, "completed", "completed")
    assert a1.metrics == {"eval_loss": 0.90, "f1_micro": 0.70, "f1_date": 0.35}  # the record's metrics only
    assert rows["a2"].metrics["eval_loss"] == 1.00 and rows["a2"].best_round == 2
    assert rows["b2"].best_round == 1 and rows["b2"].objective == 0.60  # minimised: round 1 beats round 2
    assert rows["a4"].objective is None and rows["a4"].metrics == {} and rows["a4"].error.endswith("boom")
    assert [k for k, r in rows.items() if r.is_best] == ["a1", "b2"]


def test_sorting_and_status_filter(db):
    store = TrialStore(db)
    alpha = compare.trial_rows(store, ["alpha"])
    assert [r.trial for r in compare.sort_rows(alpha)] == ["a1", "a2", "a3", "a4"]  # max: best first, no value last
    assert [r.trial for r in compare.sort_rows(alpha, "eval_loss")] == ["a1", "a2", "a3", "a4"]  # loss ascending
    assert [r.trial for r in compare.sort_rows(alpha, "eval_loss", descending=True)] == ["a3", "a2", "a1", "a4"]
    assert [r.trial for r in compare.sort_rows(alpha, "param.learning_rate")] == ["a3", "a2", "a1", "a4"]
    assert [r.trial for r in compare.sort_rows(alpha, "learning_rate", descending=True)] == ["a4", "a1", "a2", "a3"]
    beta = compare.trial_rows(store, ["beta"])
    assert [r.trial for r in compare.sort_rows(beta)] == ["b2", "b1"]  # min: ascending
    kept = compare.trial_rows(store, ["alpha", "beta"], ["early_stopped", "stopped"])
    assert sorted(r.trial for r in kept) == ["a2", "a3"]
    with pytest.raises(compare.CompareError, match="cannot sort by 'f1_nope'"):
        compare.sort_rows(alpha, "f1_nope")
    with pytest.raises(compare.CompareError, match="unknown status"):
        compare.trial_rows(store, ["alpha"], ["finished"])
    with pytest.raises(StoreError, match="no sweep named 'gamma'"):
        compare.trial_rows(store, ["gamma"])


def _cli(*args: str):
    return CliRunner().invoke(app, ["compare", *args])


def test_cli_csv(db):
    result = _cli("alpha", "beta", "--db", db, "--format", "csv", "--sort", "f1_micro")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["trial"] for r in rows] == ["a1", "b2", "a2", "b1", "a3", "a4"]  # f1_micro descending, a4 has none
    a1 = next(r for r in rows if r["trial"] == "a1")
    assert (a1["sweep"], a1["status"], a1["best_round"], a1["is_best"]) == ("alpha", "completed", "2", "True")
    assert float(a1["eval_loss"]) == 0.90 and float(a1["param.learning_rate"]) == 1e-3
    assert {"train_loss", "epoch", "rss_mb", "objective_metric"} & set(rows[0]) == {"objective_metric"}
    assert next(r for r in rows if r["trial"] == "a4")["f1_micro"] == ""


def test_cli_json_with_filter_and_best_per_sweep(db):
    result = _cli("alpha", "beta", "--db", db, "--format", "json", "--status", "completed", "--ascending")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [t["trial"] for t in data["trials"]] == ["b2", "a1", "b1"]  # objective ascending; ties keep order
    assert {t["status"] for t in data["trials"]} == {"completed"}
    a1 = data["trials"][1]
    assert a1["metrics"]["f1_micro"] == 0.70 and a1["params"]["lora_r"] == 8 and a1["is_best"] is True
    best = {b["sweep"]: b for b in data["best"]}
    assert (best["alpha"]["trial"], best["alpha"]["value"], best["alpha"]["best_round"]) == ("a1", 0.70, 2)
    assert (best["beta"]["trial"], best["beta"]["value"], best["alpha"]["trials"]) == ("b2", 0.60, 4)


def test_cli_table(db):
    result = _cli("alpha", "--db", db, "--sort", "f1_date")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    trial_lines = [line for line in lines if any(f" {k} " in line or f" {k} *" in line for k in ALPHA)]
    assert [next(k for k in ALPHA if k in line) for line in trial_lines[:4]] == ["a1", "a2", "a3", "a4"]
    assert "a1 *" in result.stdout and "0.7000@2" in result.stdout and "f1_date" in result.stdout
    assert "best per sweep" in result.stdout


def test_tables_show_each_fields_f1_at_the_best_round(db, service):
    # a1's best round is 2 (f1_micro 0.70): its f1_date there is 0.35, not the last round's 0.325
    client = ServiceClient("http://testserver", TOKEN)
    client.http = service  # `sweeper --server URL trials alpha`: the service's trials table
    for args, obj in ((["compare", "alpha", "--db", db], None), (["trials", "alpha", "--db", db], None),
                      (["trials", "alpha"], client)):
        result = CliRunner().invoke(app, args, obj=obj, terminal_width=250)
        assert result.exit_code == 0, result.output
        header = next(line for line in result.stdout.splitlines() if "trial" in line and "status" in line)
        assert "f1_date" in header and "f1_micro" not in header  # the fields, not the aggregate again
        a1 = next(line for line in result.stdout.splitlines() if " a1 *" in line)
        assert "0.350" in a1 and "0.325" not in a1


def test_cli_errors(db):
    unknown = _cli("gamma", "--db", db)
    assert unknown.exit_code == 2 and "no sweep named 'gamma'" in unknown.output
    bad_sort = _cli("alpha", "--db", db, "--sort", "f1_nope")
    assert bad_sort.exit_code == 2 and "cannot sort by" in bad_sort.output
    bad_format = _cli("alpha", "--db", db, "--format", "xml")
    assert bad_format.exit_code == 2 and "use table, csv or json" in bad_format.output


# -- the same comparison through the sweep service (`GET /compare`, `sweeper --server URL compare`) ------------
TOKEN = "compare-token-0123456789abcdef"


@pytest.fixture
def service(db, tmp_path):
    """The real FastAPI app in-process on the same store (no sweep is launched: everything is read-only)."""
    settings = ServiceSettings.from_env({"SWEEPER_API_TOKENS": TOKEN, "SWEEPER_SERVICE_ROOT": str(tmp_path / "svc"),
                                         "SWEEPER_DATABASE_URL": db, "SWEEPER_DATA_ROOTS": str(tmp_path)})
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def test_service_compare_is_the_local_comparison(db, service):
    for args, query in [((), {}),
                        (("--sort", "f1_micro"), {"sort": "f1_micro"}),
                        (("--status", "completed", "--ascending"), {"status": ["completed"], "descending": "false"}),
                        (("--sort", "param.learning_rate", "--descending"),
                         {"sort": "param.learning_rate", "descending": "true"})]:
        local = _cli("alpha", "beta", "--db", db, "--format", "json", *args)
        assert local.exit_code == 0, local.output
        response = service.get("/compare", params={"sweep": ["alpha", "beta"], **query})
        assert response.status_code == 200, response.text
        assert response.json() == json.loads(local.stdout), args
    assert [t["trial"] for t in service.get("/compare", params={"sweep": "alpha"}).json()["trials"]] == \
        ["a1", "a2", "a3", "a4"]


def test_service_compare_errors(service):
    assert service.get("/compare", params={"sweep": "alpha"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    missing = service.get("/compare", params={"sweep": ["alpha", "gamma"]})
    assert missing.status_code == 404 and "no sweep named 'gamma'" in missing.json()["detail"]
    bad_sort = service.get("/compare", params={"sweep": "alpha", "sort": "f1_nope"})
    assert bad_sort.status_code == 422 and "cannot sort by 'f1_nope'" in bad_sort.json()["detail"]
    assert service.get("/compare", params={"sweep": "alpha", "status": "finished"}).status_code == 422
    assert service.get("/compare").status_code == 422  # at least one sweep


def _remote_cli(service, *args: str):
    client = ServiceClient("http://testserver", TOKEN)
    client.http = service  # the in-process app behind the very client `--server URL` builds
    return CliRunner().invoke(app, ["compare", *args], obj=client)


def test_remote_cli_compare_renders_as_the_local_one(db, service):
    for fmt in ("json", "csv", "table"):
        args = ("alpha", "beta", "--format", fmt, "--status", "completed,early_stopped", "--sort", "f1_date")
        local, remote = _cli(*args, "--db", db), _remote_cli(service, *args)
        assert remote.exit_code == 0, remote.output
        assert remote.stdout == local.stdout, fmt
    assert "a1 *" in remote.stdout and "best per sweep" in remote.stdout
    unknown = _remote_cli(service, "gamma")
    assert unknown.exit_code == 1 and "404" in unknown.output and "gamma" in unknown.output
    bad_status = _remote_cli(service, "alpha", "--status", "finished")
    assert bad_status.exit_code == 1 and "422" in bad_status.output and "query.status" in bad_status.output


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None)
@given(sort=st.one_of(st.sampled_from(["objective", "f1_micro", "param.lora_r", "rounds", "error"]), st.text(max_size=20)),
       statuses=st.lists(st.sampled_from(compare.STATUSES), max_size=3), descending=st.sampled_from([None, True, False]))
def test_service_compare_any_sort_and_filter(db, service, sort, statuses, descending):
    """Whatever is asked of real sweeps: the local answer, or the same 422 with the known keys; never a 500."""
    query = {"sweep": ["alpha", "beta"], "sort": sort, "status": statuses}
    if descending is not None:
        query["descending"] = str(descending).lower()
    response = service.get("/compare", params=query)
    store = TrialStore(db)
    try:
        expected = compare.compare(store, ["alpha", "beta"], statuses, sort, descending).to_dict()
    except compare.CompareError as exc:
        assert response.status_code == 422 and response.json()["detail"] == str(exc)
    else:
        assert response.status_code == 200 and response.json() == expected
    finally:
        store.engine.dispose()
