"""bench/search_efficiency.py's own pieces, without training (the smoke run in test_bench_smoke.py trains)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import search_efficiency  # noqa: E402

from sweeper.controller import RECORD  # noqa: E402
from trainers.base import RoundRecord  # noqa: E402


def test_the_budget_stopper_sums_each_trials_latest_epoch_from_sweepers_and_from_a_plain_trainables_results():
    stopper = search_efficiency.budget_stopper(4)
    stopper("plain", {"epoch": 1.0})  # tune_optuna's trainable reports `epoch` at the top level
    stopper("sweeper", {RECORD: RoundRecord(1, {"f1_macro": 0.1}, {"epoch": 1.0}).to_dict()})
    stopper("plain", {"epoch": 2.0})
    assert not stopper.stop_all()  # 2 + 1 epochs
    stopper("sweeper", {RECORD: RoundRecord(2, {"f1_macro": 0.2}, {"epoch": 2.0}).to_dict()})
    assert stopper.stop_all()  # 2 + 2


def test_every_task_names_data_files_that_are_in_the_repository():
    for key, task in search_efficiency.TASKS.items():
        for split in ("train", "holdout", "test"):
            assert (ROOT / task["folder"] / f"{split}.{task['ext']}").is_file(), (key, split)
