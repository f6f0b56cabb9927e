"""Shared fixtures for the trainer tests: local models, small data files and a TrialConfig builder.

The tests train for real (tiny runs on CPU), so every config pins 1 torch thread and short sequences. One thread,
not 2 on 2 cores: beside any other busy process, torch's 2 threads wait on each other at every op (measured: the
SmolLM2 run took 345 s with 2 threads on a loaded machine, 40 s with 1; the fast tier's trainer tests 83 s vs 38 s).
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup with no network hangs ~50 s before failing

from trainers.base import TrialConfig  # noqa: E402
from trainers.models import resolve_model  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "examples" / "data"


@pytest.fixture(scope="session")
def minilm_path() -> str:
    return resolve_model("minilm-l6")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    return resolve_model("smollm2-135m")


@pytest.fixture
def make_config(tmp_path):
    """Builds a TrialConfig for a tiny CPU run; keyword arguments override hparams or top-level fields."""

    def build(task: str, model_path: str, data: dict, **overrides) -> TrialConfig:
        hparams = dict(
            learning_rate=1e-2,
            batch_size=16,
            num_epochs=2,
            lr_scheduler_type="constant",
            warmup_ratio=0.0,
            weight_decay=0.0,
            lora_r=8,
            lora_alpha=16,
            lora_dropout=0.0,
        )
        hparams.update({k: overrides.pop(k) for k in list(overrides) if k in hparams})
        fields = dict(
            task=task,
            model_path=model_path,
            data=data,
            hparams=hparams,
            seed=1,
            output_dir=str(tmp_path / "out"),
            max_seq_length=48,
            evals_per_epoch=1,
            patience=5,
            min_delta=0.0,
            torch_threads=1,
        )
        return TrialConfig(**{**fields, **overrides})

    return build


@pytest.fixture
def restaurant8k_small() -> dict:
    folder = DATA / "restaurant8k-small"
    return {"format": "restaurant8k", "train": str(folder / "train.json"), "holdout": str(folder / "holdout.json")}


@pytest.fixture
def restaurant8k_tiny(tmp_path) -> dict:
    """32 train and 8 holdout rows: enough for a causal LM to learn the JSON shape in a few steps."""
    folder = DATA / "restaurant8k-small"
    files = {}
    for split, rows in (("train", 32), ("holdout", 8)):
        records = json.loads((folder / f"{split}.json").read_text())[:rows]
        files[split] = tmp_path / f"r8k-{split}.json"
        files[split].write_text(json.dumps(records))
    return {"format": "restaurant8k", "train": str(files["train"]), "holdout": str(files["holdout"])}


def write_csv(path: Path, rows: list[dict]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["text", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def banking77_subset(tmp_path) -> dict:
    """10 labels x 8 train rows and x 2 holdout rows, taken from the banking77 train file."""
    by_label = defaultdict(list)
    with open(DATA / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            by_label[row["category"]].append(row)
    labels = sorted(by_label)[:10]
    return {
        "format": "csv",
        "train": write_csv(tmp_path / "train.csv", [r for label in labels for r in by_label[label][:8]]),
        "holdout": write_csv(tmp_path / "holdout.csv", [r for label in labels for r in by_label[label][8:10]]),
    }
