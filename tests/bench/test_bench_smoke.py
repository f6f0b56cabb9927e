"""CI smoke of the benchmarks in bench/: each script runs in its small setting and writes its table with numbers.

The goals are not checked here (bench/RESULTS.md records whether they are met); only that every script still
runs end to end against the current product and produces a table. One test a script, in one file, so the scripts
run one after another in one test process, each with a private results file and Ray temp folder (three of them
start Ray: five Rays starting at once on 2 shared cores starved one another until one failed `ray.init` with
"Deadline Exceeded"); any Ray process left behind is stopped by id (`ray_cleanup`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "search_efficiency": ("## Search efficiency", 4),  # 5 methods (--smoke)
    "controller_overhead": ("## Controller overhead", 3),
    "store_scale": ("## Store scale", 5),
    "causal_lm_throughput": ("## Causal-LM trainer throughput", 1),
    "trial_efficiency": ("## Trial worker efficiency", 7),
}
NUMBER = re.compile(r"\d+\.\d+|\d")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_in_its_small_setting(tmp_path, ray_cleanup, name):
    heading, min_rows = SCRIPTS[name]
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", "--results", str(tmp_path / "r.md")],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=600)  # a hang guard only
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (tmp_path / "log").read_text(errors="replace")
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{log[-4000:]}"
    text = (tmp_path / "r.md").read_text()
    assert heading in text, f"{name}: no '{heading}' section in its results"
    assert "Command: `.venv/bin/python bench/" in text
    lines = text.splitlines()
    headers = {i - 1 for i, line in enumerate(lines) if line.startswith("|---")}
    rows = [line for i, line in enumerate(lines) if line.startswith("| ") and i not in headers
            and NUMBER.search(line.split("|", 2)[2])]
    assert len(rows) >= min_rows, f"{name}: expected >= {min_rows} table rows with numbers:\n{text}"
