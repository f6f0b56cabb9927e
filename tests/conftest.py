"""Fixtures shared by every test folder; helpers live in tests/helpers.py."""

from __future__ import annotations

import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import helpers` from any test folder

from helpers import PostgresUnavailable, fresh_postgres_database, ray_tmp, stop_ray  # noqa: E402

SHARED_RAY_CPUS = 4  # trials of the synthetic task sleep: two sweeps of 2 concurrent trials fit at once
# Drivers reach these clusters by their GCS address, never a dashboard. Without one a cluster runs 7 processes, not
# 18, and uses 1.5 CPU-s less to start and 1.5 CPU-s a minute less when idle (measured here, psutil, 2026-12-04).
# Tests that submit Ray jobs start a cluster of their own, with a dashboard.
NO_DASHBOARD = {"include_dashboard": False}

FILE_SECONDS = Path(__file__).with_name("file_seconds.json")  # what each test file took, to hand out the long first
UNRECORDED_SLOW_S = 60

_file_seconds: defaultdict[str, float] = defaultdict(float)
_postgres_down: str | None = None  # the first failure, so later tests fail at once with the same text


def pytest_addoption(parser):
    parser.addoption("--record-durations", action="store_true",
                     help=f"write each file's test time into {FILE_SECONDS.name} (the files run; the rest kept)")


def pytest_collection_modifyitems(items):
    """Longest files first, by the recorded time of each (FILE_SECONDS; a slow file not recorded yet counts as
    UNRECORDED_SLOW_S, a fast one as 0): `bin/test` hands whole files to its test processes in collection order
    (`--no-loadscope-reorder`), so the long files start at once and the many short ones fill the gaps at the end.
    xdist gives a process its next file while it still has 2 tests to run, so a long file that comes late is
    promised early to a busy process: with the slow files first in name order the longest (240 s) started at 563 s
    and that process ended 60 to 70 s after the other two."""
    recorded = _recorded_seconds()
    slow_files = {_file(item.nodeid) for item in items if item.get_closest_marker("slow")}

    def seconds(item) -> float:
        file = _file(item.nodeid)
        return recorded.get(file, UNRECORDED_SLOW_S if file in slow_files else 0)

    items.sort(key=lambda item: -seconds(item))  # stable: a file's tests stay together and in their order


def pytest_runtest_logreport(report):
    _file_seconds[_file(report.nodeid)] += report.duration  # setup, call and teardown


def pytest_sessionfinish(session):
    if session.config.getoption("record_durations") and not hasattr(session.config, "workerinput"):
        recorded = _recorded_seconds()
        recorded.update({path: round(s, 1) for path, s in _file_seconds.items()})
        FILE_SECONDS.write_text(json.dumps({"command": "bash bin/test --record-durations", "seconds": dict(
            sorted(recorded.items(), key=lambda item: -item[1]))}, indent=1) + "\n")


def _recorded_seconds() -> dict[str, float]:
    return json.loads(FILE_SECONDS.read_text())["seconds"] if FILE_SECONDS.exists() else {}


def _file(nodeid: str) -> str:
    return nodeid.split("::")[0]


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
