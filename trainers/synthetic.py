"""A synthetic task: deterministic learning curves computed from the hyperparameters, no model and no torch.

It stands in for training where the controller, not the model, is under test (resume after a killed driver, the
time budget, ASHA, the store): a trial takes seconds, every round is reproducible, and it checkpoints and resumes
exactly as the real trainers do. The curve peaks at a learning rate of 3e-3 and depends mildly on the rest, so a
search has something to find. It reads the train split (so data checks apply) but learns nothing from it.

`model:` is a folder whose `config.json` sets the pace: `{"model_type": "synthetic", "round_seconds": 0.2,
"hold_file": "/tmp/hold", "cleanup_seconds": 0}`; while `hold_file` exists no trial starts its next round (tests
control timing with it, never with the machine's speed); `cleanup_seconds` is the time a trial takes after its
last round, as a real trainer frees its model and memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from trainers.base import Reporter, RoundRecord, TrialConfig, TrialOutcome

STATE_FILE = "synthetic_state.json"  # its registration names it as the model file the export copies
BEST_LEARNING_RATE = 3e-3


def curve(config: TrialConfig, round_: int) -> dict[str, float]:
    """Holdout metrics after `round_` rounds: accuracy rises to a ceiling set by the hyperparameters, and the
    loss turns up again after two epochs (overfitting), so patience has something to stop."""
    hp = config.hparams
    quality = math.exp(-(math.log10(hp.learning_rate / BEST_LEARNING_RATE)) ** 2)
    ceiling = (0.35 + 0.6 * quality) * (1 - 0.2 * hp.lora_dropout) * (1 - 0.1 * abs(math.log2(hp.batch_size / 16)) / 3)
    epochs = round_ / config.evals_per_epoch
    accuracy = ceiling * (1 - math.exp(-(0.5 + quality) * epochs)) + _noise(config, round_)
    loss = 2.0 - 1.5 * accuracy + 0.05 * max(0.0, epochs - 2) ** 2
    return {"eval_loss": round(loss, 6), "accuracy": round(min(max(accuracy, 0.0), 1.0), 6)}


def _noise(config: TrialConfig, round_: int) -> float:
    """Small, deterministic: the same trial gives the same curve, two seeds give two."""
    digest = hashlib.sha256(f"{config.seed}:{config.hparams.model_dump_json()}:{round_}".encode()).digest()
    return (int.from_bytes(digest[:4], "big") / 2**32 - 0.5) * 0.01


def _pace(config: TrialConfig) -> dict:
    return json.loads((Path(config.model_path) / "config.json").read_text())


def train(config: TrialConfig, reporter: Reporter) -> TrialOutcome:
    pace = _pace(config)
    try:
        return _rounds(config, reporter, pace)
    finally:  # however the trial ends (Tune ends a stopped one with SystemExit at its report), as trial_worker does
        time.sleep(float(pace.get("cleanup_seconds", 0.0)))


def _rounds(config: TrialConfig, reporter: Reporter, pace: dict) -> TrialOutcome:
    n_train = len(config.data.read("train"))  # checked against the audit's fingerprint, as every trainer does
    steps_per_round = max(1, math.ceil(n_train / config.hparams.batch_size / config.evals_per_epoch))
    state = {"round": 0, "best_loss": math.inf, "best_round": 0, "stale": 0}
    resumed = reporter.resume_from()
    if resumed:
        state = json.loads((Path(resumed) / STATE_FILE).read_text())
    stop_reason = ""
    while not stop_reason:
        _wait(pace, reporter)
        if reporter.stop_requested():
            break
        state["round"] += 1
        metrics = curve(config, state["round"])
        if metrics["eval_loss"] < state["best_loss"] - config.min_delta:
            state.update(best_loss=metrics["eval_loss"], best_round=state["round"], stale=0)
        else:
            state["stale"] += 1
        stop_reason = _stop_reason(config, state["round"], state["stale"])
        checkpoint = Path(config.output_dir) / f"checkpoint-{state['round']}"
        checkpoint.mkdir(parents=True)
        (checkpoint / STATE_FILE).write_text(json.dumps(state))
        bookkeeping = {"epoch": state["round"] / config.evals_per_epoch, "device": "synthetic",
                       "examples_seen": state["round"] * steps_per_round * config.hparams.batch_size,
                       "stop_reason": stop_reason}
        reporter.report(RoundRecord(state["round"], metrics, bookkeeping), str(checkpoint))
    return TrialOutcome(stop_reason, state["best_round"], state["best_loss"], state["round"], "synthetic")


def _stop_reason(config: TrialConfig, round_: int, stale: int) -> str:
    """Why training stops after `round_`, or '' to go on; in hf_loop's order: every epoch done, the round cap of
    a re-run, then patience."""
    if round_ >= config.hparams.num_epochs * config.evals_per_epoch:
        return "completed"
    if config.max_rounds and round_ >= config.max_rounds:
        return "max_rounds"
    return "patience" if stale >= config.patience else ""


def _wait(pace: dict, reporter: Reporter) -> None:
    """A round's time, as a real trainer's steps take time: held while the hold file exists, then
    `round_seconds`; a stopped trial ends at once, as a real trainer does at its next step."""
    hold = pace.get("hold_file")
    while hold and Path(hold).exists() and not reporter.stop_requested():
        time.sleep(0.05)
    deadline = time.monotonic() + float(pace.get("round_seconds", 0.0))
    while time.monotonic() < deadline and not reporter.stop_requested():
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
