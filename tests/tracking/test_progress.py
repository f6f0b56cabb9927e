"""The live progress of `sweeper run` and the Tune callbacks' pickling, driven with stand-in trials (no Ray run)."""

from __future__ import annotations

import io
import pickle
import sys

from helpers import small_spec
from rich.console import Console

from sweeper import controller
from sweeper.progress import LiveProgress, TrialView
from sweeper.spec import load_spec


def _spec(tmp_path, **overrides):
    return load_spec(small_spec(tmp_path, **overrides))


def _trial(key, status, round_=0, objective=None, stop_reason="", lr=1e-3):
    result = {"round": round_, "objective": objective, "eval_loss": 1.0, "stop_reason": stop_reason} if round_ else {}
    return TrialView(key, status, result, lr)


def test_non_interactive_prints_one_line_per_finished_trial(tmp_path, capsys):
    progress = LiveProgress(_spec(tmp_path))  # f1_micro, maximised, 4 trials
    progress.start()
    assert progress.interactive is False  # pytest's captured stdout is no terminal
    t1 = _trial("t1", "RUNNING", 3, 0.40, stop_reason="patience")
    t2 = _trial("t2", "RUNNING", 2, 0.60)
    trials = [t1, t2, _trial("t3", "PENDING")]
    progress.step(trials)
    assert capsys.readouterr().out == ""  # nothing while trials merely run

    progress.finished(trials, t1)  # Tune still says RUNNING when it calls back
    t1.status = "TERMINATED"
    t2.status = "ERROR"
    progress.finished(trials, t2, "failed")
    progress.end(trials)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[small-sweep] trial t1 early_stopped after 3 rounds, best f1_micro 0.4000")
    assert "1/4 done (completed 0, early-stopped 1, stopped 0, failed 0), 1 running" in lines[0]
    assert "best f1_micro 0.6000 (t2)" in lines[0] and "ETA " in lines[0] and "ETA -" not in lines[0]
    assert lines[1].startswith("[small-sweep] trial t2 failed") and "2/4 done" in lines[1] and "failed 1" in lines[1]


def test_interactive_live_table(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    spec = _spec(tmp_path, objective={"metric": "eval_loss"}, budget={"trials": 3, "max_concurrent": 2,
                                                                        "time_budget_s": 60})
    progress = LiveProgress(spec)
    progress.start()
    try:
        assert progress.interactive and progress._live is not None
        trials = [_trial("aa11", "RUNNING", 2, 0.9, lr=3e-4), _trial("bb22", "RUNNING", 1, 0.7),
                  _trial("cc33", "TERMINATED", 4, 0.5, stop_reason="completed")]
        progress._update(trials)
        rendered = Console(file=io.StringIO(), width=160, force_terminal=False)
        rendered.print(progress._render())
        text = rendered.file.getvalue()
    finally:
        progress.close()
    assert progress._live is None
    assert "sweep small-sweep: 1/3 done (completed 1" in text and "2 running" in text
    assert "best eval_loss 0.5000 (cc33)" in text  # minimised
    assert "aa11" in text and "3.00e-04" in text and "bb22" in text
    assert "ETA 0:" in text  # bounded by the 60 s time budget
    assert screen.getvalue() != ""  # the live display drew on the terminal


def test_callbacks_pickle_without_their_open_resources(tmp_path):
    spec = _spec(tmp_path, tracking={"mode": "offline", "project": "t"})
    job = controller._job(spec, "/models/x", 1)
    wandb_cb = controller.tracking_callbacks(spec, tmp_path / "sweep", f"sqlite:///{tmp_path}/s.db", job, "offline")[0]
    progress = controller.ProgressCallback(spec)
    wandb_cb.setup()
    progress.setup()
    try:
        # Tune snapshots callbacks with the experiment: the W&B runs and the live display stay behind
        assert pickle.loads(pickle.dumps(wandb_cb))._runs is None
        assert pickle.loads(pickle.dumps(progress)).view._live is None
        assert wandb_cb._runs is not None
    finally:
        wandb_cb.close()
        progress.close()
    assert controller.tracking_callbacks(spec, tmp_path, "sqlite://", job, "disabled") == []
