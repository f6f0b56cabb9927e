"""Stop (by id) and name every process the test run left behind; bin/test runs it after pytest.

bin/test marks the run with SWEEPER_TEST_RUN, which every process a test starts inherits, Ray's included. A pytest-xdist
worker that dies takes no fixture teardown with it: the Rays its tests started would run on, and one that holds the
run's output open keeps CI waiting for its end until CI's own timeout."""

from __future__ import annotations

import os
import sys

import psutil
from helpers import kill_processes


def left_behind(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid in (os.getpid(), os.getppid()):
            continue
        try:
            if proc.environ().get("SWEEPER_TEST_RUN") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


if __name__ == "__main__":
    left = left_behind(os.environ["SWEEPER_TEST_RUN"])
    for proc in left:
        command = " ".join(proc.info["cmdline"] or [])[:200]
        print(f"bin/test: stopping pid {proc.pid}, left behind by the tests: {command}", file=sys.stderr)
    kill_processes(left)
