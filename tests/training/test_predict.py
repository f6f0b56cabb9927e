"""`predict` + `score` re-evaluate a trained adapter per example (what promotion bootstraps over).

Checked against the trainer itself: predicting the holdout from a round's checkpoint must give back the
metrics that round reported, and the per-example losses must pool to its holdout loss.
"""

import json
from pathlib import Path

import pytest

from sweeper.datasets import read_examples
from trainers import causal_lm_sft, sequence_classification, token_tagging
from trainers.base import ListReporter


def trained(module, config):
    reporter = ListReporter()
    module.train(config, reporter)
    return reporter.rounds[-1].metrics, reporter.checkpoints[-1]


def test_token_tagging_predict_reproduces_the_round_metrics(make_config, minilm_path, restaurant8k_small):
    config = make_config("token_tagging", minilm_path, restaurant8k_small, num_epochs=2)
    reported, checkpoint = trained(token_tagging, config)
    holdout = read_examples(config.data.holdout, "restaurant8k")
    records = token_tagging.predict(config, checkpoint, holdout)
    assert len(records) == len(holdout) and records[0]["gold"] == holdout[0].fields()
    scores = token_tagging.score(records)
    for metric in ("f1_micro", "precision_micro", "recall_micro", *(k for k in reported if k.startswith("f1_"))):
        assert scores[metric] == pytest.approx(reported[metric], abs=1e-9), metric
    assert scores["eval_loss"] == pytest.approx(reported["eval_loss"], rel=1e-4)  # one eval batch: the token mean


def test_classification_predict_reproduces_the_round_metrics(make_config, minilm_path, banking77_subset):
    config = make_config("sequence_classification", minilm_path, banking77_subset, num_epochs=2, learning_rate=5e-3)
    reported, checkpoint = trained(sequence_classification, config)
    records = sequence_classification.predict(config, checkpoint, read_examples(config.data.holdout, "csv"))
    scores = sequence_classification.score(records)
    assert scores["accuracy"] == pytest.approx(reported["accuracy"], abs=1e-9)
    assert scores["f1_macro"] == pytest.approx(reported["f1_macro"], abs=1e-9)
    assert scores["eval_loss"] == pytest.approx(reported["eval_loss"], rel=1e-4)
    assert {r["tokens"] for r in records} == {1}


@pytest.mark.slow  # SmolLM2 training (~25 s on 2 cores): CI runs it, the fast tier does not
def test_causal_lm_predict_reproduces_the_round_metrics(make_config, smollm2_path, restaurant8k_tiny, tmp_path):
    holdout = tmp_path / "r8k-holdout-2.json"  # decoding dominates the cost: 2 rows, each decoded twice
    holdout.write_text(json.dumps(json.loads(Path(restaurant8k_tiny["holdout"]).read_text())[:2]))
    config = make_config(
        "causal_lm_sft", smollm2_path, {**restaurant8k_tiny, "holdout": str(holdout)}, batch_size=8, num_epochs=1,
        evals_per_epoch=2, max_rounds=1, learning_rate=1e-3, max_seq_length=160, generation_eval_examples=2,
    )  # 2 steps, then every holdout row is decoded, as predict decodes them
    reported, checkpoint = trained(causal_lm_sft, config)
    records = causal_lm_sft.predict(config, checkpoint, read_examples(config.data.holdout, "restaurant8k"))
    scores = causal_lm_sft.score(records)
    for metric in ("f1_micro", "json_valid_rate"):
        assert scores[metric] == pytest.approx(reported[metric], abs=1e-9), metric
    assert scores["eval_loss"] == pytest.approx(reported["eval_loss"], rel=1e-3)
    assert all(r["tokens"] > 0 for r in records)  # the response tokens carry the loss, not the prompt
