"""The supervisor with real driver processes that die at once (`sweeper run` of a spec that is not there), and
two supervisors on one store standing in for two service replicas: all they share is the database."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sweeper.store import ClaimHeld, TrialStore
from sweeper.supervisor import LocalDrivers, Supervisor


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


def replica(tmp_path: Path, store: TrialStore, max_restarts: int = 3) -> Supervisor:
    return Supervisor(store, LocalDrivers(tmp_path / "service", dict(os.environ), None), max_restarts=max_restarts)


def test_a_sweep_the_supervisor_gave_up_on_stays_failed_with_its_reason(tmp_path):
    store = running_sweep(tmp_path)
    supervisor = replica(tmp_path, store, max_restarts=1)
    supervisor.launch("s1", tmp_path / "no-such-spec.yaml", supervisor.claim("s1"))
    reconcile_until(supervisor, lambda: store.get_sweep("s1").status == "failed")
    for _ in range(3):  # later passes, and another replica's first pass, leave it as it is
        supervisor.reconcile()
    replica(tmp_path, store, max_restarts=1).reconcile()
    sweep = store.get_sweep("s1")
    assert (sweep.status, sweep.message) == ("failed", "driver died 2 times; see drivers/s1.log")
    assert store.driver("s1").restarts == 1


def test_no_restart_while_another_live_driver_holds_the_sweep(tmp_path):
    store = running_sweep(tmp_path)
    supervisor = replica(tmp_path, store)
    driver = supervisor.launch("s1", tmp_path / "no-such-spec.yaml", supervisor.claim("s1"))
    supervisor.drivers._children[int(driver.rpartition(":")[2])].wait(timeout=120)  # the driver died...
    store.release("s1", store.driver_claim("s1").token)
    store.claim("s1", owner="another-host.invalid:4242")  # ...and `sweeper run` on another machine took the sweep
    for _ in range(3):
        supervisor.reconcile()
    row = store.driver("s1")
    assert (row.driver_id, row.restarts) == (driver, 0)
    assert store.driver_claim("s1").owner == "another-host.invalid:4242"
    assert store.get_sweep("s1").status == "running"
    with pytest.raises(ClaimHeld, match="another-host"):  # a submission of it is refused the same way
        supervisor.claim("s1")


def test_another_replica_restarts_a_dead_driver_once_and_cancels_it(tmp_path):
    """Replica A started the driver and went away (its claim stays, held by a service process that is gone); the
    driver died. Replica B, knowing nothing but the store, restarts it; both replicas reconciling afterwards start
    no second driver while it runs; B's cancel reaches it through the store."""
    store = running_sweep(tmp_path)
    spec = tmp_path / "no-such-spec.yaml"
    a = replica(tmp_path, store)
    first = a.launch("s1", spec, a.claim("s1"))
    a.drivers._children[int(first.rpartition(":")[2])].wait(timeout=120)
    b = replica(tmp_path, store)
    b.owner = "gone-replica.invalid:1/service"  # B's claims: another host's service (only its heartbeat tells)
    b.reconcile()
    second = store.driver("s1")
    assert second.driver_id != first and second.restarts == 1
    assert store.driver_claim("s1").owner == b.owner  # B took A's claim for the driver it started
    b.drivers._children[int(second.driver_id.rpartition(":")[2])].wait(timeout=120)
    assert b.cancel("s1")  # no driver alive: cancelled at once, whoever asks
    assert store.get_sweep("s1").status == "cancelled"
    for supervisor in (a, b):
        supervisor.reconcile()
    assert store.driver("s1").driver_id == second.driver_id  # a cancelled sweep is never restarted
    assert not store.cancel_requested("s1")  # settled: a later run of the sweep is not stopped by it


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_driver_rows_and_cancel_requests_in_the_store(tmp_path, backend, request):
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 's.db'}"
    store = TrialStore(url)
    store.upgrade()
    store.open_sweep("s1", {}, "fp", "eval_loss", "min")
    assert not store.request_cancel("s1")  # no service started a driver for it: nothing to ask
    store.record_driver("s1", "/specs/s1.yaml", "ray_job", "job-1")
    store.record_driver("s1", "", "ray_job", "job-p", role="promote")  # a promotion's driver, beside the run's
    assert store.request_cancel("s1") and store.cancel_requested("s1")
    store.record_driver("s1", "/specs/s1.yaml", "ray_job", "job-2", restarts=1)  # a new start clears the request
    row = store.driver("s1")
    assert (row.driver_id, row.restarts, row.cancel_requested) == ("job-2", 1, False)
    assert [d.driver_id for d in store.drivers()] == ["job-2"] and store.driver("s1", "promote").driver_id == "job-p"
    store.request_cancel("s1")
    store.settle_cancel("s1")
    assert store.get_sweep("s1").status == "cancelled" and not store.cancel_requested("s1")
    store.update_sweep("s1", status="completed")
    store.settle_cancel("s1")  # a sweep that completed first stays completed
    assert store.get_sweep("s1").status == "completed"
    store.delete_sweep("s1")
    assert store.drivers() == [] and store.driver("s1") is None
    store.engine.dispose()
