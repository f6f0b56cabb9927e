"""Promotion end to end through the CLI: real MiniLM training on restaurant8k-small (on the session's shared local
Ray cluster, `--address`), SQLite.

- NOT PROMOTED: the test split's `time` values point at the wrong words, so no model can reach the per-field
  gate on `time`, while the average gate passes: `sweeper promote` exits 3, names the field, records the
  outcome, and the export says it was not promoted and why. (A model this small may miss other fields too;
  `time` is the one that fails by construction.)
- PROMOTED: generous gates checked at the end of `sweeper run` (`promotion.on_run`), with one extra seed; the
  run also carries an audit fault let through with `--allow`, which is recorded with the sweep and exported.
"""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml
from helpers import narrow_training, run_cli, small_spec

pytestmark = pytest.mark.slow

# A narrow space that learns enough in 2 epochs on 96 rows (the winner's test f1_micro 0.24 to 0.27, lower bounds
# 0.14 to 0.15: the gates at 0.05 pass with room), two trials side by side.
TRAINING = dict(
    **narrow_training("promotion-e2e", epochs=2),
    budget={"trials": 2, "max_concurrent": 2},
    scheduler={"type": "none", "evals_per_epoch": 1},
)


def promotions(db) -> list[dict]:
    with sqlite3.connect(db) as con:
        rows = con.execute("select promoted, trial_key, split, runner_up, result from sweeper_promotions").fetchall()
    return [{"promoted": bool(p), "trial_key": k, "split": s, "runner_up": r, "result": json.loads(res)}
            for p, k, s, r, res in rows]


def gates_of(check: dict) -> dict[str, dict]:
    return {g["metric"]: g for g in check["gates"]}


def test_a_sweep_is_not_promoted_when_a_field_misses_its_gate(tmp_path, shared_ray):
    spec = small_spec(tmp_path, **TRAINING, promotion={"gates": ["f1_micro >= 0.05", "per_field_f1 >= 0.05"]})
    test_file = tmp_path / "data" / "test.json"
    records = json.loads(test_file.read_text())
    for record in records:  # every gold `time` now covers the first two characters of its message
        for label in record.get("labels", []):
            if label["slot"] == "time":
                label["valueSpan"] = {"startIndex": 0, "endIndex": 2}
    test_file.write_text(json.dumps(records))
    db = tmp_path / "state" / "sweeper.db"

    run_cli(["run", spec, "--address", shared_ray], tmp_path, check=True)
    result = run_cli(["promote", "small-sweep", "--db", f"sqlite:///{db}", "--address", shared_ray], tmp_path)
    output = " ".join(result.stdout.split())
    assert result.returncode == 3, result.stdout + result.stderr
    assert "NOT PROMOTED" in output and "f1_time >= 0.05 (lower bound" in output

    [stored] = promotions(db)
    assert not stored["promoted"] and stored["split"] == "test" and stored["runner_up"] == ""
    best = stored["result"]["checked"][0]
    gates = gates_of(best)
    assert set(gates) == {"f1_micro", "f1_date", "f1_first_name", "f1_last_name", "f1_people", "f1_time"}
    assert gates["f1_micro"]["passed"], gates["f1_micro"]  # good enough on average ...
    assert not gates["f1_time"]["passed"] and gates["f1_time"]["low"] < 0.05  # ... but one field fails
    assert gates["f1_time"]["holdout"] is not None  # the selection-time value is shown beside the test value
    assert len(stored["result"]["checked"]) == 2  # the other trial was checked for a runner-up: it fails too

    export = yaml.safe_load((tmp_path / "state" / "sweeps" / "small-sweep" / "export" / "winner.yaml").read_text())
    assert export["promotion"]["promoted"] is False and export["promotion"]["status"] == "NOT PROMOTED"
    assert "f1_time >= 0.05" in export["promotion"]["note"]
    assert export["winner"]["trial_key"] == stored["trial_key"]
    again = run_cli(["export", "small-sweep", "--out", tmp_path / "again", "--db", f"sqlite:///{db}"], tmp_path,
                    check=True)
    assert "NOT PROMOTED" in again.stdout
    assert yaml.safe_load((tmp_path / "again" / "winner.yaml").read_text())["promotion"]["promoted"] is False


def test_a_sweep_that_clears_generous_gates_is_promoted_at_the_end_of_the_run(tmp_path, shared_ray):
    training = {**TRAINING, "budget": {"trials": 1, "max_concurrent": 1}}  # a winner that passes: no runner-up
    spec = small_spec(tmp_path, **training, promotion={"gates": ["f1_micro >= 0.05", "eval_loss <= 3"], "seeds": 1,
                                                        "on_run": True})
    train = json.loads((tmp_path / "data" / "train.json").read_text())
    test = json.loads((tmp_path / "data" / "test.json").read_text())
    longest = max(train, key=lambda r: len(r["userInput"]["text"]))
    text = longest["userInput"]["text"]  # 129 characters; one changed: a near-duplicate, not an exact copy
    test.append({**longest, "userInput": {"text": text[:60] + ("x" if text[60] != "x" else "y") + text[61:]}})
    (tmp_path / "data" / "test.json").write_text(json.dumps(test))
    db = tmp_path / "state" / "sweeper.db"

    refused = run_cli(["run", spec, "--address", shared_ray], tmp_path)
    assert refused.returncode == 2 and "refused [near-duplicate]" in refused.stderr
    assert not db.exists()

    result = run_cli(["run", spec, "--allow", "near-duplicate", "--address", shared_ray], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PROMOTED: trial" in " ".join(result.stdout.split())

    with sqlite3.connect(db) as con:
        [(audit,)] = con.execute("select audit from sweeper_sweeps").fetchall()
    audit = json.loads(audit)
    assert audit["allowed"] == ["near-duplicate"] and audit["passed"] is True
    assert [f["code"] for f in audit["refusals"]] == ["near-duplicate"]

    [stored] = promotions(db)
    assert stored["promoted"] and stored["result"]["seeds"] == [8]  # the spec's seed is 7
    for gate in stored["result"]["checked"][0]["gates"]:
        assert gate["passed"] and len(gate["seed_values"]) == 1 and gate["seed_mean"] is not None
        assert gate["low"] <= gate["value"] <= gate["high"]

    export = yaml.safe_load((tmp_path / "state" / "sweeps" / "small-sweep" / "export" / "winner.yaml").read_text())
    assert export["promotion"]["promoted"] is True and export["promotion"]["status"] == "PROMOTED"
    assert export["winner"]["trial_key"] == stored["trial_key"]
    assert export["audit"]["allowed"] == ["near-duplicate"]
    assert (tmp_path / "state" / "sweeps" / "small-sweep" / "export" / "adapter" / "adapter_config.json").is_file()
