"""The service app in-process, on a real store: concurrent submissions, limits, docs and error hygiene.

Driver processes are not started here (`FakePopen` records what would have run): these tests are about
what the API answers and what the store holds. `test_service.py` runs real drivers.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import small_spec

import sweeper.service as service_module
import sweeper.supervisor as supervisor_module
from sweeper.service import create_app
from sweeper.settings import ServiceSettings, SettingsError
from sweeper.spec import parse_spec
from sweeper.store import TrialStore
from sweeper.sweeps import stored_spec
from sweeper.yaml_safe import load_yaml

TOKEN = "app-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakePopen:
    """A driver that was "started" and keeps running: it records its command and environment."""

    started: list[FakePopen] = []
    pids = itertools.count(10_000_000)

    def __init__(self, command, env=None, **_):
        self.command, self.env, self.pid = command, env, next(FakePopen.pids)
        FakePopen.started.append(self)

    def poll(self):
        return None


@pytest.fixture
def fake_drivers(monkeypatch) -> list[FakePopen]:
    FakePopen.started = []
    fake = types.SimpleNamespace(Popen=FakePopen, STDOUT=subprocess.STDOUT, DEVNULL=subprocess.DEVNULL)
    monkeypatch.setattr(supervisor_module, "subprocess", fake)
    monkeypatch.setattr(service_module, "RECONCILE_EVERY_S", 3600)  # only the reconcile pass at start-up
    return FakePopen.started


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def spec_for(tmp_path: Path, name: str = "app-sweep") -> dict:
    spec = yaml.safe_load(small_spec(tmp_path, name=name, budget={"trials": 2, "max_concurrent": 1}).read_text())
    spec.pop("storage")
    return spec


def settings_for(tmp_path: Path, url: str | None = None, **env: str) -> ServiceSettings:
    root = tmp_path / "service"
    return ServiceSettings.from_env({"SWEEPER_API_TOKENS": TOKEN, "SWEEPER_SERVICE_ROOT": str(root),
                                     "SWEEPER_DATABASE_URL": url or f"sqlite:///{root / 'sweeper.db'}",
                                     "SWEEPER_DATA_ROOTS": str(tmp_path / "data"), "SWEEPER_MAX_ACTIVE_SWEEPS": "20",
                                     "SWEEPER_MAX_BODY_BYTES": str(64 * 1024), **env})


def call(settings: ServiceSettings, requests: list[tuple]) -> list[httpx.Response]:
    """Run the app (its lifespan too) and send the requests all at once; answers in request order."""

    async def main():
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500, as a server answers
            async with httpx.AsyncClient(transport=transport, base_url="http://app", timeout=120) as client:
                return await asyncio.gather(*(client.request(method, path, **{"headers": AUTH, **kwargs})
                                              for method, path, kwargs in requests))

    return asyncio.run(main())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_identical_concurrent_submissions_start_one_driver(tmp_path, fake_drivers, backend, request):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    settings = settings_for(tmp_path, url)
    spec = spec_for(tmp_path)
    answers = call(settings, [("POST", "/sweeps", {"json": {"spec": spec}})] * 6)
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] + [409] * 5, [a.text for a in answers]
    assert len(fake_drivers) == 1
    refusal = next(a for a in answers if a.status_code == 409).json()["detail"]
    assert "app-sweep" in refusal and "driver" in refusal
    claim = TrialStore(settings.database_url.get_secret_value()).driver_claim("app-sweep")
    assert fake_drivers[0].env["SWEEPER_CLAIM_TOKEN"] == claim.token  # the driver takes the service's claim over


def test_concurrent_submissions_of_different_sweeps_never_fail(tmp_path, fake_drivers):
    settings = settings_for(tmp_path)
    names = [f"sweep-{i}" for i in range(6)]
    answers = call(settings, [("POST", "/sweeps", {"json": {"spec": {**spec_for(tmp_path), "name": n}}})
                              for n in names])
    assert [a.status_code for a in answers] == [202] * 6, [a.text for a in answers]
    assert sorted(Path(d.command[-1]).stem for d in fake_drivers) == names
    store = TrialStore(settings.database_url.get_secret_value())
    assert {s.name: s.status for s in store.list_sweeps()} == dict.fromkeys(names, "queued")


def test_concurrent_submissions_never_start_more_sweeps_than_allowed(tmp_path, fake_drivers):
    settings = settings_for(tmp_path, SWEEPER_MAX_ACTIVE_SWEEPS="3")
    answers = call(settings, [("POST", "/sweeps", {"json": {"spec": {**spec_for(tmp_path), "name": f"sweep-{i}"}}})
                              for i in range(6)])
    assert sorted(a.status_code for a in answers) == [202] * 3 + [503] * 3, [a.text for a in answers]
    assert len(fake_drivers) == 3


def recorded_sweep(tmp_path: Path, status: str) -> tuple[ServiceSettings, TrialStore, dict]:
    """A service's settings and store that hold the sweep of `spec_for` (as the service would have stored it) in
    `status`; the spec is returned as a client submits it."""
    settings = settings_for(tmp_path)
    store = TrialStore(settings.database_url.get_secret_value())
    store.upgrade()
    spec = spec_for(tmp_path)
    parsed = parse_spec({**spec, "storage": {"root": str(settings.root)}}, settings.data_roots[0])  # as submitted
    store.open_sweep(parsed.name, stored_spec(parsed), parsed.fingerprint(), "eval_loss", "min")
    store.update_sweep(parsed.name, status=status)
    return settings, store, spec


def test_a_running_sweep_whose_driver_is_gone_shows_interrupted_and_can_be_resubmitted(tmp_path, fake_drivers):
    settings, store, spec = recorded_sweep(tmp_path, "running")
    # its `sweeper run` driver was SIGKILLed: its pid is gone
    store.claim(spec["name"], owner=f"{socket.gethostname()}:{dead_pid()}")
    shown, = call(settings, [("GET", "/sweeps/app-sweep", {})])
    assert shown.json()["status"] == "interrupted" and "driver" in shown.json()["message"], shown.json()
    resubmitted, = call(settings, [("POST", "/sweeps", {"json": {"spec": spec}})])
    assert resubmitted.status_code == 202, resubmitted.text
    assert len(fake_drivers) == 1


def test_paging_beyond_any_store_is_refused_not_a_server_error(tmp_path, fake_drivers):
    settings = settings_for(tmp_path)
    store = TrialStore(settings.database_url.get_secret_value())
    store.upgrade()
    store.open_sweep("s1", {}, "fp", "eval_loss", "min")
    answers = call(settings, [("GET", "/sweeps/s1/trials", {"params": {"offset": 10**30}}),
                              ("GET", "/sweeps/s1/trials", {"params": {"limit": 10**30}}),
                              ("GET", "/sweeps/s1/trials", {"params": {"offset": -1}}),
                              ("GET", "/sweeps/s1/trials", {"params": {"offset": 10**9}})])
    assert [a.status_code for a in answers] == [422, 422, 422, 200], [a.text for a in answers]


def test_paths_outside_the_data_roots_get_one_message_whether_they_exist_or_not(tmp_path, fake_drivers):
    spec = spec_for(tmp_path)
    missing = tmp_path / "outside" / "no-such-file.json"
    cases = [{**spec, "data": {**spec["data"], "train": "/etc/passwd"}},
             {**spec, "data": {**spec["data"], "train": str(missing)}},
             {**spec, "model": "/usr/lib"}, {**spec, "model": "/usr/no-such-model-dir"},
             {**spec, "model": {"path": "/usr/lib", "dtype": "float32"}}]  # the model block
    answers = call(settings_for(tmp_path), [("POST", "/sweeps", {"json": {"spec": c}}) for c in cases])
    assert [a.status_code for a in answers] == [422] * 5
    details = [a.json()["detail"] for a in answers]
    assert details[0] == details[1] == [{"path": "data.train", "message": "outside the service's data roots"}]
    assert details[2] == details[3] and details[2][0]["path"] == "model"
    assert details[4] == [{**details[2][0], "path": "model.path"}]
    assert not any("not found" in str(d) or "no-such" in str(d) for d in details)


def test_docs_and_schema_need_the_token_when_tokens_are_set(tmp_path, fake_drivers):
    nobody = {"headers": {"Authorization": ""}}
    answers = call(settings_for(tmp_path), [("GET", "/openapi.json", nobody), ("GET", "/docs", nobody),
                                            ("GET", "/redoc", nobody), ("GET", "/openapi.json", {}),
                                            ("GET", "/health", nobody)])
    assert [a.status_code for a in answers] == [401, 404, 404, 200, 200]
    assert "/sweeps" in answers[3].json()["paths"]


def test_a_chunked_body_over_the_limit_gets_413(tmp_path, fake_drivers):
    async def chunks(count: int, size: int = 1024):  # no Content-Length: sent as Transfer-Encoding: chunked
        for _ in range(count):
            yield b" " * size

    json_body = {**AUTH, "Content-Type": "application/json"}
    answers = call(settings_for(tmp_path), [("POST", "/sweeps", {"content": chunks(100), "headers": json_body}),
                                            ("POST", "/sweeps", {"content": chunks(1, 2), "headers": json_body})])
    assert answers[0].status_code == 413, answers[0].text
    assert answers[1].status_code == 422  # a small chunked body still reaches the app


@pytest.mark.parametrize("variable, value", [("SWEEPER_MAX_BODY_BYTES", "abc"), ("SWEEPER_MAX_BODY_BYTES", "10"),
                                             ("SWEEPER_MAX_ACTIVE_SWEEPS", "two")])
def test_a_bad_setting_names_its_variable(tmp_path, variable, value):
    with pytest.raises(SettingsError) as caught:
        settings_for(tmp_path, **{variable: value})
    assert variable in str(caught.value) and repr(value) in str(caught.value)


def test_a_bad_setting_never_shows_a_secret(tmp_path):
    with pytest.raises(SettingsError) as caught:
        settings_for(tmp_path, SWEEPER_DATA_ROOTS="", SWEEPER_MAX_BODY_BYTES="x",
                     SWEEPER_DATABASE_URL="postgresql+psycopg://u:s3cretPW@h/db")
    assert "s3cretPW" not in str(caught.value) and TOKEN not in str(caught.value)


def test_every_bad_input_of_the_catalogue_gets_a_4xx_and_nothing_is_launched_or_stored(tmp_path, fake_drivers):
    """The bad-input catalogue (tests/reliability/bad_inputs) through POST /sweeps: each refused with a 4xx naming
    the problem, never a 500; no driver started, no sweep recorded."""
    catalogue_dir = Path(__file__).resolve().parents[1] / "reliability" / "bad_inputs"
    catalogue = [entry for entry in yaml.safe_load((catalogue_dir / "catalogue.yaml").read_text())
                 if _utf8(catalogue_dir / entry["file"])]  # a JSON body is text: bytes that are not UTF-8 cannot come
    shutil.copytree(catalogue_dir, tmp_path / "data")  # relative data paths resolve under the data root
    settings = settings_for(tmp_path, SWEEPER_MAX_BODY_BYTES=str(1 << 20))
    answers = call(settings, [("POST", "/sweeps", {"json": service_body(catalogue_dir / e["file"])}) for e in catalogue])
    for entry, answer in zip(catalogue, answers):
        assert 400 <= answer.status_code < 500, (entry["file"], answer.status_code, answer.text[:500])
        named = entry["message"] in answer.text or (entry["field"] and f'"path":"{entry["field"]}"' in answer.text)
        assert named or answer.status_code == 413, (entry["file"], answer.text[:500])  # the service's own words
    assert fake_drivers == []
    assert TrialStore(settings.database_url.get_secret_value()).list_sweeps() == []


def service_body(path: Path) -> dict:
    """A catalogue file as a submission: the spec as parsed, less its `storage:` (the service refuses that first);
    the raw text when the project's YAML loader refuses it (the service must too)."""
    text = path.read_text()
    try:
        spec = load_yaml(text)
    except yaml.YAMLError:
        return {"spec_yaml": text}
    if isinstance(spec, dict):
        spec.pop("storage", None)
        return {"spec": spec}
    return {"spec_yaml": text}


def _utf8(path: Path) -> bool:
    try:
        path.read_text()
        return True
    except UnicodeDecodeError:
        return False


def test_a_completed_sweep_given_more_budget_continues_and_any_other_change_is_refused(tmp_path, fake_drivers):
    settings, store, spec = recorded_sweep(tmp_path, "completed")
    again, = call(settings, [("POST", "/sweeps", {"json": {"spec": spec}})])
    assert again.status_code == 409 and "raise its budget" in again.json()["detail"], again.text
    changed = {**spec, "seed": spec.get("seed", 0) + 1, "budget": {**spec["budget"], "trials": 4}}
    refused, = call(settings, [("POST", "/sweeps", {"json": {"spec": changed}})])
    assert refused.status_code == 409 and not fake_drivers, refused.text
    assert any(item["path"] == "seed" for item in refused.json()["detail"]), refused.text
    more = {**spec, "budget": {**spec["budget"], "trials": 4}}
    continued, = call(settings, [("POST", "/sweeps", {"json": {"spec": more}})])
    assert continued.status_code == 202, continued.text
    assert len(fake_drivers) == 1
    sweep = store.get_sweep(spec["name"])
    assert sweep.status == "queued" and sweep.spec["budget"]["trials"] == 4


def test_a_sweep_recorded_under_the_earlier_rung_default_is_resubmitted_with_it(tmp_path, fake_drivers):
    settings, store, spec = recorded_sweep(tmp_path, "interrupted")
    recorded = store.get_sweep(spec["name"])
    before_the_key = {**recorded.spec, "scheduler": {k: v for k, v in recorded.spec["scheduler"].items()
                                                     if k != "rung_metric"}}  # recorded before rung_metric existed
    earlier = parse_spec({**spec, "scheduler": {**spec["scheduler"], "rung_metric": "objective"},
                          "storage": {"root": str(settings.root)}}, settings.data_roots[0])
    store.update_sweep(spec["name"], spec=before_the_key, spec_fingerprint=earlier.fingerprint())
    said = {**spec, "scheduler": {**spec["scheduler"], "rung_metric": "holdout_loss"}}
    refused, = call(settings, [("POST", "/sweeps", {"json": {"spec": said}})])
    assert refused.status_code == 409 and not fake_drivers, refused.text
    assert [item["path"] for item in refused.json()["detail"]] == ["scheduler.rung_metric"], refused.text
    resubmitted, = call(settings, [("POST", "/sweeps", {"json": {"spec": spec}})])  # the key left unset
    assert resubmitted.status_code == 202, resubmitted.text
    driven = load_yaml((settings.root / "specs" / "app-sweep.yaml").read_text())  # what the driver runs
    assert driven["scheduler"]["rung_metric"] == "objective"
    assert store.get_sweep(spec["name"]).spec_fingerprint == earlier.fingerprint()
