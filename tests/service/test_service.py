"""The sweep service against a real uvicorn server: auth, confinement, limits, and whole sweep lifecycles.

One lifecycle trains for real (MiniLM on SQLite: the promotion and the exported adapter); the others run the
synthetic task (trainers/synthetic.py: the real service, driver, Ray, store and study, deterministic curves at a
fixed pace), and place cancels and kills with its hold file, never by guessing the machine's speed.
The service's drivers join the session's shared local Ray cluster (SWEEPER_RAY_ADDRESS), except where the whole
machine goes away: there the driver's own Ray goes with it (the restarted service joins the shared one).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from helpers import narrow_training, small_spec, synthetic_spec

pytestmark = pytest.mark.slow


# The real lifecycle's training: a narrow space at a fixed batch of 16, two trials side by side, no early stop:
# each trial has 6 rounds (3 epochs x 2 evaluations), so the sweep is watched running well after its first round.
REAL_TRAINING = dict(
    **narrow_training("service-e2e", epochs=3),
    scheduler={"type": "none", "evals_per_epoch": 2},
    early_stopping={"patience": 20, "min_delta": 0.0},
)


def submittable_spec(tmp_path: Path, trials: int = 2, name: str = "svc-sweep") -> dict:
    """The small test spec (real MiniLM training), with its data under the service's data root and no storage."""
    spec = yaml.safe_load(small_spec(tmp_path, name=name, budget={"trials": trials, "max_concurrent": 2},
                                     **REAL_TRAINING).read_text())
    spec.pop("storage")
    spec["promotion"] = {"gates": ["eval_loss <= 50"], "bootstrap_samples": 200}  # generous: checks the path
    return spec


def synthetic_submittable_spec(tmp_path: Path, hold: Path, trials: int = 3, name: str = "svc-sweep",
                               round_seconds: float = 0.3, **overrides) -> dict:
    """The synthetic task's spec, its model folder and data under the service's data root (tmp_path/data);
    every trial waits before its next round while `hold` exists."""
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    spec = yaml.safe_load(synthetic_spec(root, round_seconds=round_seconds, hold_file=hold, name=name,
                                         budget={"trials": trials, "max_concurrent": 2}, **overrides).read_text())
    spec.pop("storage")
    return spec


def trials_of(service, name: str = "svc-sweep") -> list[dict]:
    return service.client.get(f"/sweeps/{name}/trials", params={"limit": 500}).json()["items"]


def sweep_of(service, name: str = "svc-sweep") -> dict:
    return service.client.get(f"/sweeps/{name}").json()


def run_until(service, hold: Path, reached) -> list[dict]:
    """Let the held sweep go until its trials (as the service lists them) satisfy `reached`, then hold it again:
    from then on no trial starts another round. Polled fast; a synthetic round takes its fixed pace."""
    hold.unlink()
    trials = service.wait_for(lambda: (t := trials_of(service)) and reached(t) and t, timeout=120, every=0.05)
    hold.touch()
    return trials


def test_auth_confinement_and_limits(tmp_path, make_service):
    service = make_service()
    anonymous = {"Authorization": ""}
    assert service.client.get("/health", headers=anonymous).json() == {"status": "ok"}
    spec = submittable_spec(tmp_path)
    for method, path in [("get", "/sweeps"), ("get", "/sweeps/x"), ("get", "/sweeps/x/trials"),
                         ("get", "/sweeps/x/trials/t/rounds"), ("post", "/sweeps/x/cancel"),
                         ("get", "/sweeps/x/export"), ("post", "/sweeps/x/promote"), ("get", "/sweeps/x/promotion")]:
        for headers in (anonymous, {"Authorization": "Bearer wrong-token-0123456789"}):
            response = service.client.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
    refused = service.client.post("/sweeps", json={"spec": spec}, headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    assert service.client.get("/sweeps").json() == []  # nothing was written by the refused submission

    outside = {**spec, "data": {**spec["data"], "train": "/etc/passwd"}}
    response = service.client.post("/sweeps", json={"spec": outside})
    assert response.status_code == 422
    assert {"path": "data.train", "message": "outside the service's data roots"} in response.json()["detail"]
    escaping = {**spec, "data": {**spec["data"], "holdout": "../../etc/hosts"}}
    assert service.client.post("/sweeps", json={"spec": escaping}).status_code == 422
    assert service.client.post("/sweeps", json={"spec": {**spec, "model": "/usr/lib"}}).status_code == 422
    storage = service.client.post("/sweeps", json={"spec": {**spec, "storage": {"root": "/tmp/elsewhere"}}})
    assert storage.status_code == 422 and storage.json()["detail"][0]["path"] == "storage"
    bad = service.client.post("/sweeps", json={"spec": {**spec, "budget": {"trials": 0}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["path"] == "budget.trials"
    code = service.client.post("/sweeps", json={"spec": {**spec, "trainer": "os.system"}})
    assert code.status_code == 422 and code.json()["detail"][0]["path"] == "trainer"
    too_big = service.client.post("/sweeps", content=b"{" + b" " * 100_000 + b"}",
                                  headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413
    chunked = service.client.post("/sweeps", content=iter([b" " * 1024] * 100),  # no Content-Length
                                  headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert service.client.get("/sweeps").json() == []
    log = service.log.read_text()
    assert "test-token-0123456789abcdef" not in log


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_submit_watch_and_download(tmp_path, make_service, backend, request, shared_ray):
    """SQLite: real MiniLM training end to end, promoted on the test split, the LoRA adapter exported.
    PostgreSQL: the same lifecycle on the synthetic task (what differs is the store, not the training; the
    promotion record on PostgreSQL is the store contract suite's). It is watched while held mid-sweep."""
    real = backend == "sqlite"
    url = None if real else request.getfixturevalue("postgres_url")
    service = make_service(url, shared_ray)
    hold = tmp_path / "hold"
    if real:
        trials = 2
        spec = submittable_spec(tmp_path, trials)
    else:
        trials = 3
        hold.touch()  # every trial waits before its first round until the test lets it go
        spec = synthetic_submittable_spec(tmp_path, hold, trials, scheduler={"type": "none", "evals_per_epoch": 2})
    accepted = service.client.post("/sweeps", json={"spec_yaml": yaml.safe_dump(spec)})
    assert accepted.status_code == 202, accepted.text
    assert service.client.post("/sweeps", json={"spec": spec}).status_code == 409  # already queued / running

    def running_with_rounds():
        sweep = sweep_of(service)
        with_rounds = [t for t in trials_of(service) if t["rounds"] > 0]
        return sweep["status"] == "running" and with_rounds and (sweep, with_rounds)

    if not real:  # held after the first round any trial reports: the sweep is running, with rounds to show
        run_until(service, hold, lambda trials: any(t["rounds"] > 0 for t in trials))
        assert sweep_of(service)["status"] == "running"
    _, visible = service.wait_for(running_with_rounds, every=0.2)
    rounds = service.client.get(f"/sweeps/svc-sweep/trials/{visible[0]['trial_key']}/rounds").json()
    assert rounds and rounds[0]["round"] == 1 and rounds[0]["eval_loss"] > 0
    hold.unlink(missing_ok=True)

    done = service.wait_for(lambda: (s := sweep_of(service))["status"] == "completed" and s)
    assert done["trials"] == trials and done["best_trial"]
    listed = [t["trial_key"] for t in trials_of(service)]
    pages = [service.client.get("/sweeps/svc-sweep/trials", params={"limit": 1, "offset": n}).json() for n in (0, 1)]
    assert [p["total"] for p in pages] == [trials, trials]  # one trial a page, the second page after the first
    assert [t["trial_key"] for p in pages for t in p["items"]] == listed[:2] and len(listed) == trials
    # The CLI's remote mode drives the same service.
    env = {**service.env, "SWEEPER_API_TOKEN": service.token}
    remote = [sys.executable, "-m", "sweeper", "--server", service.url]
    if real:  # started where the sweeps run (here: a local `sweeper promote`), never in the request
        # One promotion, started by the remote CLI (its POST must be accepted, then it waits for the outcome);
        # while it runs, a second POST is refused: one at a time. (The 202 body: tests/service/test_two_replicas.py.)
        promoting = subprocess.Popen([*remote, "promote", "svc-sweep"], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

        def promotion_state() -> dict | None:
            response = service.client.get("/sweeps/svc-sweep/promotion")
            assert response.status_code in (200, 404), response.text  # 404: the CLI has not posted yet
            return response.json() if response.status_code == 200 else None

        try:
            first = service.wait_for(lambda: promotion_state() or promoting.poll() is not None, every=0.1)
            assert first is not True, promoting.communicate()  # the CLI ended before its promotion was seen
            assert first["state"] == "running", first  # seen before the promotion ended
            assert service.client.post("/sweeps/svc-sweep/promote").status_code == 409  # one at a time
            out, err = promoting.communicate(timeout=300)
        finally:
            if promoting.poll() is None:
                promoting.kill()
        assert promoting.returncode == 0 and "PROMOTED" in out, out + err
        state = promotion_state()
        assert state["state"] == "finished", state
        promotion = state["result"]
        assert promotion["status"] == "PROMOTED" and promotion["split"] == "test"
    export = service.client.get("/sweeps/svc-sweep/export")
    assert export.status_code == 200 and export.headers["content-type"] == "application/zip"
    model_file = "adapter/adapter_config.json" if real else "adapter/synthetic_state.json"
    with zipfile.ZipFile(io.BytesIO(export.content)) as archive:
        assert {"winner.yaml", "winner.json", model_file} <= set(archive.namelist())
        record = json.loads(archive.read("winner.json"))
    assert record["winner"]["trial_key"] == done["best_trial"]
    if real:
        assert record["promotion"]["promoted"] == promotion["promoted"]  # the export says the outcome

    listing = subprocess.run([*remote, "trials", "svc-sweep"], env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and done["best_trial"] in listing.stdout, listing.stderr
    compared = subprocess.run([*remote, "compare", "svc-sweep", "--format", "json"], env=env, capture_output=True,
                              text=True, timeout=60)
    local = subprocess.run([sys.executable, "-m", "sweeper", "compare", "svc-sweep", "--format", "json", "--db",
                            service.env["SWEEPER_DATABASE_URL"]], env=env, capture_output=True, text=True, timeout=60)
    assert compared.returncode == 0 and local.returncode == 0, compared.stderr + local.stderr
    comparison = json.loads(compared.stdout)
    assert comparison == json.loads(local.stdout)  # the service's comparison is the store's, row for row
    assert [t["trial"] for t in comparison["trials"] if t["is_best"]] == [comparison["trials"][0]["trial"]] == \
        [done["best_trial"]] and comparison["trials"][0]["metrics"]["eval_loss"] > 0
    target = tmp_path / "downloaded"
    exported = subprocess.run([*remote, "export", "svc-sweep", "--out", str(target)], env=env, capture_output=True,
                              text=True, timeout=60)
    assert exported.returncode == 0 and (target / "winner.yaml").is_file(), exported.stderr
    refused = subprocess.run([*remote, "status"], env={**env, "SWEEPER_API_TOKEN": "wrong-token-0123456789"},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "401" in refused.stderr


def test_cancel_stops_the_driver(tmp_path, make_service, shared_ray):
    """Cancelled while both running trials are held after their first round: no trial can finish and no slot
    frees, so the sweep cannot complete, or start more trials, before the cancel lands, on any machine."""
    service = make_service(ray_address=shared_ray)
    hold = tmp_path / "hold"
    hold.touch()
    spec = synthetic_submittable_spec(tmp_path, hold, trials=6, scheduler={"type": "none", "evals_per_epoch": 2})
    assert service.client.post("/sweeps", json={"spec": spec}).status_code == 202
    service.wait_for(lambda: len(trials_of(service)) == 2, every=0.2)  # max_concurrent: both started, both held
    # After a round, not before the first: Tune takes 10 s to stop a trial that has not reported yet.
    run_until(service, hold, lambda trials: any(t["rounds"] > 0 for t in trials))
    assert service.client.post("/sweeps/svc-sweep/cancel").status_code == 200
    final = service.wait_for(lambda: (s := sweep_of(service))["status"] == "cancelled" and s, timeout=120)
    assert final["trials"] == 2 < 6
    assert all(t["status"] != "completed" for t in trials_of(service))  # the held trials never got to finish
    assert service.client.post("/sweeps/svc-sweep/cancel").status_code == 409
    pid = service.driver_pids()[0]
    assert service.wait_for(lambda: not _alive(pid), timeout=60)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stored_rounds(service, trials: list[dict]) -> dict[tuple[str, int], float]:
    """(trial, round) -> eval_loss of every round the service shows for `trials`."""
    return {(t["trial_key"], r["round"]): r["eval_loss"] for t in trials
            for r in service.client.get(f"/sweeps/svc-sweep/trials/{t['trial_key']}/rounds").json()}


def test_service_and_driver_killed_mid_sweep_resume_with_nothing_lost(tmp_path, make_service, shared_ray):
    """Service, driver and its Ray killed while a trial is held after its second round, other trials still to
    run; the restarted service resumes the sweep: every round written before the kill is kept as it was, each
    trial is there once, and the interrupted trials continue from their checkpoints. (The restarted service's
    driver joins the session's shared Ray: the killed Ray is not the one that resumes, as on a new machine.)"""
    service = make_service()
    hold = tmp_path / "hold"
    hold.touch()
    spec = synthetic_submittable_spec(tmp_path, hold, trials=4, scheduler={"type": "none", "evals_per_epoch": 2})
    assert service.client.post("/sweeps", json={"spec": spec}).status_code == 202
    service.wait_for(lambda: trials_of(service), every=0.2)  # started, held before the first round
    run_until(service, hold, lambda trials: any(t["rounds"] >= 2 for t in trials))
    before = trials_of(service)
    assert sweep_of(service)["status"] == "running" and len(before) < 4, before  # killed mid-sweep, not after it
    kept = stored_rounds(service, before)
    first_driver = service.driver_pids()[0]
    service.kill()
    os.killpg(first_driver, signal.SIGKILL)  # the whole machine went away: service, driver and its Ray
    shown = subprocess.run([sys.executable, "-m", "sweeper", "status", "svc-sweep", "--db", service.env["SWEEPER_DATABASE_URL"]],
                           env=service.env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "interrupted" in shown.stdout, shown.stdout  # not `running`: no live driver
    hold.unlink()
    service.env["SWEEPER_RAY_ADDRESS"] = shared_ray
    service.start()
    done = service.wait_for(lambda: (s := sweep_of(service))["status"] == "completed" and s)
    assert service.driver_pids()[0] != first_driver  # a new driver resumed the sweep
    after = trials_of(service)
    keys = [t["trial_key"] for t in after]
    assert len(keys) == len(set(keys)) == done["trials"] == 4
    final = stored_rounds(service, after)
    assert final.items() >= kept.items(), "a round written before the kill was lost or changed"
    for trial in after:  # every round of every trial, once
        assert sorted(n for key, n in final if key == trial["trial_key"]) == list(range(1, trial["rounds"] + 1))
    resumed = {t["trial_key"]: t["retries"] for t in after if t["trial_key"] in
               {b["trial_key"] for b in before if b["status"] == "running" and b["rounds"] > 0}}
    assert resumed and set(resumed.values()) == {1}, resumed  # continued from its checkpoint, counted as a retry
    study = optuna.load_study(study_name="svc-sweep", storage=f"sqlite:///{service.root / 'sweeper.db'}")
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4
