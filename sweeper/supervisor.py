"""Driver processes of the sweeps the service runs: launch, cancel, watch and reconcile after a restart.

Each sweep runs as its own `sweeper run SPEC` process (a new session, so it outlives a restart of the
service). A small JSON record per sweep under `<root>/drivers/` holds its pid and whether a cancel was
asked. On start and every few seconds the supervisor compares those records with the store: a driver
that died while its sweep was still running is launched again, which resumes the sweep from Tune's
experiment state (no trial is lost or run twice); after `max_restarts` it is marked failed with a reason.
The sweep's claim in the store (`TrialStore.claim`) is taken before each start and handed to the driver,
so a sweep that another live driver runs (a `sweeper run` by hand, elsewhere) is never started twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from sweeper.store import CLAIM_TOKEN_ENV, ClaimHeld, TrialStore

ACTIVE = ("queued", "running", "interrupted")  # a driver that is gone while its sweep is in one of these resumes


@dataclass
class DriverRecord:
    sweep: str
    spec_path: str
    pid: int = 0
    restarts: int = 0
    cancelled: bool = False
    claim: str = ""  # the claim token handed to the driver last started


class Supervisor:
    def __init__(self, root: Path, store: TrialStore, env: dict[str, str], ray_address: str | None,
                 max_restarts: int = 3):
        self.dir = root / "drivers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store, self.env, self.ray_address, self.max_restarts = store, env, ray_address, max_restarts
        self._lock = threading.Lock()
        self._children: dict[int, subprocess.Popen] = {}  # reaped here; adopted drivers are watched by pid

    # -- records -------------------------------------------------------------------------------------
    def _path(self, sweep: str) -> Path:
        return self.dir / f"{sweep}.json"

    def _load(self, sweep: str) -> DriverRecord | None:
        path = self._path(sweep)
        return DriverRecord(**json.loads(path.read_text())) if path.is_file() else None

    def _save(self, record: DriverRecord) -> None:
        tmp = self._path(record.sweep).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(self._path(record.sweep))

    def records(self) -> list[DriverRecord]:
        return [DriverRecord(**json.loads(p.read_text())) for p in sorted(self.dir.glob("*.json"))]

    # -- processes -----------------------------------------------------------------------------------
    def alive(self, record: DriverRecord) -> bool:
        child = self._children.get(record.pid)
        if child is not None:
            return child.poll() is None
        try:
            proc = psutil.Process(record.pid)
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and record.spec_path in proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return False

    def active_count(self) -> int:
        return sum(1 for r in self.records() if not r.cancelled and self.alive(r))

    def launch(self, sweep: str, spec_path: Path, token: str | None = None) -> DriverRecord:
        """Start a driver; `token`: the sweep's claim, if the caller holds it. ClaimHeld: another driver runs it."""
        with self._lock:
            record = self._load(sweep) or DriverRecord(sweep=sweep, spec_path=str(spec_path))
            record.claim = token or self.store.claim(sweep, token=record.claim or None)
            record.cancelled, record.restarts = False, 0
            self._start(record)
            return record

    def _start(self, record: DriverRecord) -> None:
        command = [sys.executable, "-m", "sweeper", "run", record.spec_path]
        if self.ray_address:
            command += ["--address", self.ray_address]
        log = open(self.dir / f"{record.sweep}.log", "ab")
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**self.env, CLAIM_TOKEN_ENV: record.claim}, start_new_session=True)
        log.close()
        self._children[child.pid] = child
        record.pid = child.pid
        self._save(record)

    def cancel(self, sweep: str) -> bool:
        """Ask the driver to stop (SIGINT: Tune saves its state); the sweep ends `cancelled`."""
        with self._lock:
            record = self._load(sweep)
            if record is None:
                return False
            record.cancelled = True
            self._save(record)
            if self.alive(record):
                os.kill(record.pid, signal.SIGINT)
            return True

    # -- reconciliation ------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Relaunch drivers that died mid-sweep; settle cancelled ones. Safe to call at any time."""
        with self._lock:
            for record in self.records():
                if self.alive(record):
                    continue
                self._children.pop(record.pid, None)
                sweep = self.store.get_sweep(record.sweep)
                status = sweep.status if sweep else "queued"
                if status not in ACTIVE:
                    continue  # ended: completed, failed (by its driver or by giving up below) or cancelled
                if record.cancelled:
                    self.store.update_sweep(record.sweep, status="cancelled", message="cancelled through the API")
                    self.store.release(record.sweep, record.claim)
                else:
                    self._restart(record)

    def _restart(self, record: DriverRecord) -> None:
        if record.restarts >= self.max_restarts:
            self.store.update_sweep(record.sweep, status="failed",
                                    message=f"driver died {record.restarts + 1} times; see drivers/{record.sweep}.log")
            self.store.release(record.sweep, record.claim)
            return
        try:
            record.claim = self.store.claim(record.sweep, token=record.claim or None)
        except ClaimHeld:
            return  # a live driver elsewhere (`sweeper run` by hand) runs the sweep: not ours to restart
        record.restarts += 1
        self._start(record)

    def stop_all(self) -> None:
        """Forget child handles without killing drivers: sweeps outlive the service by design."""
        self._children.clear()
