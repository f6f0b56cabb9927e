"""A real sweep service (uvicorn on loopback, in its own process) for the tests, and a client for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import answers, cli_env, free_port, processes_mentioning

from sweeper.store import TrialStore

TOKEN = "test-token-0123456789abcdef"


class Service:
    """One service process; `restart()` starts a new one on the same root, store and port. Its drivers start their
    own local Ray, or join the cluster at `ray_address`."""

    def __init__(self, tmp_path: Path, database_url: str, ray_address: str | None = None, label: str = "service"):
        self.tmp_path, self.root, self.port, self.token = tmp_path, tmp_path / "service", free_port(), TOKEN
        self.log = tmp_path / f"{label}.log"  # replicas of one test share the root, each has its own log
        self.env = {**cli_env(tmp_path), "SWEEPER_API_TOKENS": TOKEN, "SWEEPER_SERVICE_ROOT": str(self.root),
                    "SWEEPER_DATA_ROOTS": str(tmp_path / "data"), "SWEEPER_DATABASE_URL": database_url,
                    "SWEEPER_MAX_BODY_BYTES": str(64 * 1024)}
        if ray_address:
            self.env["SWEEPER_RAY_ADDRESS"] = ray_address
        self.process: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def start(self) -> None:
        log = open(self.log, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "sweeper", "serve", "--port", str(self.port)],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if not answers(f"{self.url}/health", timeout=60):
            raise AssertionError(f"service did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def driver_pids(self) -> list[int]:
        """Pids of the local driver processes the store records for this service's sweeps (none for Ray jobs)."""
        store = TrialStore(self.env["SWEEPER_DATABASE_URL"])
        try:
            return [int(d.driver_id.rpartition(":")[2]) for d in store.drivers() if d.kind == "process" and d.driver_id]
        finally:
            store.engine.dispose()

    def wait_for(self, predicate, timeout: float = 300, every: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out; service log:\n{self.log.read_text()[-3000:]}")

    def close(self) -> None:
        self.kill()
        self.client.close()
        drivers = processes_mentioning(str(self.root))  # the drivers' command lines name their spec under the root
        for proc in drivers:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # a local driver runs in its own session; its group is ours
            except (ProcessLookupError, PermissionError):
                pass
        psutil.wait_procs(drivers, timeout=10)


@pytest.fixture
def make_service(tmp_path, ray_cleanup):
    services: list[Service] = []

    def make(database_url: str | None = None, ray_address: str | None = None, label: str = "service") -> Service:
        url = database_url or f"sqlite:///{tmp_path / 'service' / 'sweeper.db'}"
        service = Service(tmp_path, url, ray_address, label)
        service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        service.close()
