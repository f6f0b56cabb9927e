"""A sweep driven on an existing multi-node Ray cluster (`--address`), trials recorded in PostgreSQL.

`ray.cluster_utils.Cluster` starts a head and two worker nodes as separate raylets on this machine.
The head offers no CPUs, so every trial must be scheduled on a worker node, as on a GPU cluster whose
head only coordinates.
"""

from __future__ import annotations

import pytest
from helpers import ray_tmp, run_cli, small_spec
from ray.cluster_utils import Cluster
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.slow
PASSWORD = "s3cret-pw-8c1f"


@pytest.fixture
def cluster(tmp_path, monkeypatch, ray_cleanup):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # head, workers and driver must agree (STACK_NOTES)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp(tmp_path)))  # Ray keeps its files under $RAY_TMPDIR/ray
    (ray_tmp(tmp_path) / "ray").mkdir(exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def test_sweep_spreads_over_worker_nodes_and_lands_in_postgres(tmp_path, cluster, postgres_url, monkeypatch):
    ray_cluster, workers = cluster
    # Trust auth ignores the password, so the URL can carry one that must never be printed or written.
    url = make_url(postgres_url).set(password=PASSWORD).render_as_string(hide_password=False)
    monkeypatch.setenv("SWEEPER_DATABASE_URL", url)
    spec = small_spec(tmp_path, budget={"trials": 4, "max_concurrent": 2})
    result = run_cli(["run", spec, "--address", ray_cluster.address], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Started a local Ray instance" not in result.stderr

    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            trials = connection.execute(text("select trial_key, node, status from sweeper_trials")).all()
            rounds = connection.execute(text("select count(*) from sweeper_rounds")).scalar()
            study = connection.execute(text("select count(*) from trials t join studies s using (study_id) "
                                            "where s.study_name = 'small-sweep' and t.state = 'COMPLETE'")).scalar()
    finally:
        engine.dispose()
    assert len(trials) == 4 and study == 4 and rounds >= 4
    worker_ids = {node.node_id for node in workers}
    used = {node for _, node, _ in trials}
    assert used <= worker_ids, f"a trial ran off the worker nodes: {used - worker_ids}"
    assert len(used) == 2, f"trials did not spread over both worker nodes: {trials}"
    assert PASSWORD not in result.stdout + result.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), f"the database password leaked into {path}"
