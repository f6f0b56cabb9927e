"""A trial stops by itself: on holdout-loss patience, or after max_rounds."""

from trainers.base import ListReporter
from trainers.sequence_classification import train


def test_no_improvement_stops_on_patience(make_config, minilm_path, banking77_subset):
    # a learning rate of 1e-30 moves no float32 weight that matters, so the holdout loss stays exactly where it was
    # (1e-9 moved it by float noise, which made round 2 the "best" on this machine): never better by min_delta
    config = make_config(
        "sequence_classification", minilm_path, banking77_subset,
        num_epochs=4, learning_rate=1e-30, patience=1, min_delta=0.01,
    )
    reporter = ListReporter()
    outcome = train(config, reporter)
    assert len(reporter.rounds) < 4
    assert reporter.rounds[-1].bookkeeping["stop_reason"] == "patience"
    assert outcome.stop_reason == "patience" and outcome.rounds == len(reporter.rounds)
    assert outcome.best_round == 1
    assert len({r.metrics["eval_loss"] for r in reporter.rounds}) == 1


def test_max_rounds_stops_after_that_round(make_config, minilm_path, banking77_subset):
    config = make_config("sequence_classification", minilm_path, banking77_subset, num_epochs=3, max_rounds=1)
    reporter = ListReporter()
    outcome = train(config, reporter)
    assert [r.round for r in reporter.rounds] == [1]
    assert reporter.rounds[-1].bookkeeping["stop_reason"] == "max_rounds"
    assert (outcome.stop_reason, outcome.rounds) == ("max_rounds", 1)
