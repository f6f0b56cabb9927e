"""A trial's worker passes to the next trial whatever the trial was doing when it ended (Tune reuses actors).

Before: Tune waited 2 s for the ended trial's thread and then gave up ("Could not re-use actor ...
reset_config()"): the next trial errored without running and the sweep ended `interrupted` (seen on a real
MiniLM sweep of long documents, where freeing a trial's model and memory took longer than that). Now the wait
covers the cleanup, and a trial the scheduler stops ends at its next step (Reporter.stop_requested) rather than
training on to its next report. The synthetic trials take 3 s to clean up (Tune waited 2 s), and 3 s a round;
each has at most 2 rounds (one searched parameter, 2 epochs of one round), so ASHA's first rung (round 1) is
where a trial is stopped, mid-way. The sweep runs on the session's shared Ray: actor reuse is Tune's, in the
driver, whatever cluster the actors run on.
"""

from __future__ import annotations

import sqlite3

import pytest
from fault_kit import FIXED, SPACE
from helpers import run_cli, synthetic_spec

pytestmark = pytest.mark.slow


def test_a_worker_passes_to_the_next_trial_after_a_slow_cleanup_or_a_stop(tmp_path, shared_ray):
    spec = synthetic_spec(tmp_path, round_seconds=3.0, cleanup_seconds=3.0, budget={"trials": 4, "max_concurrent": 1},
                          scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2, "evals_per_epoch": 1},
                          search_space=SPACE, fixed={**FIXED, "num_epochs": 2})
    result = run_cli(["run", spec, "--address", shared_ray], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Could not re-use actor" not in output
    with sqlite3.connect(tmp_path / "state" / "sweeper.db") as con:
        trials = con.execute("select trial_key, status, stop_reason from sweeper_trials order by trial_key").fetchall()
        sweep = con.execute("select status from sweeper_sweeps").fetchone()
    assert sweep == ("completed",) and len(trials) == 4, trials
    assert any(reason == "asha" for _, _, reason in trials), f"no trial was stopped, nothing was tested: {trials}"
    assert all(status != "failed" for _, status, _ in trials), trials
