"""The driver (`sweeper run`) killed with SIGKILL at every phase of a sweep, then resumed by running it again.

Every run must end `completed` with exactly the budget's trials, each once, in the store and in the Optuna
study, no round recorded twice, and the winner exported. Trials are the synthetic task (trainers/synthetic.py):
the real controller, store and study, with deterministic curves that take a known time a round, so a phase is
reached by watching the store, never by guessing the machine's speed.

The drivers run on the session's shared Ray cluster (`shared_ray`, as on a real cluster: `--address`), except
in one phase, which kills a driver that started its own local Ray and checks that Ray goes with it (that sweep
is then resumed on the shared cluster: the store and Tune's state, not the Ray instance, carry a sweep over).
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import optuna
import psutil
import pytest
from helpers import run_cli, start_cli, synthetic_spec, wait_for_ray_to_go

pytestmark = pytest.mark.slow

BUDGET = 4  # a phase test's trials: "after-a-trial-finished-mid-next" still leaves one not yet started
KILLS = 20  # the acceptance: 20 kills at random moments, each resumed to completion
KILL_CHAINS = 4  # the kills fall on 4 sweeps (2 at a time), 5 in a row each: a resumed run is killed again
# A random kill's sweep: 3 trials, up to 2 at once, so a kill can still land with several in flight, one
# waiting, or all done (export). A run's cost is mostly its fixed part (CLI start, Ray connect, a fresh Python
# worker per concurrent trial); trials and rounds beyond what reaches every phase only lengthen it.
KILL_RUN_BUDGET = 3
KILL_RUN_ROUND_SECONDS = 0.05


def rows(db: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(db) as con:
            return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return []


def trials(db: Path) -> list[tuple[str, str, int]]:
    return rows(db, "select trial_key, status, rounds from sweeper_trials order by trial_key")


def spec_for(tmp_path: Path, concurrent: int = 1, round_seconds: float = 0.3, budget: int = BUDGET) -> Path:
    return synthetic_spec(tmp_path, round_seconds=round_seconds, budget={"trials": budget, "max_concurrent": concurrent},
                          scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2, "evals_per_epoch": 2})


def kill_when(tmp_path: Path, spec: Path, ready: Callable[[list], bool], timeout: float = 180,
              address: str | None = None) -> None:
    """Start the driver (on the cluster at `address`, else on its own local Ray), SIGKILL it once the store shows
    `ready`, and wait until its private Ray, or on a cluster its trials' worker processes, are gone."""
    db = tmp_path / "state" / "sweeper.db"
    driver = start_cli(["run", spec, *(["--address", address] if address else [])], tmp_path)
    deadline = time.monotonic() + timeout
    while not ready(trials(db)):
        assert driver.poll() is None, f"the driver ended before the phase was reached: {trials(db)}"
        assert time.monotonic() < deadline, f"phase not reached in {timeout} s: {trials(db)}"
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    if address:
        wait_for_workers_to_go(db)
    else:
        wait_for_ray_to_go(tmp_path)


def wait_for_workers_to_go(db: Path) -> None:
    """On a cluster, a killed driver's job ends with it: the worker processes its trials reported from exit."""
    pids = {json.loads(b)["pid"] for (b,) in rows(db, "select bookkeeping from sweeper_rounds")}
    deadline = time.monotonic() + 60
    while (alive := [pid for pid in pids if psutil.pid_exists(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"trial workers of the killed driver still run: {alive}"


def assert_completed_once_each(tmp_path: Path, name: str = "synthetic-sweep", budget: int = BUDGET) -> None:
    db = tmp_path / "state" / "sweeper.db"
    assert rows(db, "select status from sweeper_sweeps") == [("completed",)]
    stored = trials(db)
    keys = [key for key, _, _ in stored]
    assert len(keys) == len(set(keys)) == budget, stored
    assert all(status in ("completed", "early_stopped", "stopped") for _, status, _ in stored), stored
    assert rows(db, "select trial_id, round from sweeper_rounds group by trial_id, round having count(*) > 1") == []
    for key, _, rounds in stored:  # every round of every trial is there, once
        numbers = rows(db, f"select r.round from sweeper_rounds r join sweeper_trials t on t.id = r.trial_id "
                           f"where t.trial_key = '{key}' order by r.round")
        assert [n for (n,) in numbers] == list(range(1, rounds + 1)), (key, numbers)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    assert sorted(f"t{t.number:04d}" for t in study) == keys
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study), study
    assert len({json.dumps(t.params, sort_keys=True) for t in study}) == budget, "a point was proposed twice"
    assert (tmp_path / "state" / "sweeps" / name / "export" / "winner.yaml").is_file()


def running(stored: list) -> list:
    return [t for t in stored if t[1] == "running"]


PHASES = {
    "during-the-first-trial": (1, lambda s: len(s) == 1 and running(s) and s[0][2] >= 1),
    "between-trials": (1, lambda s: len(s) >= 2 and len(running(s)) == 1 and running(s)[0][2] == 0),
    "after-a-trial-finished-mid-next": (1, lambda s: len(s) >= 3 and len(running(s)) == 1 and running(s)[0][2] >= 1),
    "while-several-run": (2, lambda s: len([t for t in running(s) if t[2] >= 1]) >= 2),
}
PRIVATE_RAY_PHASE = "during-the-first-trial"  # its driver starts its own local Ray, which must die with it


@pytest.mark.parametrize("phase", PHASES)
def test_driver_killed_at_a_phase_resumes_to_exactly_the_budget(tmp_path, ray_cleanup, shared_ray, phase):
    concurrent, ready = PHASES[phase]
    spec = spec_for(tmp_path, concurrent)
    kill_when(tmp_path, spec, ready, address=None if phase == PRIVATE_RAY_PHASE else shared_ray)
    db = tmp_path / "state" / "sweeper.db"
    left = running(trials(db))
    assert left, "the kill left nothing to resume: the phase was not the one meant"
    run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)  # the private Ray is gone; resume on one
    assert_completed_once_each(tmp_path)
    retries = dict(rows(db, "select trial_key, retries from sweeper_trials"))
    for key, _, rounds in left:  # a trial with a checkpointed round continues from it, counted as a retry
        assert retries[key] == (1 if rounds else 0), (key, rounds, retries)


def test_driver_killed_while_exporting_finishes_without_running_a_trial(tmp_path, shared_ray):
    """Every trial ended, the driver died before the sweep was marked completed (mid-export): the next run
    writes the export and completes, with no trial run again (the store state is exactly what such a kill leaves)."""
    spec = spec_for(tmp_path, concurrent=2, round_seconds=0.05)
    run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    db = tmp_path / "state" / "sweeper.db"
    export = tmp_path / "state" / "sweeps" / "synthetic-sweep" / "export"
    rounds_before = rows(db, "select count(*) from sweeper_rounds")
    with sqlite3.connect(db) as con:
        con.execute("update sweeper_sweeps set status = 'running'")
    for path in sorted(export.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    export.rmdir()
    run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    assert rows(db, "select count(*) from sweeper_rounds") == rounds_before  # no trial ran again
    assert_completed_once_each(tmp_path)


def killed_after(seconds: float, spec: Path, folder: Path, address: str) -> bool:
    """Run the driver and SIGKILL it after `seconds`; False when it finished first (it must have completed)."""
    driver = start_cli(["run", spec, "--address", address], folder)
    try:
        driver.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        return True
    assert driver.returncode == 0, f"a run of {folder.name} exited {driver.returncode}"
    return False


def test_driver_killed_at_random_moments_always_resumes_to_exactly_the_budget(tmp_path, shared_ray):
    """KILLS SIGKILLs of the driver at random moments of its run (start-up, trials, export), in KILL_CHAINS chains:
    each chain's sweep is run and killed again and again (a kill also lands in a resume of a killed run), then run
    to completion; two chains at a time, each sweep with its own store, on one Ray cluster. A run that ends before
    its kill time was not killed: it must have completed, and the chain goes on with a new sweep.

    Kill times spread over the length of the chain's latest whole (never killed) first run, so they follow the
    machine's speed as it changes: in CI the first run, beside the suite's heaviest tests, took 37 s and the
    later ones 3 to 9 s, and kills timed on the first one mostly came too late."""
    rng = random.Random(20261130)
    full = tmp_path / "full"
    full.mkdir()
    started = time.monotonic()
    run_cli(["run", spec_for(full, concurrent=2, round_seconds=KILL_RUN_ROUND_SECONDS, budget=KILL_RUN_BUDGET),
             "--address", shared_ray], full, check=True)
    first_run_seconds = time.monotonic() - started
    per_chain = KILLS // KILL_CHAINS
    plans = [(chain, random.Random(rng.random())) for chain in range(KILL_CHAINS)]

    def kill_chain(plan) -> list[float]:
        chain, chain_rng = plan
        kills: list[float] = []
        run_seconds = first_run_seconds
        for sweep in range(3 * per_chain):  # a new sweep only when a run completed before its kill
            folder = tmp_path / f"chain{chain}-{sweep}"
            folder.mkdir()
            spec = spec_for(folder, concurrent=chain_rng.choice([1, 2]), round_seconds=KILL_RUN_ROUND_SECONDS,
                            budget=KILL_RUN_BUDGET)
            for attempt in itertools.count():
                kill_after = chain_rng.uniform(0.2, run_seconds)
                started = time.monotonic()
                if not killed_after(kill_after, spec, folder, shared_ray):
                    if attempt == 0:  # a whole run of a new sweep: the length the next kills spread over
                        run_seconds = time.monotonic() - started
                    break
                kills.append(kill_after)
                if len(kills) == per_chain:
                    break
            run_cli(["run", spec, "--address", shared_ray], folder, check=True)
            assert_completed_once_each(folder, budget=KILL_RUN_BUDGET)
            if len(kills) == per_chain:
                return kills
        raise AssertionError(f"chain {chain}: {3 * per_chain} sweeps ran, only {len(kills)} kills landed: {kills}")

    with ThreadPoolExecutor(2) as pool:
        killed_at = [t for kills in pool.map(kill_chain, plans) for t in kills]
    assert len(killed_at) == KILLS
    print(f"the first whole run took {first_run_seconds:.1f} s; kills at {sorted(round(t, 1) for t in killed_at)} s")
