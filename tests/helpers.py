"""Shared fixtures: small real specs in a temporary folder, and the sweeper CLI as a subprocess.

Each test that starts Ray gives it its own RAY_TMPDIR, so the processes it started can be found (by
that folder in their command line) and stopped by id, never by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SWEEPER = [sys.executable, "-m", "sweeper"]


def small_spec(tmp_path: Path, **overrides) -> Path:
    """The quickstart spec cut down to restaurant8k-small: a real sweep in well under a minute."""
    spec = yaml.safe_load((EXAMPLES / "restaurant8k-minilm.yaml").read_text())
    data = tmp_path / "data"
    shutil.copytree(EXAMPLES / "data" / "restaurant8k-small", data, dirs_exist_ok=True)
    spec.update(
        name="small-sweep",
        model={"path": "minilm-l6", "max_seq_length": 40},
        data={"format": "restaurant8k", "train": str(data / "train.json"), "holdout": str(data / "holdout.json"),
              "test": str(data / "test.json")},
        budget={"trials": 4, "max_concurrent": 2},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "evals_per_epoch": 2},
        storage={"root": str(tmp_path / "state")},
        tracking={"mode": "none"},
    )
    for key, value in overrides.items():
        spec[key] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def narrow_training(name: str, epochs: int) -> dict:
    """small_spec overrides for real MiniLM training that learns something cheaply (holdout F1 ~0.5 in 3 epochs on 96
    rows): only the learning rate searched, in a narrow range, at a fixed batch of 16 and a constant schedule."""
    return dict(
        search_space={"name": name, "params": {"learning_rate": {"type": "float", "low": 8e-3, "high": 1.2e-2,
                                                                  "log": True}}},
        fixed={"batch_size": 16, "num_epochs": epochs, "lr_scheduler_type": "constant", "warmup_ratio": 0.0,
               "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0})


def synthetic_spec(tmp_path: Path, round_seconds: float = 0.05, hold_file: Path | None = None,
                   cleanup_seconds: float = 0.0, **overrides) -> Path:
    """small_spec on the synthetic task (trainers/synthetic.py): the real controller, store and study, trials of
    deterministic curves that take `round_seconds` a round; `hold_file` pauses every trial while it exists;
    `cleanup_seconds`: each trial's time after its last round."""
    model = tmp_path / "synthetic-model"
    model.mkdir(exist_ok=True)
    pace = {"model_type": "synthetic", "round_seconds": round_seconds, "hold_file": str(hold_file or ""),
            "cleanup_seconds": cleanup_seconds}
    (model / "config.json").write_text(json.dumps(pace))
    overrides = {"name": "synthetic-sweep", "task": "synthetic", "model": str(model),
                 "objective": {"metric": "accuracy"}, "promotion": None, **overrides}
    return small_spec(tmp_path, **overrides)


def ray_tmp(tmp_path: Path) -> Path:
    """A short private Ray temp folder (Ray's socket paths must stay under 107 bytes)."""
    path = Path("/tmp") / f"swt-{hashlib.sha1(str(tmp_path).encode()).hexdigest()[:10]}"
    path.mkdir(exist_ok=True)
    return path


def cli_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "RAY_TMPDIR": str(ray_tmp(tmp_path)), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1"}


def run_cli(args: list[str], tmp_path: Path, timeout: float = 600, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`sweeper ARGS` in `tmp_path`, with the test's Ray folder and `env` added to the environment."""
    started = time.monotonic()
    result = subprocess.run([*SWEEPER, *map(str, args)], cwd=tmp_path, env={**cli_env(tmp_path), **(env or {})},
                            capture_output=True, text=True, timeout=timeout)
    print(f"sweeper {args[0]}: {time.monotonic() - started:.1f} s")  # shown with a failure, and with -s
    if check and result.returncode != 0:
        raise AssertionError(f"sweeper {args} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def start_cli(args: list[str], tmp_path: Path) -> subprocess.Popen:
    log = open(tmp_path / f"cli-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen([*SWEEPER, *map(str, args)], cwd=tmp_path, env=cli_env(tmp_path), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def processes_mentioning(marker: str) -> list[psutil.Process]:
    """Processes whose command line contains `marker` (a test's private folder: only what it started)."""
    return processes_matching(lambda proc: any(marker in part for part in proc.info["cmdline"] or []))


def ray_processes(tmp_path: Path) -> list[psutil.Process]:
    """Processes of the Ray instance this test started (its private temp folder: `ray_tmp(tmp_path)`)."""
    return processes_of_ray(str(ray_tmp(tmp_path)))


def wait_for_ray_to_go(tmp_path: Path) -> None:
    """A private local Ray shares its driver's fate: after the driver is killed, every process of the Ray it started
    (`ray_processes`) ends. Its agents are the last to go: on seeing the raylet gone they report it to the GCS, which
    went too, and give up after Ray's 60 s RPC timeout (`publish_error_to_driver`): beside a CPU hog on 2 cores, two
    agents were still there 60 s after the kill."""
    deadline = time.monotonic() + 150
    while (left := ray_processes(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the killed driver's Ray still run after 150 s: {left}"


def processes_of_ray(folder: str) -> list[psutil.Process]:
    """Processes of the Ray instance whose temp folder (RAY_TMPDIR) is `folder`: those naming it, or started with it
    as RAY_TMPDIR. Ray's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`) rename themselves and name no
    folder: found by the command line alone, those a killed raylet left behind ran on (ppid 1), taking CPU for the
    rest of the suite."""
    return processes_matching(lambda proc: any(folder in part for part in proc.info["cmdline"] or [])
                              or proc.environ().get("RAY_TMPDIR") == folder)


def kill_processes(procs: list[psutil.Process]) -> None:
    """SIGKILL each (by id; those already gone skipped) and wait for them to go."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def stop_ray(folder: str) -> None:
    """Stop every process of the Ray instance whose temp folder is `folder`."""
    kill_processes(processes_of_ray(folder))


def processes_matching(match) -> list[psutil.Process]:
    """Processes for which `match(proc)` holds (`proc.info` has the command line); those gone or unreadable skipped."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if match(proc):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


POSTGRES_URL = os.environ.get("SWEEPER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


class PostgresUnavailable(RuntimeError):
    pass


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A private, empty PostgreSQL database for one test (dropped WITH (FORCE) afterwards); yields its URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from sweeper.store import safe_url

    name = f"sweeper_t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is the same message
        admin.dispose()
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PostgresUnavailable(
            f"PostgreSQL at {safe_url(POSTGRES_URL)} is unreachable or refused CREATE DATABASE: {reason}. These tests "
            f"need it (CI guarantees one): start it, or point SWEEPER_TEST_POSTGRES_URL at one.") from None
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


def answers(url: str, timeout: float, every: float = 0.3) -> bool:
    """Whether `url` answers 200 within `timeout` seconds: a server that is starting up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            time.sleep(every)
    return False


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports. Every socket stays bound until all are chosen: ports taken one at a time
    can repeat (CI once gave Ray's dashboard and its client server the same one)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]
