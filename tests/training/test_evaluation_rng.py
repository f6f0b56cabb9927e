"""How often a trial evaluates must not change what it trains: evaluation is an observation. (Creating a DataLoader
iterator draws from torch's global generator, so without care each evaluation would shift the dropout draws of
every training step after it, and `scheduler.evals_per_epoch` would change the model a sweep selects.)"""

import pytest

from trainers import token_tagging
from trainers.base import ListReporter


def test_evaluating_twice_an_epoch_trains_the_same_model_as_evaluating_once(make_config, minilm_path,
                                                                             restaurant8k_small, tmp_path):
    # 96 training rows at batch 16: 6 steps an epoch, 3 a round at 2 evaluations an epoch, the same 12 steps in all
    rounds = {}
    for per_epoch in (1, 2):
        config = make_config("token_tagging", minilm_path, restaurant8k_small, num_epochs=2, lora_dropout=0.1,
                             evals_per_epoch=per_epoch, output_dir=str(tmp_path / f"every-{per_epoch}"))
        reporter = ListReporter()
        token_tagging.train(config, reporter)
        rounds[per_epoch] = [r.metrics["eval_loss"] for r in reporter.rounds]
    assert len(rounds[2]) == 2 * len(rounds[1]) == 4
    assert rounds[2][1::2] == pytest.approx(rounds[1], rel=1e-6)
