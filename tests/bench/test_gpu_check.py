"""bench/gpu_check.sh runs rarely, on a lent GPU: its `--cpu-smoke` setting runs every phase's code on a CPU (a tiny
config, the 1B config counted, the 4-bit refusal, a 2-trial sweep) so that a GPU run does not fail on a bug a CPU
could have caught. The smoke runs its phases in one fresh process (a GPU run: one each), so it still goes through the
phase re-entry and its JSON hand-off. Its time budget is the test's hang guard, not a speed requirement. Any Ray
process it left is stopped by id (`ray_cleanup`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import ray_tmp

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_its_cpu_smoke(tmp_path, ray_cleanup):
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp(tmp_path))}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-smoke", "--results",
                           str(tmp_path / "r.md"), "--json", str(tmp_path / "r.json"), "--budget-s", "560"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    phases = json.loads((tmp_path / "r.json").read_text())["phases"]
    assert {name: r["ok"] for name, r in phases.items()} == {
        "build": True, "lora-135m": True, "lora-1b": True, "qlora-135m": True, "qlora-1b": True,
        "oom": None,  # needs CUDA
        "fractional": True}
    assert 0.9e9 <= phases["build"]["parameters"]["1b"] <= 1.2e9
    assert "## GPU check (" in (tmp_path / "r.md").read_text()
