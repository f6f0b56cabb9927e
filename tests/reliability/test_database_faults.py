"""The store's PostgreSQL goes away mid-sweep, or two sweeps share it.

The shared PostgreSQL server is never stopped: the sweep reaches it through a proxy the test owns
(`fault_kit.PostgresProxy`), which cuts every open connection and refuses new ones while it is down.
Both writers in the driver go through it: the trial store (StoreCallback) and the Optuna study (Tune's
searcher, `sweeper.study.StudyStorage`).

Trials are the synthetic task (trainers/synthetic.py: the real driver, Ray, store and study, deterministic
curves at a fixed pace). Its hold file places each outage: the trial is held between rounds, the proxy goes
down, the hold is lifted, so the trial's next round is reported into the outage, on any machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_kit import FIXED, SPACE, PostgresProxy, Rows, cli_log, wait_for
from helpers import run_cli, start_cli, synthetic_spec, wait_for_ray_to_go
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.slow
NAME = "db-fault-sweep"
PASSWORD = "pw-7d41e9"  # trust auth ignores it; it must still never be printed
RETRY_LINE = re.compile(r"database \S+ .*?unavailable \(.*?\); retry \d+/\d+ in [\d.]+ s")
EPOCHS, EVALS = 8, 2
ROUNDS = EPOCHS * EVALS  # a trial's rounds: room for both outages and rounds after each


def db_fault_spec(tmp_path: Path, name: str = NAME, trials: int = 1, epochs: int = EPOCHS, evals: int = EVALS,
                  hold: Path | None = None) -> Path:
    """fault_kit's spec (one searched parameter, every round run: no ASHA, long patience) on the synthetic task."""
    return synthetic_spec(tmp_path, round_seconds=0.3, hold_file=hold, name=name, search_space=SPACE,
                          fixed={**FIXED, "num_epochs": epochs},
                          budget={"trials": trials, "max_concurrent": 1, "max_failures": 2},
                          scheduler={"type": "none", "evals_per_epoch": evals},
                          early_stopping={"patience": 20, "min_delta": 0.0})


@pytest.fixture
def proxy():
    proxy = PostgresProxy()
    yield proxy
    proxy.close()


def snapshot(rows: Rows, checkpointed: bool = False) -> dict:
    """(trial, round) -> eval_loss of every round in the store (only those with a checkpoint: `checkpointed`)."""
    found = rows("select t.trial_key, r.round, r.eval_loss, r.checkpoint from sweeper_rounds r join sweeper_trials t "
                 "on t.id = r.trial_id join sweeper_sweeps s on s.id = t.sweep_id where s.name = :name", name=NAME)
    return {(key, n): loss for key, n, loss, checkpoint in found if checkpoint or not checkpointed}


def retries_logged(tmp_path: Path, count: int) -> bool:
    return any(int(n) >= count for n in re.findall(r"; retry (\d+)/\d+ in", cli_log(tmp_path)))


def test_database_outage_short_is_ridden_out_long_stops_cleanly_and_resumes(tmp_path, ray_cleanup, postgres_url,
                                                                           proxy, monkeypatch):
    url = make_url(postgres_url).set(port=proxy.port, password=PASSWORD).render_as_string(hide_password=False)
    monkeypatch.setenv("SWEEPER_DATABASE_URL", url)
    hold = tmp_path / "hold"
    spec = db_fault_spec(tmp_path, hold=hold)
    rows = Rows(postgres_url)  # the test reads PostgreSQL directly, never through the proxy
    driver = start_cli(["run", spec], tmp_path)
    try:
        # 1. A short outage, while the trial reports a round: every connection cut, new ones refused until the
        #    driver has retried 3 times (3.5 s of its 15.5 s of backoff); the sweep rides it out and goes on.
        wait_for(lambda: snapshot(rows, checkpointed=True), 180, "a checkpointed round")
        hold.touch()  # the trial stops before its next round
        proxy.down()
        before_short = snapshot(rows)
        assert len(before_short) < ROUNDS, "the trial ended before the outage"
        hold.unlink()  # its next round is reported into the outage
        wait_for(lambda: retries_logged(tmp_path, 3) or driver.poll() is not None, 120, "the driver's retries")
        assert driver.poll() is None, cli_log(tmp_path)
        proxy.up()
        at_up = snapshot(rows)
        wait_for(lambda: len(snapshot(rows)) > len(at_up) + 1 or driver.poll() is not None, 120,
                 "rounds written after the outage")
        hold.touch()  # held again, rounds still to run: the long outage comes mid-trial too
        assert driver.poll() is None, cli_log(tmp_path)
        retried = RETRY_LINE.findall(cli_log(tmp_path))
        assert retried, f"the sweep never noticed the outage:\n{cli_log(tmp_path)}"
        # 2. An outage that outlasts the retries (5, 15.5 s of backoff): the sweep stops, non-zero, and says why.
        proxy.down()
        before_long = snapshot(rows)
        assert len(before_long) < ROUNDS, "the trial ended before the long outage"
        hold.unlink()
        cut = time.monotonic()
        code = driver.wait(timeout=120)  # it must give up, not hang
        stopped_after = time.monotonic() - cut
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    log = cli_log(tmp_path)
    flat = " ".join(log.split())
    print(f"short outage: {len(retried)} retries logged, e.g. {retried[0]!r}; long outage: exit {code} "
          f"{stopped_after:.1f} s after the cut")
    assert before_long.items() >= before_short.items(), "a round written before the short outage was lost"
    assert code not in (0, 130), log
    safe = make_url(url).render_as_string(hide_password=True)
    assert re.search(rf"error: database {re.escape(safe)}( \(Optuna study\))? unavailable after 5 retries", flat), log
    assert "run `sweeper run` again to resume" in flat and "Traceback" not in log
    assert PASSWORD not in log
    wait_for_ray_to_go(tmp_path)

    # 3. The database is back: nothing written was lost, and the same command resumes the sweep.
    proxy.up()
    assert snapshot(rows).items() >= before_long.items(), "a round written before the long outage was lost"
    again = run_cli(["run", spec], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows.sweep_status(NAME)[0] == "completed"
    final = snapshot(rows)
    assert final.items() >= before_long.items()
    [trial] = rows.trials(NAME)
    assert trial["status"] == "completed" and trial["retries"] == 1, trial
    assert sorted(final) == [(trial["key"], n) for n in range(1, ROUNDS + 1)]
    assert rows.study_states(NAME) == ["COMPLETE"]
    assert PASSWORD not in again.stdout + again.stderr


def test_two_sweeps_at_once_on_one_postgres_store(tmp_path, postgres_url, monkeypatch, shared_ray):
    monkeypatch.setenv("SWEEPER_DATABASE_URL", postgres_url)  # a fresh database: both also race to create it
    folders = {name: tmp_path / name for name in ("sweep-a", "sweep-b")}
    drivers = {}
    try:
        for name, folder in folders.items():  # each its own folder and Tune path, one Ray cluster for both
            folder.mkdir()
            spec = db_fault_spec(folder, name=name, trials=2, epochs=1, evals=1)  # one round a trial
            drivers[name] = start_cli(["run", spec, "--address", shared_ray], folder)
        codes = {name: driver.wait(timeout=300) for name, driver in drivers.items()}
    finally:
        for driver in drivers.values():
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    assert codes == {"sweep-a": 0, "sweep-b": 0}, "\n".join(cli_log(f) for f in folders.values())

    rows = Rows(postgres_url)
    assert sorted(rows("select name, status from sweeper_sweeps")) == [("sweep-a", "completed"),
                                                                       ("sweep-b", "completed")]
    for name in folders:
        trials = rows.trials(name)
        assert len(trials) == 2 and {t["status"] for t in trials} == {"completed"}, trials
        assert all(t["retries"] == 0 and t["rounds"] == 1 for t in trials), trials
        assert len(rows("select r.id from sweeper_rounds r join sweeper_trials t on t.id = r.trial_id join "
                        "sweeper_sweeps s on s.id = t.sweep_id where s.name = :name", name=name)) == 2
        assert rows.study_states(name) == ["COMPLETE", "COMPLETE"]
    keys = rows("select s.name, t.trial_key from sweeper_trials t join sweeper_sweeps s on s.id = t.sweep_id")
    assert len(keys) == len(set(keys)) == 4  # trial keys count from t0000 in each sweep: a trial is its sweep's
    assert sorted(s for (s,) in rows("select study_name from studies")) == ["sweep-a", "sweep-b"]
    assert rows("select count(*) from trials")[0][0] == 4


CREATE_SCHEMA = """
import sys, time
from pathlib import Path
url, schema, folder = sys.argv[1:]
if schema == "store":
    from sweeper.store import TrialStore
    create = TrialStore(url).upgrade
else:
    from sweeper.study import study_storage
    create = lambda: study_storage(url)
Path(folder, schema + str(time.monotonic_ns())).touch()
while len(list(Path(folder).iterdir())) < 2:  # both imported: go together
    time.sleep(0.001)
create()
"""


@pytest.mark.parametrize("schema", ["store", "study"])
def test_schema_created_by_two_sweeps_at_the_same_instant(tmp_path, postgres_url, schema):
    """The race the end-to-end test above only sometimes hits: two processes create the schema at once."""
    procs = [subprocess.Popen([sys.executable, "-c", CREATE_SCHEMA, postgres_url, schema, str(tmp_path)],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
