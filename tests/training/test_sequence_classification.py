"""Sequence classification on a banking77 subset: a real tiny run, and a holdout label train lacks."""

import pytest

from sweeper.datasets import LabeledExample, read_examples
from trainers.base import ListReporter
from trainers.sequence_classification import label_set, train


def test_training_lowers_the_loss_and_scores_accuracy(make_config, minilm_path, banking77_subset):
    config = make_config("sequence_classification", minilm_path, banking77_subset, num_epochs=3, learning_rate=5e-3)
    reporter = ListReporter()
    outcome = train(config, reporter)
    first, last = reporter.rounds[0].metrics, reporter.rounds[-1].metrics
    assert [r.round for r in reporter.rounds] == [1, 2, 3]
    assert set(last) == {"eval_loss", "accuracy", "f1_macro"}  # the holdout metrics only: the rest is bookkeeping
    assert last["eval_loss"] < first["eval_loss"]
    assert 0.0 <= last["accuracy"] <= 1.0 and 0.0 <= last["f1_macro"] <= 1.0
    assert last["accuracy"] > 0.1  # above chance (10 labels) after 15 steps
    # 20 holdout rows: accuracy is a multiple of 1/20
    assert last["accuracy"] * 20 == pytest.approx(round(last["accuracy"] * 20))
    assert reporter.rounds[-1].bookkeeping["time_tokenize_s"] >= 0 and outcome.stop_reason == "completed"


def test_a_holdout_label_missing_from_train_gets_an_output_it_never_learns(banking77_subset):
    # The data audit refuses such a holdout; allowed (`--allow unseen-label`), its rows must count as misses
    # rather than fail every trial, so the label gets the last output and train labels keep their ids.
    train_rows = read_examples(banking77_subset["train"], "csv")
    holdout = read_examples(banking77_subset["holdout"], "csv") + [LabeledExample("Where is my parcel?", "parcel_tracking")]
    labels = label_set(train_rows, holdout)
    assert labels[:-1] == sorted({e.label for e in train_rows})
    assert labels[-1] == "parcel_tracking"
