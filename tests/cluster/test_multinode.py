"""A sweep driven on an existing multi-node Ray cluster (`--address`), trials recorded in PostgreSQL.

`ray.cluster_utils.Cluster` starts a head and two worker nodes as separate raylets on this machine.
The head offers no CPUs, so every trial must be scheduled on a worker node, as on a GPU cluster whose
head only coordinates. Trials are the synthetic task (trainers/synthetic.py): placement, not training, is
under test. They are held before their first round until two run at once, so the two one-CPU nodes must
both take one, on any machine.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import start_cli, synthetic_spec
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.slow
PASSWORD = "s3cret-pw-8c1f"
NAME = "synthetic-sweep"


@pytest.fixture
def cluster(headless_ray):
    ray_cluster, add_workers = headless_ray
    return ray_cluster, add_workers(2)


def query(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql))]
    except Exception:  # noqa: BLE001 - the schema is not there yet
        return []
    finally:
        engine.dispose()


def test_sweep_spreads_over_worker_nodes_and_lands_in_postgres(tmp_path, cluster, postgres_url, monkeypatch):
    ray_cluster, workers = cluster
    # Trust auth ignores the password, so the URL can carry one that must never be printed or written.
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    monkeypatch.setenv("SWEEPER_DATABASE_URL", url)
    hold = tmp_path / "hold"
    hold.touch()
    spec = synthetic_spec(tmp_path, round_seconds=0.1, hold_file=hold, budget={"trials": 4, "max_concurrent": 2})
    driver = start_cli(["run", spec, "--address", ray_cluster.address], tmp_path)
    try:
        deadline = time.monotonic() + 300
        while len(query(postgres_url, "select id from sweeper_trials where status = 'running'")) < 2:
            assert driver.poll() is None, "the driver ended before two trials ran at once"
            assert time.monotonic() < deadline, "two trials never ran at once"
            time.sleep(0.2)
        hold.unlink()  # two trials hold one CPU each: one on each worker node
        code = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    output = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("cli-*.log"))
    assert code == 0, output
    assert "Started a local Ray instance" not in output

    trials = query(postgres_url, "select trial_key, node, status from sweeper_trials")
    rounds = query(postgres_url, "select count(*) from sweeper_rounds")[0][0]
    study = query(postgres_url, "select count(*) from trials t join studies s using (study_id) "
                                f"where s.study_name = '{NAME}' and t.state = 'COMPLETE'")[0][0]
    assert len(trials) == 4 and study == 4 and rounds >= 4
    worker_ids = {node.node_id for node in workers}
    used = {node for _, node, _ in trials}
    assert used <= worker_ids, f"a trial ran off the worker nodes: {used - worker_ids}"
    assert len(used) == 2, f"trials did not spread over both worker nodes: {trials}"
    assert PASSWORD not in output
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), f"the database password leaked into {path}"
