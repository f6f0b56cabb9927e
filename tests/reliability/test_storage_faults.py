"""Storage that cannot be written: refused before anything starts, or, when the disk fills mid-sweep, a
clear error and a bounded exit, never a hung sweep, and nothing half-written in the store.

Folders under a regular file are unwritable even for root (the tests run as root, where chmod stops
nothing). A full disk and a read-only file system are real: the sweep runs in its own mount namespace
(`unshare -m`) over a tiny tmpfs, so nothing is mounted on the machine itself.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from fault_kit import fault_spec
from helpers import SWEEPER, cli_env, run_cli

pytestmark = pytest.mark.slow
NAME = "disk-sweep"


def flat(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("field", ["tune_path", "root"])
def test_storage_under_a_file_is_refused_before_anything_is_written(tmp_path, a_file, field, shared_ray):
    storage = {"root": str(tmp_path / "state"), field: str(a_file / "sub")}
    spec = fault_spec(tmp_path, name=NAME, storage=storage)
    started = time.monotonic()
    result = run_cli(["run", spec, "--address", shared_ray], tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"storage.{field}: cannot write to {a_file / 'sub'}: Not a directory" in flat(result)
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "state" / "sweeper.db").exists()  # no store, no sweep, no Ray experiment
    assert not (tmp_path / "state" / "ray").exists()


def _namespace_prefix() -> list[str] | None:
    """`unshare` arguments that give a command a private mount namespace, or None where that is not allowed."""
    if not shutil.which("unshare"):
        return None
    for prefix in (["unshare", "-m", "--propagation", "private"], ["unshare", "-Urm", "--propagation", "private"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k probe /mnt"], capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


NAMESPACE = _namespace_prefix()
needs_namespace = pytest.mark.skipif(NAMESPACE is None, reason="no private mount namespace (unshare -m) here")


def run_on_tmpfs(tmp_path: Path, spec: Path, mountpoint: Path, options: str, *args: str, timeout: float = 240):
    """`sweeper run SPEC ARGS` in its own mount namespace with a tmpfs (`options`) on `mountpoint`."""
    script = 'mount -t tmpfs -o "$1" sweeper-test "$2" && shift 2 && exec "$@"'
    command = [*NAMESPACE, "sh", "-c", script, "sh", options, str(mountpoint), *SWEEPER, "run", str(spec), *args]
    return subprocess.run(command, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout)


@needs_namespace
def test_read_only_tune_path_is_refused(tmp_path, shared_ray):  # refused by the driver: no trial worker runs
    mountpoint = tmp_path / "read-only"
    mountpoint.mkdir()
    spec = fault_spec(tmp_path, name=NAME, storage={"root": str(tmp_path / "state"), "tune_path": str(mountpoint)})
    result = run_on_tmpfs(tmp_path, spec, mountpoint, "ro,size=1m", "--address", shared_ray, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"storage.tune_path: cannot write to {mountpoint}: Read-only file system" in flat(result)
    assert not (tmp_path / "state" / "sweeper.db").exists()


@needs_namespace
def test_disk_full_mid_sweep_fails_clearly_and_keeps_what_was_written(tmp_path, ray_cleanup):
    # A private Ray: the trial workers, which write the checkpoints, must see the small disk of the driver's namespace.
    # 3 MiB: the experiment's own files and one checkpoint (~2 MiB: adapter, optimizer, tokenizer) fit, the
    # second round's does not.
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    spec = fault_spec(tmp_path, name=NAME, trials=1, max_failures=0,
                      storage={"root": str(tmp_path / "state"), "tune_path": str(mountpoint / "ray")})
    started = time.monotonic()
    result = run_on_tmpfs(tmp_path, spec, mountpoint, "size=3m")
    took = time.monotonic() - started
    print(f"disk full: exit {result.returncode} after {took:.1f} s: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode not in (0, 130), result.stdout + result.stderr
    text = flat(result)
    assert f"storage.tune_path: cannot write to {mountpoint / 'ray'}: No space left on device" in text, text[-3000:]
    assert "Traceback" not in result.stdout and "Aborted" not in text

    with sqlite3.connect(tmp_path / "state" / "sweeper.db") as db:
        [(status, message)] = db.execute("select status, message from sweeper_sweeps").fetchall()
        [(trial_status, error)] = db.execute("select status, error from sweeper_trials").fetchall()
        rounds = db.execute("select round, checkpoint from sweeper_rounds order by round").fetchall()
    assert status == "failed" and "No space left on device" in message, message
    assert trial_status == "failed" and "No space left on device" in error
    # what reached the store is whole: round 1 with the checkpoint Ray finished writing, nothing after it
    assert [r for r, _ in rounds] == [1] and rounds[0][1].startswith(str(mountpoint / "ray")), rounds
