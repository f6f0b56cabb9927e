"""CI smoke of the benchmarks in bench/: each script runs in its small setting and writes its table with numbers.

The goals are not checked here (bench/RESULTS.md records whether they are met); only that every script still
runs end to end against the current product and produces a table. The five scripts run at once (about a
minute on 2 idle cores), each with a private results file and Ray temp folder; any Ray process left behind
is stopped by id.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import processes_mentioning

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = {
    "search_efficiency": ("## Search efficiency", 5),
    "controller_overhead": ("## Controller overhead", 3),
    "store_scale": ("## Store scale", 5),
    "causal_lm_throughput": ("## Causal-LM trainer throughput", 1),
    "trial_efficiency": ("## Trial worker efficiency", 7),
}
NUMBER = re.compile(r"\d+\.\d+|\d")
pytestmark = pytest.mark.slow


def _stop_ray(marker: str) -> None:
    for proc in processes_mentioning(marker):
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def test_every_benchmark_runs_in_its_small_setting(tmp_path):
    procs = {}
    tag = f"bsm{os.getpid() % 100000}"
    try:
        for name in SCRIPTS:
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": f"/tmp/{tag}-{name[:4]}",
                   "PYTHONUNBUFFERED": "1"}
            log = open(tmp_path / f"{name}.log", "w")
            procs[name] = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", "--results", str(tmp_path / f"{name}.md")],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 600
        for proc in procs.values():
            proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for name in SCRIPTS:
            _stop_ray(f"/tmp/{tag}-{name[:4]}")
            shutil.rmtree(f"/tmp/{tag}-{name[:4]}", ignore_errors=True)
    for name, (heading, min_rows) in SCRIPTS.items():
        log = (tmp_path / f"{name}.log").read_text(errors="replace")
        assert procs[name].returncode == 0, f"{name} exited {procs[name].returncode}:\n{log[-4000:]}"
        text = (tmp_path / f"{name}.md").read_text()
        assert heading in text, f"{name}: no '{heading}' section in its results"
        assert "Command: `.venv/bin/python bench/" in text
        lines = text.splitlines()
        headers = {i - 1 for i, line in enumerate(lines) if line.startswith("|---")}
        rows = [line for i, line in enumerate(lines) if line.startswith("| ") and i not in headers
                and NUMBER.search(line.split("|", 2)[2])]
        assert len(rows) >= min_rows, f"{name}: expected >= {min_rows} table rows with numbers:\n{text}"
