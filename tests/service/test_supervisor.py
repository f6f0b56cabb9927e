"""The supervisor with real driver processes that die at once (`sweeper run` of a spec that is not there)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sweeper.store import ClaimHeld, TrialStore
from sweeper.supervisor import Supervisor


def reconcile_until(supervisor: Supervisor, predicate, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        supervisor.reconcile()
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError("timed out")


def running_sweep(tmp_path: Path) -> TrialStore:
    store = TrialStore(f"sqlite:///{tmp_path / 'sweeper.db'}")
    store.upgrade()
    store.open_sweep("s1", {}, "fp", "eval_loss", "min")
    store.update_sweep("s1", status="running")
    return store


def test_a_sweep_the_supervisor_gave_up_on_stays_failed_with_its_reason(tmp_path):
    store = running_sweep(tmp_path)
    supervisor = Supervisor(tmp_path / "service", store, dict(os.environ), None, max_restarts=1)
    supervisor.launch("s1", tmp_path / "no-such-spec.yaml")
    reconcile_until(supervisor, lambda: store.get_sweep("s1").status == "failed")
    for _ in range(3):  # later passes, and a restarted service's first pass, leave it as it is
        supervisor.reconcile()
    Supervisor(tmp_path / "service", store, dict(os.environ), None, max_restarts=1).reconcile()
    sweep = store.get_sweep("s1")
    assert (sweep.status, sweep.message) == ("failed", "driver died 2 times; see drivers/s1.log")


def test_no_restart_while_another_live_driver_holds_the_sweep(tmp_path):
    store = running_sweep(tmp_path)
    supervisor = Supervisor(tmp_path / "service", store, dict(os.environ), None)
    pid = supervisor.launch("s1", tmp_path / "no-such-spec.yaml").pid
    supervisor._children[pid].wait(timeout=120)  # the driver died...
    store.release("s1", store.driver_claim("s1").token)
    store.claim("s1", owner="another-host.invalid:4242")  # ...and `sweeper run` on another machine took the sweep
    for _ in range(3):
        supervisor.reconcile()
    record = json.loads((tmp_path / "service" / "drivers" / "s1.json").read_text())
    assert (record["pid"], record["restarts"]) == (pid, 0)
    assert store.driver_claim("s1").owner == "another-host.invalid:4242"
    assert store.get_sweep("s1").status == "running"
    with pytest.raises(ClaimHeld, match="another-host"):  # a submission of it is refused the same way
        supervisor.launch("s1", tmp_path / "no-such-spec.yaml")
