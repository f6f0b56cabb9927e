"""A real sweep service (uvicorn on loopback, in its own process) for the tests, and a client for it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import cli_env

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """One service process; `restart()` starts a new one on the same root, store and port. Its drivers start their
    own local Ray, or join the cluster at `ray_address`."""

    def __init__(self, tmp_path: Path, database_url: str, ray_address: str | None = None):
        self.tmp_path, self.root, self.port, self.token = tmp_path, tmp_path / "service", free_port(), TOKEN
        self.env = {**cli_env(tmp_path), "SWEEPER_API_TOKENS": TOKEN, "SWEEPER_SERVICE_ROOT": str(self.root),
                    "SWEEPER_DATA_ROOTS": str(tmp_path / "data"), "SWEEPER_DATABASE_URL": database_url,
                    "SWEEPER_MAX_BODY_BYTES": str(64 * 1024)}
        if ray_address:
            self.env["SWEEPER_RAY_ADDRESS"] = ray_address
        self.process: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    def start(self) -> None:
        log = open(self.tmp_path / "service.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "sweeper", "serve", "--port", str(self.port)],
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise AssertionError(f"service did not start: {(self.tmp_path / 'service.log').read_text()[-3000:]}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def driver_pids(self) -> list[int]:
        drivers = self.root / "drivers"
        return [json.loads(p.read_text())["pid"] for p in drivers.glob("*.json")] if drivers.exists() else []

    def wait_for(self, predicate, timeout: float = 300, every: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"timed out; service log:\n{(self.tmp_path / 'service.log').read_text()[-3000:]}")

    def close(self) -> None:
        self.kill()
        self.client.close()
        for pid in self.driver_pids():
            try:
                os.killpg(pid, signal.SIGKILL)  # the driver runs in its own session; its group is ours
            except (ProcessLookupError, PermissionError):
                pass
        psutil.wait_procs([p for p in psutil.process_iter() if p.pid in self.driver_pids()], timeout=10)


@pytest.fixture
def make_service(tmp_path, ray_cleanup):
    services: list[Service] = []

    def make(database_url: str | None = None, ray_address: str | None = None) -> Service:
        service = Service(tmp_path, database_url or f"sqlite:///{tmp_path / 'service' / 'sweeper.db'}", ray_address)
        service.start()
        services.append(service)
        return service

    yield make
    for service in services:
        service.close()
