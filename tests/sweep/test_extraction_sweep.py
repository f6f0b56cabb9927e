"""The extraction example end to end on SmolLM2 through the CLI: `sweeper run`, `promote` and `export` on JSON lines
of a schema that is not restaurant8k's, gated on every field's F1 (examples/bookings-smollm2.yaml, cut down)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml
from helpers import EXAMPLES, run_cli

pytestmark = pytest.mark.slow  # SmolLM2 on 2 CPU cores: minutes


def tiny_bookings_spec(tmp_path: Path) -> Path:
    spec = yaml.safe_load((EXAMPLES / "bookings-smollm2.yaml").read_text())
    data = {}
    for split, rows in (("train", 16), ("holdout", 6), ("test", 8)):
        lines = (EXAMPLES / "data" / "bookings" / f"{split}.jsonl").read_text().splitlines(True)
        data[split] = tmp_path / f"{split}.jsonl"
        data[split].write_text("".join(lines[:rows]))
    spec.update(
        data={**spec["data"], **{split: str(path) for split, path in data.items()}},
        fixed={**spec["fixed"], "num_epochs": 1},
        budget={"trials": 1, "max_concurrent": 1},
        scheduler={"type": "none", "evals_per_epoch": 1},
        generation_eval_examples=6,
        # Answers cut at 16 tokens (a whole one takes ~40): two training steps teach no valid JSON, and decoding to the
        # full budget was most of this test's time. What is under test is what gets scored, gated and exported;
        # whole generated answers are scored in tests/training/test_causal_lm_sft.py.
        max_new_tokens=16,
        resources={"cpus": 1, "torch_threads": 1},  # 2 threads beside any other busy process: several times slower
        storage={"root": str(tmp_path / "state")},
        tracking={"mode": "none"},
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_smollm2_extraction_sweep_runs_promotes_and_exports(tmp_path, shared_ray):
    spec = tiny_bookings_spec(tmp_path)
    run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    db = tmp_path / "state" / "sweeper.db"
    url = f"sqlite:///{db}"
    with sqlite3.connect(db) as con:
        rounds = [json.loads(m) for (m,) in con.execute("select metrics from sweeper_rounds")]
        (reported,) = [json.loads(b) for (b,) in con.execute("select bookkeeping from sweeper_rounds")]
    assert len(rounds) == 1  # 1 trial x 1 round
    for metrics in rounds:  # the data's own field names, scored on the generated JSON
        assert {"eval_loss", "f1_micro", "json_valid_rate"} <= set(metrics)
        assert 0.0 <= metrics["json_valid_rate"] <= 1.0

    listing = " ".join(run_cli(["trials", "bookings-smollm2", "--db", url], tmp_path, check=True).stdout.split())
    fields = sorted({k for m in rounds for k in m if k.startswith("f1_") and k != "f1_micro"})
    assert all(f in listing for f in fields)  # per-field F1 columns in the table a user reads

    promotion = run_cli(["promote", "bookings-smollm2", "--db", url, "--address", shared_ray], tmp_path)
    assert promotion.returncode in (0, 3), promotion.stderr  # PROMOTED or NOT PROMOTED: both a verdict
    output = " ".join(promotion.stdout.split())
    assert "per_field_f1 >= 0.5" in output and "json_valid_rate >= 0.9" in output

    run_cli(["export", "bookings-smollm2", "--out", "winner", "--db", url], tmp_path, check=True)
    record = yaml.safe_load((tmp_path / "winner" / "winner.yaml").read_text())
    assert record["trial"]["data"]["format"] == "extraction"
    assert (tmp_path / "winner" / "adapter" / "adapter_config.json").is_file()
    assert record["promotion"]["status"] in ("PROMOTED", "NOT PROMOTED")
    # the export says what the worker reported it ran with, not what the exporting process would compute
    assert record["training_arguments"] == reported["training_arguments"]
    assert record["lora_config"] == reported["lora_config"]
    for key in ("device", "dtype", "micro_batch", "gradient_accumulation", "peak_memory_mb", "tokens_per_s"):
        assert record["worker"][key] == reported[key], key
