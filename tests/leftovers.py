"""Stop (by id) and name every process the test run left behind; bin/test runs it after pytest.

bin/test marks the run with SWEEPER_TEST_RUN, which every process a test starts inherits, Ray's included. A pytest-xdist
worker that dies runs no fixture teardown: the Rays its tests started would run on, and one holding the run's output
open would keep CI waiting until its own timeout."""

from __future__ import annotations

import os
import sys

from helpers import kill_processes, processes_matching

if __name__ == "__main__":
    marker = os.environ["SWEEPER_TEST_RUN"]
    left = [proc for proc in processes_matching(lambda proc: proc.environ().get("SWEEPER_TEST_RUN") == marker)
            if proc.pid != os.getpid()]
    for proc in left:
        command = " ".join(proc.info["cmdline"] or [])[:200]
        print(f"bin/test: stopping pid {proc.pid}, left behind by the tests: {command}", file=sys.stderr)
    kill_processes(left)
