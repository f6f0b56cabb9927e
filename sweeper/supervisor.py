"""Drivers of the sweeps the service runs: launch, cancel, watch and restart them, with every bit of state in the store.

A sweep's driver is `sweeper run SPEC`. With a Ray dashboard address (SWEEPER_RAY_ADDRESS=http://HEAD:8265) it is a
Ray job on that cluster, submitted through Ray's Job Submission REST API (`RayJobs`); otherwise a local process in a
new session that outlives the service (`LocalDrivers`), joining the cluster at SWEEPER_RAY_ADDRESS when one is set.

The store's `sweeper_drivers` row says which driver runs each sweep and whether a cancel was asked. The driver reads
the request itself and stops as on Ctrl+C (`TrialStore.driving`), so any replica can cancel any sweep. Every replica
reconciles (at start and every few seconds): a driver that died while its sweep was still active is started again,
which resumes the sweep from the store, the study and the trials' checkpoints; after `max_restarts` the sweep is
marked failed with the reason. The sweep's claim (`TrialStore.claim`) is taken before each start and handed to the
driver, so two replicas reconciling at once start one driver, and a sweep that another live driver runs (a
`sweeper run` by hand, elsewhere) is never started twice.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import psutil

from sweeper.store import (
    CLAIM_TOKEN_ENV,
    SERVICE_OWNER,
    ClaimHeld,
    Driver,
    StoreError,
    TrialStore,
    claim_alive,
    process_owner,
    safe_url,
)

ACTIVE = ("queued", "running", "interrupted")  # a driver that is gone while its sweep is in one of these resumes
LIVE_JOB = ("PENDING", "RUNNING")  # Ray job states whose driver still runs (or is about to)
FORWARDED = ("SWEEPER_STORAGE_PATH", "SWEEPER_CLUSTER_AUTOSCALES")  # the service's settings a Ray job's driver takes


class LaunchError(StoreError):
    """A driver could not be started (the Ray cluster refused the job, or cannot be reached)."""


class LocalDrivers:
    """Drivers as local `sweeper run` processes; a driver is `host:pid`."""

    kind = "process"

    def __init__(self, root: Path, env: dict[str, str], ray_address: str | None):
        self.logs = root / "drivers"
        self.env, self.ray_address = env, ray_address
        self._children: dict[int, subprocess.Popen] = {}  # reaped here; others' drivers are looked up by pid

    def start(self, sweep: str, args: list[str], env: dict[str, str], role: str = "run") -> str:
        """`sweeper ARGS` as a process of its own session (it outlives the service); its output in drivers/."""
        command = [sys.executable, "-m", "sweeper", *args] + (["--address", self.ray_address] if self.ray_address else [])
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / _log_name(sweep, role), "ab") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**self.env, **env}, start_new_session=True)
        self._children[child.pid] = child
        return f"{socket.gethostname()}:{child.pid}"

    def alive(self, row: Driver) -> bool | None:
        """None when the driver runs on another host: only its claim's heartbeat can tell."""
        host, _, pid = row.driver_id.rpartition(":")
        if host != socket.gethostname() or not pid.isdigit():
            return None
        child = self._children.get(int(pid))
        if child is not None:
            return child.poll() is None
        try:
            proc = psutil.Process(int(pid))
            command = proc.cmdline()
            return proc.status() != psutil.STATUS_ZOMBIE and row.role in command and row.sweep in " ".join(command)
        except (psutil.Error, ValueError):
            return False

    def where_logs(self, row: Driver) -> str:
        return f"see drivers/{_log_name(row.sweep, row.role)}"


def _log_name(sweep: str, role: str) -> str:
    return f"{sweep}.log" if role == "run" else f"{sweep}.{role}.log"


class RayJobs:
    """Drivers as Ray jobs, through the dashboard's Job Submission REST API (/api/jobs/); a driver is its job's
    submission id. The database URL travels to the job only when it holds no password: Ray shows a job's
    environment to anyone who can reach the dashboard, so a store with a password must be set in the cluster's own
    environment (SWEEPER_DATABASE_URL from the same Secret; k8s/README.md)."""

    kind = "ray_job"

    def __init__(self, dashboard: str, database_url: str, env: dict[str, str], timeout: float = 10):
        self.http = httpx.Client(base_url=dashboard.rstrip("/"), timeout=timeout)
        # Only variables the driver's own ray.init does not set: Ray refuses a job whose runtime env and its
        # driver's name the same variable.
        self.env = {"PYTHONUNBUFFERED": "1", **{k: env[k] for k in FORWARDED if env.get(k)}}
        if safe_url(database_url) == database_url:
            self.env["SWEEPER_DATABASE_URL"] = database_url

    def start(self, sweep: str, args: list[str], env: dict[str, str], role: str = "run") -> str:
        """`python -m sweeper ARGS` as a Ray job, on the cluster it runs on (Ray sets RAY_ADDRESS for a job)."""
        submission_id = f"sweeper-{role}-{sweep}-{uuid.uuid4().hex[:8]}"
        entrypoint = ["python", "-m", "sweeper", *args, "--address", "auto"]
        body = {"entrypoint": shlex.join(entrypoint), "submission_id": submission_id,
                "metadata": {"sweeper_sweep": sweep, "sweeper_role": role},
                "runtime_env": {"env_vars": {**self.env, **env}}}
        try:
            response = self.http.post("/api/jobs/", json=body)
        except httpx.HTTPError as exc:
            raise LaunchError(f"cannot reach the Ray cluster at {self.http.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise LaunchError(f"the Ray cluster at {self.http.base_url} refused the job: {response.status_code} "
                              f"{response.text[:500]}")
        return submission_id

    def alive(self, row: Driver) -> bool | None:
        """None when the cluster does not answer: a moment's outage must not restart a running sweep."""
        try:
            response = self.http.get(f"/api/jobs/{row.driver_id}")
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            return None
        return response.json().get("status") in LIVE_JOB

    def where_logs(self, row: Driver) -> str:
        return f"see `ray job logs {row.driver_id}` (the Ray job of its last driver)"


def drivers_for(root: Path, env: dict[str, str], ray_address: str | None, database_url: str) -> LocalDrivers | RayJobs:
    """Ray jobs when the address is a dashboard's (http[s]://), else local processes."""
    if ray_address and ray_address.startswith(("http://", "https://")):
        return RayJobs(ray_address, database_url, env)
    return LocalDrivers(root, env, ray_address)


class Supervisor:
    def __init__(self, store: TrialStore, drivers: LocalDrivers | RayJobs, max_restarts: int = 3):
        self.store, self.drivers, self.max_restarts = store, drivers, max_restarts
        self.owner = process_owner(SERVICE_OWNER)  # the claims this replica holds for drivers it starts

    def claim(self, sweep: str) -> str:
        """Take the sweep's claim for a driver about to start: free, stale, or held by a service (any replica) for a
        driver that never took it over. ClaimHeld: a live driver runs the sweep."""
        held = self.store.driver_claim(sweep)
        handed = held.token if held is not None and held.owner.endswith(SERVICE_OWNER) else None
        return self.store.claim(sweep, owner=self.owner, token=handed)

    def launch(self, sweep: str, spec_path: Path | str, token: str, restarts: int = 0) -> str:
        """Start a driver with the sweep's claim (`token`, which the caller took) and record it in the store."""
        kind, spec_path = self.drivers.kind, str(spec_path)
        self.store.record_driver(sweep, spec_path, kind, "", restarts)  # first: clears an old cancel request
        try:
            driver_id = self.drivers.start(sweep, ["run", spec_path], {CLAIM_TOKEN_ENV: token})
        except BaseException:
            self.store.release(sweep, token)  # the next reconcile pass tries again (and counts the attempt)
            raise
        self.store.record_driver(sweep, spec_path, kind, driver_id, restarts)
        return driver_id

    def promote(self, sweep: str) -> str:
        """Start `sweeper promote SWEEP` where the sweeps run (a Ray job, or a local process): its heavy steps run
        there, never in the API's request. LaunchError: it could not start. One at a time is the caller's to
        check (`promoting`)."""
        driver_id = self.drivers.start(sweep, ["promote", sweep], {}, role="promote")
        self.store.record_driver(sweep, "", self.drivers.kind, driver_id, role="promote")
        return driver_id

    def promoting(self, sweep: str) -> Driver | None:
        """The sweep's promotion driver while it runs, else None."""
        row = self.store.driver(sweep, role="promote")
        if row is None or row.kind != self.drivers.kind:
            return None
        return row if self.drivers.alive(row) is not False else None

    def alive(self, row: Driver) -> bool:
        """Its recorded driver runs, or a live driver (not a service) holds the claim."""
        known = self.drivers.alive(row) if row.kind == self.drivers.kind and row.driver_id else None
        if known:
            return True
        claim = self.store.driver_claim(row.sweep)
        if claim is None or not claim_alive(claim):
            return False
        return known is None or not claim.owner.endswith(SERVICE_OWNER)

    def active_count(self) -> int:
        active = {s.name for s in self.store.list_sweeps() if s.status in ACTIVE}
        return sum(1 for row in self.store.drivers()
                   if row.sweep in active and not row.cancel_requested and self.alive(row))

    def cancel(self, sweep: str) -> bool:
        """Ask the sweep's driver, wherever it runs, to stop; False if no service started one. With no driver
        alive the sweep is `cancelled` at once; else its driver ends it so."""
        if not self.store.request_cancel(sweep):
            return False
        self.settle(self.store.driver(sweep))
        return True

    def reconcile(self) -> None:
        """Restart drivers that died mid-sweep; settle cancelled ones. Safe to call at any time, on any replica."""
        for row in self.store.drivers():
            self.settle(row)

    def settle(self, row: Driver | None) -> None:
        sweep = self.store.get_sweep(row.sweep) if row else None
        if sweep is None or sweep.status not in ACTIVE or self.alive(row):
            return
        if row.cancel_requested:
            self.store.settle_cancel(row.sweep)
            self._release_service_claim(row.sweep)
        elif row.restarts >= self.max_restarts:
            self.store.update_sweep(row.sweep, status="failed",
                                    message=f"driver died {row.restarts + 1} times; {self.drivers.where_logs(row)}")
            self._release_service_claim(row.sweep)
        else:
            try:
                token = self.claim(row.sweep)
            except ClaimHeld:
                return  # another replica is starting it, or a live driver elsewhere runs it
            self.launch(row.sweep, row.spec_path, token, row.restarts + 1)

    def _release_service_claim(self, sweep: str) -> None:
        held = self.store.driver_claim(sweep)
        if held is not None and held.owner.endswith(SERVICE_OWNER):
            self.store.release(sweep, held.token)
