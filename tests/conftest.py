"""Fixtures shared by every test folder; helpers live in tests/helpers.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test folder

from helpers import PostgresUnavailable, fresh_postgres_database, ray_tmp, stop_ray  # noqa: E402

SHARED_RAY_CPUS = 4  # trials of the synthetic task sleep: two sweeps of 2 concurrent trials fit at once
# Drivers reach these clusters by their GCS address, never a dashboard. Without one a cluster runs 7 processes, not
# 18, and uses 1.5 CPU-s less to start and 1.5 CPU-s a minute less when idle (measured here, psutil, 2026-12-04).
# Tests that submit Ray jobs start a cluster of their own, with a dashboard.
NO_DASHBOARD = {"include_dashboard": False}

_postgres_down: str | None = None  # the first failure, so later tests fail at once with the same text


def pytest_collection_modifyitems(items):
    """Files with `slow` tests first, the rest after in their order: `bin/test` hands whole files to its test
    processes in collection order (`--no-loadscope-reorder`), so the long files start at once and the many short
    ones fill the gaps at the end. In xdist's default order (most tests first) the bench smoke, one 300 s file,
    started near the end of a run, which then ended on it alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: a file's tests keep their order


@pytest.fixture
def postgres_url():
    """A private, empty PostgreSQL database; unreachable PostgreSQL fails the test (CI guarantees one)."""
    global _postgres_down
    if _postgres_down is None:
        try:
            with fresh_postgres_database() as url:
                yield url
                return
        except PostgresUnavailable as exc:
            _postgres_down = str(exc)
    pytest.fail(_postgres_down, pytrace=False)


@pytest.fixture
def ray_cleanup(tmp_path):
    """After the test, stop (by id) any process of the Ray instance the test started, and remove its files."""
    yield
    _stop_ray(tmp_path)


def _stop_ray(marker_folder: Path) -> None:
    """Stop (by id) every process of the Ray instance whose temp folder is `ray_tmp(marker_folder)`."""
    stop_ray(str(ray_tmp(marker_folder)))
    shutil.rmtree(ray_tmp(marker_folder), ignore_errors=True)


@pytest.fixture
def headless_ray(tmp_path, monkeypatch, ray_cleanup):
    """A local Ray cluster shaped like a GPU cluster's: a head that offers no CPUs (it only coordinates) and the
    one-CPU worker nodes the test adds with `add_workers(count)`, so every trial and task must run on a worker."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # head, workers and drivers must agree (STACK_NOTES)
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp(tmp_path)))  # Ray keeps its files under $RAY_TMPDIR/ray
    (ray_tmp(tmp_path) / "ray").mkdir(exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **NO_DASHBOARD})

    def add_workers(count: int) -> list:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(count)]
        cluster.wait_for_nodes()
        return nodes

    yield cluster, add_workers
    cluster.shutdown()


@pytest.fixture(scope="session")
def _shared_ray_cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    folder = tmp_path_factory.mktemp("shared-ray")
    with pytest.MonkeyPatch.context() as env:  # only the cluster's own processes see these
        env.setenv("RAY_AUTH_MODE", "disabled")
        env.setenv("RAY_TMPDIR", str(ray_tmp(folder)))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": SHARED_RAY_CPUS, **NO_DASHBOARD})
        cluster.wait_for_nodes()
    try:
        yield cluster.address
    finally:
        cluster.shutdown()
        _stop_ray(folder)


@pytest.fixture
def shared_ray(_shared_ray_cluster, monkeypatch) -> str:
    """The address of one local Ray cluster shared by the whole session, for `sweeper run --address`.

    A sweep on it pays for connecting (~1 s), not for starting and stopping a private Ray (~5 s); a killed
    driver's job ends with it and the cluster stays, as on a real cluster. Tests about a sweep's own Ray (that it
    goes away with its driver), about what trial workers inherit from the driver's environment (TMPDIR, an API
    key), or that run the driver in another mount namespace keep a private Ray (`ray_cleanup`)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the drivers this test starts: as the cluster (STACK_NOTES)
    return _shared_ray_cluster
