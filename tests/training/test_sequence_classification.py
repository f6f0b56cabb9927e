"""Sequence classification on a banking77 subset: a real tiny run, and the unseen-label refusal."""

import csv

import pytest

from trainers.base import ListReporter
from trainers.sequence_classification import train


def test_training_lowers_the_loss_and_scores_accuracy(make_config, minilm_path, banking77_subset):
    config = make_config("sequence_classification", minilm_path, banking77_subset, num_epochs=3, learning_rate=5e-3)
    reporter = ListReporter()
    outcome = train(config, reporter)
    first, last = reporter.rounds[0], reporter.rounds[-1]
    assert [r["round"] for r in reporter.rounds] == [1, 2, 3]
    assert last["eval_loss"] < first["eval_loss"]
    assert 0.0 <= last["accuracy"] <= 1.0 and 0.0 <= last["f1_macro"] <= 1.0
    assert last["accuracy"] > 0.1  # above chance (10 labels) after 15 steps
    # 20 holdout rows: accuracy is a multiple of 1/20
    assert last["accuracy"] * 20 == pytest.approx(round(last["accuracy"] * 20))
    assert last["time_tokenize_s"] >= 0 and outcome.stop_reason == "completed"


def test_a_holdout_label_missing_from_train_is_refused(make_config, minilm_path, banking77_subset, tmp_path):
    holdout = tmp_path / "holdout-unseen.csv"
    with open(banking77_subset["holdout"], newline="") as src, open(holdout, "w", newline="") as dst:
        rows = list(csv.reader(src)) + [["Where is my parcel?", "parcel_tracking"]]
        csv.writer(dst).writerows(rows)
    config = make_config("sequence_classification", minilm_path, {**banking77_subset, "holdout": str(holdout)})
    with pytest.raises(ValueError, match="parcel_tracking"):
        train(config, ListReporter())
