"""Two service replicas, one PostgreSQL store, one storage root, sweeps as Ray jobs on a real local Ray cluster with
its dashboard (Ray's Job Submission API): what one replica starts, the other watches, cancels, exports, promotes
and, once the first replica and the sweep's driver are killed, restarts, with no trial lost or run twice.

The synthetic task (trainers/synthetic.py) paces the trials, and its hold file places the cancel and the kills.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import httpx
import optuna
import psutil
import pytest
import yaml
from helpers import answers, cli_env, free_ports, kill_processes, processes_mentioning, ray_tmp, synthetic_spec

from sweeper.store import SERVICE_OWNER, TrialStore

pytestmark = pytest.mark.slow

RAY_CPUS = 4  # two trials of a sweep at once, with room for the job's driver


@pytest.fixture
def ray_head(tmp_path) -> Iterator[str]:
    """A Ray head with its dashboard (the Job Submission API) on free ports and the test's own temp folder; yields
    the dashboard's URL. Stopped by id: the processes that name its folder or its address, and all they started
    (Ray's agents rename themselves and would be missed)."""
    bin_dir = Path(sys.executable).parent
    env = {**cli_env(tmp_path), "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    dashboard, gcs, client, agent = free_ports(4)
    try:
        started = subprocess.run(
            [str(bin_dir / "ray"), "start", "--head", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dashboard}", f"--port={gcs}", f"--ray-client-server-port={client}",
             f"--dashboard-agent-listen-port={agent}", f"--num-cpus={RAY_CPUS}",
             f"--temp-dir={ray_tmp(tmp_path)}", "--disable-usage-stats"], env=env, capture_output=True, text=True,
            timeout=180)
        assert started.returncode == 0, started.stdout + started.stderr
        url = f"http://127.0.0.1:{dashboard}"
        assert answers(f"{url}/api/version", timeout=60, every=0.5), "the Ray dashboard did not answer"
        yield url
    finally:
        _stop_head(tmp_path, gcs)


def _stop_head(tmp_path: Path, gcs_port: int) -> None:
    address = f":{gcs_port}"
    head = set(processes_mentioning(str(ray_tmp(tmp_path))))
    head.update(p for p in processes_mentioning(address) if any(part.endswith(address) for part in _cmdline(p)))
    for proc in list(head):
        try:
            head.update(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    kill_processes(list(head))


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def submittable(tmp_path: Path, name: str, trials: int) -> tuple[dict, Path]:
    """A synthetic sweep under the services' data root, its own model folder and hold file (held from the start)."""
    root = tmp_path / "data" / name
    root.mkdir(parents=True)
    hold = tmp_path / f"hold-{name}"
    hold.touch()
    spec = yaml.safe_load(synthetic_spec(root, round_seconds=0.3, hold_file=hold, name=name,
                                         budget={"trials": trials, "max_concurrent": 2},
                                         scheduler={"type": "none", "evals_per_epoch": 2}).read_text())
    spec.pop("storage")
    return spec, hold


def sweep_of(service, name: str) -> dict:
    return service.client.get(f"/sweeps/{name}").json()


def trials_of(service, name: str) -> list[dict]:
    return service.client.get(f"/sweeps/{name}/trials", params={"limit": 500}).json()["items"]


def rounds_of(service, name: str, trials: list[dict]) -> dict[tuple[str, int], float]:
    return {(t["trial_key"], r["round"]): r["eval_loss"] for t in trials
            for r in service.client.get(f"/sweeps/{name}/trials/{t['trial_key']}/rounds").json()}


def run_until(watcher, hold: Path, name: str, reached) -> list[dict]:
    """Let the held sweep go until its trials, as `watcher` lists them, satisfy `reached`; then hold it again."""
    hold.unlink()
    trials = watcher.wait_for(lambda: (t := trials_of(watcher, name)) and reached(t) and t, timeout=120, every=0.05)
    hold.touch()
    return trials


def job_status(dashboard: str, submission_id: str) -> str:
    return httpx.get(f"{dashboard}/api/jobs/{submission_id}", timeout=10).json()["status"]


def job_logs(dashboard: str, store: TrialStore) -> str:
    """The Ray jobs' own logs, for a failure's message."""
    logs = []
    for job in httpx.get(f"{dashboard}/api/jobs/", timeout=10).json():
        text = httpx.get(f"{dashboard}/api/jobs/{job['submission_id']}/logs", timeout=10).json()["logs"]
        logs.append(f"--- {job['submission_id']} ({job['status']}):\n{text[-3000:]}")
    return "\n".join(logs)


def test_two_replicas_share_every_sweep(tmp_path, make_service, postgres_url, ray_head):
    dashboard = ray_head
    try:
        two_replicas(tmp_path, make_service, postgres_url, dashboard)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{job_logs(dashboard, TrialStore(postgres_url))}") from None


def two_replicas(tmp_path, make_service, postgres_url: str, dashboard: str) -> None:
    a = make_service(postgres_url, dashboard, label="replica-a")
    b = make_service(postgres_url, dashboard, label="replica-b")
    store = TrialStore(postgres_url)
    # Both submitted on A at once (their jobs start side by side), both held before their first round.
    cancelled, hold_c = submittable(tmp_path, "cancelled", 6)
    resumed, hold_r = submittable(tmp_path, "resumed", 3)
    for spec in (cancelled, resumed):
        assert a.client.post("/sweeps", json={"spec": spec}).status_code == 202
    job = store.driver("cancelled")
    assert job.kind == "ray_job" and job.driver_id.startswith("sweeper-run-cancelled-")
    for name in ("cancelled", "resumed"):  # both trials of each started (max_concurrent), as B sees them
        b.wait_for(lambda name=name: len(trials_of(b, name)) == 2, timeout=120, every=0.2)

    # Watched and cancelled on B.
    run_until(b, hold_c, "cancelled", lambda trials: any(t["rounds"] > 0 for t in trials))
    assert sweep_of(b, "cancelled")["status"] == "running"
    assert b.client.post("/sweeps/cancelled/cancel").status_code == 200
    final = b.wait_for(lambda: (s := sweep_of(b, "cancelled"))["status"] == "cancelled" and s, timeout=120)
    assert final["trials"] == 2 < 6 and sweep_of(a, "cancelled")["status"] == "cancelled"
    b.wait_for(lambda: job_status(dashboard, job.driver_id) not in ("PENDING", "RUNNING"), timeout=60)
    assert a.client.post("/sweeps/cancelled/cancel").status_code == 409  # nothing left to cancel, on either

    # A and the sweep's driver killed mid-sweep; B restarts the driver, and exports the sweep once it completes.
    before = run_until(b, hold_r, "resumed", lambda trials: any(t["rounds"] >= 2 for t in trials))
    assert sweep_of(b, "resumed")["status"] == "running" and len(before) < 3, before
    kept = rounds_of(b, "resumed", before)
    first_job = store.driver("resumed").driver_id
    owner = store.driver_claim("resumed").owner
    assert not owner.endswith(SERVICE_OWNER)  # the job's driver took the claim over
    a.kill()
    os.kill(int(owner.rpartition(":")[2]), signal.SIGKILL)  # the Ray job's driver process
    hold_r.unlink()
    done = b.wait_for(lambda: (s := sweep_of(b, "resumed"))["status"] == "completed" and s, timeout=180)
    restarted = store.driver("resumed")
    assert restarted.driver_id != first_job and restarted.restarts == 1
    assert job_status(dashboard, first_job) == "FAILED"
    after = trials_of(b, "resumed")
    keys = [t["trial_key"] for t in after]
    assert len(keys) == len(set(keys)) == done["trials"] == 3
    final_rounds = rounds_of(b, "resumed", after)
    assert final_rounds.items() >= kept.items(), "a round written before the kill was lost or changed"
    for trial in after:  # every round of every trial, once
        assert sorted(n for key, n in final_rounds if key == trial["trial_key"]) == list(range(1, trial["rounds"] + 1))
    interrupted = {t["trial_key"] for t in before if t["status"] == "running" and t["rounds"] > 0}
    assert interrupted and {t["retries"] for t in after if t["trial_key"] in interrupted} == {1}
    study = optuna.load_study(study_name="resumed", storage=postgres_url)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 3
    export = b.client.get("/sweeps/resumed/export")
    assert export.status_code == 200, export.text
    with zipfile.ZipFile(io.BytesIO(export.content)) as archive:
        assert {"winner.yaml", "winner.json"} <= set(archive.namelist())

    # Promotion from B runs as a Ray job, not in B's request. This sweep's spec has no gates, so `sweeper promote`
    # refuses it there, in the job; B says so, and where the job's log is.
    started = b.client.post("/sweeps/resumed/promote")
    assert started.status_code == 202 and started.json()["status"] == "promoting", started.text
    promotion = store.driver("resumed", role="promote")
    assert promotion.kind == "ray_job" and promotion.driver_id.startswith("sweeper-promote-resumed-")
    state = b.wait_for(lambda: (p := b.client.get("/sweeps/resumed/promotion").json())["state"] != "running" and p,
                       timeout=120)
    assert state["state"] == "failed" and promotion.driver_id in state["message"], state
    assert job_status(dashboard, promotion.driver_id) == "FAILED"
    logs = httpx.get(f"{dashboard}/api/jobs/{promotion.driver_id}/logs", timeout=10).json()["logs"]
    assert "sweeper promote resumed" in logs and "no `promotion:` gates" in logs, logs[-2000:]
    store.engine.dispose()
