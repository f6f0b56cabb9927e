"""The driver claim: one live driver per sweep name, enforced by the database (SQLite and PostgreSQL alike)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

import sweeper.store as store_module
from sweeper.store import Claim, ClaimHeld, TrialStore, now

OTHER_HOST = "another-host.invalid:4242"  # a process on another machine: only its heartbeat tells if it lives


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def age_heartbeat(store: TrialStore, sweep: str, seconds: float) -> None:
    with store.session() as session:
        session.execute(update(Claim).where(Claim.sweep == sweep).values(heartbeat_at=now() - timedelta(seconds=seconds)))


def test_a_claim_has_one_owner_until_released(store):
    token = store.claim("s1", owner=OTHER_HOST)
    with pytest.raises(ClaimHeld, match=OTHER_HOST) as caught:
        store.claim("s1", owner="me:1")
    assert caught.value.holder == OTHER_HOST
    assert store.claim("s2", owner="me:1")  # another sweep is another claim
    store.release("s1", "not-the-token")  # only the holder's token releases it
    with pytest.raises(ClaimHeld):
        store.claim("s1", owner="me:1")
    store.release("s1", token)
    assert store.claim("s1", owner="me:1")
    assert store.driver_claim("s1").owner == "me:1"


def test_the_token_hands_a_claim_over(store):
    token = store.claim("s1", owner=OTHER_HOST)  # the service claims at submission...
    taken = store.claim("s1", owner="driver:7", token=token)  # ...and its driver takes the claim over
    assert taken != token and store.driver_claim("s1").owner == "driver:7"
    with pytest.raises(ClaimHeld):
        store.claim("s1", owner="late:8", token=token)  # a token that was handed over is spent


def test_a_stale_heartbeat_frees_the_claim(store):
    token = store.claim("s1", owner=OTHER_HOST)
    age_heartbeat(store, "s1", store_module.STALE_AFTER_S - 5)
    with pytest.raises(ClaimHeld):
        store.claim("s1", owner="me:1")
    assert store.heartbeat("s1", token) is True  # a heartbeat keeps it fresh
    age_heartbeat(store, "s1", store_module.STALE_AFTER_S + 5)
    assert store.claim("s1", owner="me:1")
    assert store.heartbeat("s1", token) is False  # the old holder learns it lost the claim


def test_a_dead_owner_on_this_host_frees_the_claim_at_once(store):
    store.claim("s1", owner=f"{socket.gethostname()}:{dead_pid()}")
    assert store.claim("s1", owner="me:1")
    store.claim("s2")  # this process: alive
    with pytest.raises(ClaimHeld, match=f"{socket.gethostname()}:"):
        store.claim("s2", owner="me:1")


def test_driving_holds_the_claim_with_heartbeats_and_releases_it(store, monkeypatch):
    monkeypatch.setattr(store_module, "HEARTBEAT_S", 0.05)
    with store.driving("s1") as token:
        first = store.driver_claim("s1").heartbeat_at
        time.sleep(0.5)
        assert store.driver_claim("s1").heartbeat_at > first
        with pytest.raises(ClaimHeld):
            store.claim("s1", owner="me:1")
    assert store.driver_claim("s1") is None
    assert store.heartbeat("s1", token) is False


def test_status_of_a_running_sweep_without_a_live_driver_is_interrupted(store):
    store.open_sweep("s1", {}, "fp", "eval_loss", "min")
    store.update_sweep("s1", status="running")
    assert store.shown_status(store.get_sweep("s1"))[0] == "interrupted"  # no claim: its driver never said goodbye
    token = store.claim("s1")
    assert store.shown_status(store.get_sweep("s1")) == ("running", "")
    store.release("s1", token)
    store.claim("s1", owner=f"{socket.gethostname()}:{dead_pid()}")
    status, message = store.shown_status(store.get_sweep("s1"))
    assert status == "interrupted" and "driver" in message and "sweeper run" in message
    store.update_sweep("s1", status="failed", message="all trials failed")
    assert store.shown_status(store.get_sweep("s1")) == ("failed", "all trials failed")


def test_threads_racing_for_one_claim_exactly_one_wins(store, new_store):
    racers = 8
    stores = [new_store() for _ in range(racers)]  # one engine (connection pool) each, like separate drivers
    barrier = threading.Barrier(racers)
    won, refused, errors = [], [], []

    def race(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            won.append(stores[i].claim("s1", owner=f"{OTHER_HOST}-{i}"))
        except ClaimHeld:
            refused.append(i)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(won) == 1 and len(refused) == racers - 1


RACER = """
import json, sys, time
from pathlib import Path
from sweeper.store import ClaimHeld, TrialStore
store, folder = TrialStore(sys.argv[1]), Path(sys.argv[2])
store.engine.connect().close()  # imported and connected: ready to race
(folder / f"ready-{sys.argv[3]}").touch()
while not (folder / "go").exists():
    time.sleep(0.001)
try:
    print(json.dumps({"won": store.claim("s1")}))
except ClaimHeld as exc:
    print(json.dumps({"held": exc.holder}))
sys.stdout.flush()
sys.stdin.read()  # alive until the test closes stdin, after every racer has tried: a dead holder frees its claim
"""


def test_processes_racing_for_one_claim_exactly_one_wins(store, db_url, tmp_path):
    """Four processes claim at once: each waits, imported and connected, for a `go` file (no wall-clock start
    time, so a busy machine changes nothing), and stays alive until all have tried."""
    gate = tmp_path / "gate"
    gate.mkdir()
    racers = [subprocess.Popen([sys.executable, "-c", RACER, db_url, str(gate), str(i)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    try:
        deadline = time.monotonic() + 120
        while len(list(gate.glob("ready-*"))) < len(racers):
            assert all(r.poll() is None for r in racers), [r.stderr.read() for r in racers if r.poll() is not None]
            assert time.monotonic() < deadline, "the racers did not get ready"
            time.sleep(0.05)
        (gate / "go").touch()
        results = [json.loads(racer.stdout.readline() or "{}") for racer in racers]  # every racer has tried
        for racer in racers:
            _, err = racer.communicate(timeout=120)  # closes its stdin: it exits
            assert racer.returncode == 0, err
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
    winners = [r for r in results if "won" in r]
    assert len(winners) == 1, results
    holder = store.driver_claim("s1").owner  # the winner exited without releasing: its pid is gone now
    assert all(r["held"] == holder for r in results if "held" in r)
    assert store.claim("s1", owner="me:1")  # the winner has exited: a dead process's claim is free again
