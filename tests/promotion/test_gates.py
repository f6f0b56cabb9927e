"""Gate logic on hand-computed cases: the bootstrap interval, which side of it a gate uses, and per-field gates.

No model here: per-example records are written by hand and scored by the tagging task's own `score`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sweeper.promotion import (
    GateCheck,
    PromotionResult,
    TrialCheck,
    bootstrap_intervals,
    check_gates,
    expand_gates,
)
from sweeper.spec import Gate, Promotion
from trainers.token_tagging import score as tagging_score


def mean_of(records):
    return {"m": float(np.mean([r["v"] for r in records]))}


def test_all_equal_examples_give_a_zero_width_interval():
    records = [{"v": 0.7}] * 25
    assert bootstrap_intervals(records, mean_of, ["m"], 200, 0.95, seed=0) == {"m": (pytest.approx(0.7),) * 2}


def test_two_examples_by_hand():
    # Resampling {0, 1} twice gives a mean of 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4. A 40% interval
    # cuts at the 30% and 70% quantiles: both inside the 0.5 block (cumulative 0.25 .. 0.75), so [0.5, 0.5].
    # A 95% interval cuts at 2.5% and 97.5%: inside the 0 and the 1 blocks.
    records = [{"v": 0.0}, {"v": 1.0}]
    assert bootstrap_intervals(records, mean_of, ["m"], 4000, 0.40, seed=1)["m"] == (0.5, 0.5)
    assert bootstrap_intervals(records, mean_of, ["m"], 4000, 0.95, seed=1)["m"] == (0.0, 1.0)


def test_interval_matches_a_numpy_reference_with_the_same_draws():
    values = np.array([0.1, 0.9, 0.4, 0.4, 0.75, 0.0, 1.0, 0.3])
    records = [{"v": v} for v in values]
    rng = np.random.default_rng(5)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(500)]
    low, high = np.quantile(means, [0.05, 0.95])  # a 90% percentile interval
    interval = bootstrap_intervals(records, mean_of, ["m"], 500, 0.90, seed=5)["m"]
    assert interval == (pytest.approx(low), pytest.approx(high))


def test_a_metric_undefined_in_a_resample_is_left_out_not_counted_as_zero():
    # "rare" is defined only when the one example carrying it is drawn; those resamples all say 1.0
    def score(records):
        carrying = [r for r in records if r["rare"]]
        return {"rare": 1.0} if carrying else {}

    records = [{"rare": True}] + [{"rare": False}] * 9
    assert bootstrap_intervals(records, score, ["rare"], 300, 0.95, seed=2)["rare"] == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_intervals([{"rare": False}], score, ["rare"], 100, 0.95, 2)["rare"])


def gate_check(op, value, low, high, threshold=0.5, seeds=()):
    return GateCheck("g", "m", op, threshold, value, low, high, seed_values=list(seeds))


@pytest.mark.parametrize(
    "op, low, high, passed",
    [(">=", 0.55, 0.9, True), (">=", 0.45, 0.9, False),  # the point value 0.7 clears 0.5 either way
     ("<=", 0.1, 0.45, True), ("<=", 0.1, 0.55, False)],
)
def test_a_gate_judges_the_bound_on_its_side_never_the_point_value(op, low, high, passed):
    check = gate_check(op, 0.7 if op == ">=" else 0.3, low, high)
    assert check.passed is passed
    assert check.bound == (low if op == ">=" else high)


def test_with_seeds_the_mean_must_clear_too():
    assert gate_check(">=", 0.8, 0.6, 0.9, seeds=[0.7, 0.6]).passed  # mean 0.7
    assert not gate_check(">=", 0.8, 0.6, 0.9, seeds=[0.1, 0.0]).passed  # mean 0.3: the winner was a lucky seed


def test_per_field_gate_expands_to_one_gate_per_field():
    gates = [Gate(metric="per_field_f1", op=">=", threshold=0.9), Gate.model_validate("f1_micro >= 0.5")]
    assert [(str(g), m) for g, m in expand_gates(gates, ["date", "time"])] == [
        ("per_field_f1 >= 0.9", "f1_date"), ("per_field_f1 >= 0.9", "f1_time"), ("f1_micro >= 0.5", "f1_micro")]


# Hand-made tagging records: date always right (F1 1), people always right (F1 1), time right in 2 of 3 rows
# and once a wrong value (tp 2, fp 1, fn 1: F1 2*2/(2*2+1+1) = 2/3). Micro: tp 2+2+2 = 6, fp 1, fn 1: 12/14.
RECORDS = [
    {"gold": {"date": "friday", "time": "7pm"}, "predicted": {"date": "Friday", "time": "7pm"}},
    {"gold": {"people": "4", "time": "8pm"}, "predicted": {"people": "4", "time": "8pm"}},
    {"gold": {"time": "noon"}, "predicted": {"time": "9am"}},
    {"gold": {"date": "today", "people": "two"}, "predicted": {"date": "today", "people": "two"}},
] * 5
for record in RECORDS:
    record.update(loss=0.2, tokens=4)


def test_hand_computed_per_field_f1_fails_exactly_the_field_below_its_gate():
    scores = tagging_score(RECORDS)
    assert scores["f1_date"] == scores["f1_people"] == 1.0
    assert scores["f1_time"] == pytest.approx(2 / 3)
    assert scores["f1_micro"] == pytest.approx(12 / 14)
    assert scores["eval_loss"] == pytest.approx(0.2 * 20 / (4 * 20))

    settings = Promotion(gates=["per_field_f1 >= 0.9 for every field", "f1_micro >= 0.6", "eval_loss <= 0.06"])
    checks = check_gates(RECORDS, tagging_score, settings, ["date", "people", "time"], seed=0)
    by_metric = {c.metric: c for c in checks}
    assert [c.metric for c in checks if not c.passed] == ["f1_time"]
    # date and people are right in every example: every resample says 1.0, a zero-width interval
    assert (by_metric["f1_date"].low, by_metric["f1_date"].high) == (1.0, 1.0)
    assert by_metric["f1_time"].value == pytest.approx(2 / 3) and by_metric["f1_time"].low < 2 / 3
    # every example has the same loss per token: the pooled loss is 0.05 in every resample
    assert by_metric["eval_loss"].high == pytest.approx(0.05) and by_metric["eval_loss"].passed


def test_a_field_absent_from_the_split_fails_with_a_reason():
    settings = Promotion(gates=["per_field_f1 >= 0.5"])
    checks = check_gates(RECORDS, tagging_score, settings, ["date", "first_name", "people", "time"], seed=0)
    absent = next(c for c in checks if c.metric == "f1_first_name")
    assert not absent.passed and absent.value is None and "never occurs" in absent.note


def test_the_result_names_the_failing_field_and_the_selection_only_split():
    failing = GateCheck("per_field_f1 >= 0.9", "f1_time", ">=", 0.9, 0.66, 0.41, 0.83)
    passing = GateCheck("per_field_f1 >= 0.9", "f1_date", ">=", 0.9, 1.0, 1.0, 1.0)
    result = PromotionResult("s", "t1", "holdout", 0.95, 1000, [TrialCheck("t1", 0.8, 20, [passing, failing])],
                             runner_up="t2")
    assert not result.promoted
    assert "f1_time >= 0.9 (lower bound 0.4100)" in result.note()
    assert "selection data only" in result.note() and "runner-up t2" in result.note()
    record = result.to_dict()
    assert record["status"] == "NOT PROMOTED" and record["selection_only"] is True
    assert [g["passed"] for g in record["checked"][0]["gates"]] == [True, False]


def test_the_stored_record_is_strict_json():
    check = GateCheck("eval_loss <= 1", "eval_loss", "<=", 1.0, float("nan"), None, None)
    record = PromotionResult("s", "t1", "test", 0.95, 1000, [TrialCheck("t1", 0.5, 3, [check])]).to_dict()
    json.dumps(record, allow_nan=False)  # PostgreSQL's json type refuses NaN
    assert record["checked"][0]["gates"][0]["value"] is None


def test_a_per_field_gate_on_data_without_fields_fails_and_the_other_gates_are_still_checked():
    settings = Promotion(gates=["per_field_f1 >= 0.5", "f1_micro >= 0.5"])
    checks = check_gates(RECORDS, tagging_score, settings, [], seed=0)
    assert [(c.metric, c.passed) for c in checks] == [("f1_micro", True), ("per_field_f1", False)]
    assert "no fields" in checks[1].note
