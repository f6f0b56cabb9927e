"""Trial worker efficiency: the share of a trial's wall time spent in training steps, and time-to-first-step.

    .venv/bin/python bench/trial_efficiency.py --trials 8                    # the full setting (quickstart spec)
    .venv/bin/python bench/trial_efficiency.py --smoke --results /tmp/r.md   # CI smoke (restaurant8k-small)

Two measurements:

1. In a real sweep (`bench/trial_breakdown.py`'s sweep: `sweeps.run` on the quickstart spec, W&B off), each
   trial's wall time (driver's start to finish, from the store) split by the trainer's own timers; the share
   in training steps; and time-to-first-step, estimated per trial from the store as
   (first round recorded - trial started) - (round 1's train + eval + checkpoint + report time) + one step,
   i.e. the time from the driver starting the trial to the end of its first optimizer step. Trials that got
   a fresh Ray actor (the first `max_concurrent`) and those that reused one are reported apart.
2. Without Ray, exact: a fresh Python process runs `trainers.token_tagging.train` and is stopped right after
   its first training step; the phases from process start are timed by hooks on the trainer's callbacks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class FirstStepDone(Exception):
    pass


def first_step_probe(out: str, data: str, max_seq_length: int) -> None:
    """In a fresh process: time from process start to the end of the first training step, by phase."""
    import psutil

    process_start = psutil.Process().create_time()
    marks = {"python start -> main": time.time() - process_start}
    t = time.time()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from trainers import hf_loop
    from trainers.base import ListReporter, TrialConfig
    from trainers.models import resolve_model
    from trainers.token_tagging import train

    marks["imports (torch, transformers, peft, trainers)"] = time.time() - t
    t = time.time()
    model_path = resolve_model("minilm-l6")
    config = TrialConfig.model_validate(dict(
        task="token_tagging", model_path=model_path,
        data={"format": "restaurant8k", "train": f"{data}/train.json", "holdout": f"{data}/holdout.json"},
        hparams=dict(learning_rate=3e-3, batch_size=16, num_epochs=2, lr_scheduler_type="linear", warmup_ratio=0.05,
                     weight_decay=0.0, lora_r=8, lora_alpha=16, lora_dropout=0.05),
        seed=0, output_dir=tempfile.mkdtemp(prefix="bte-"), max_seq_length=max_seq_length, evals_per_epoch=1,
        patience=1, min_delta=0.0, torch_threads=1))
    marks["config + model path"] = time.time() - t
    phase = {"t": time.time()}
    original_lora, original_begin, original_end = hf_loop.lora_model, hf_loop.RoundReporter.on_step_begin, \
        hf_loop.RoundReporter.on_step_end

    def lora_model(prepared, cfg):
        marks["read data + tokenize"] = time.time() - phase["t"]
        phase["t"] = time.time()
        model = original_lora(prepared, cfg)
        marks["load model + LoRA"] = time.time() - phase["t"]
        phase["t"] = time.time()
        return model

    def on_step_begin(self, args, state, control, **kwargs):
        if "Trainer set-up (until the first step)" not in marks:
            marks["Trainer set-up (until the first step)"] = time.time() - phase["t"]
            phase["t"] = time.time()
        return original_begin(self, args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        original_end(self, args, state, control, **kwargs)
        marks["first step"] = time.time() - phase["t"]
        raise FirstStepDone()

    hf_loop.lora_model = lora_model
    hf_loop.RoundReporter.on_step_begin, hf_loop.RoundReporter.on_step_end = on_step_begin, on_step_end
    try:
        train(config, ListReporter())
    except FirstStepDone:
        pass
    marks["total: process start -> first step done"] = time.time() - process_start
    shutil.rmtree(config.output_dir, ignore_errors=True)
    Path(out).write_text(json.dumps(marks))


def sweep_measurements(spec_path: Path, trials: int, workdir: Path) -> tuple[list[dict], float, int]:
    from trial_breakdown import breakdown, run_sweep

    from sweeper.store import TrialStore

    spec, sweep_s = run_sweep(spec_path, trials, workdir)
    rows = breakdown(spec)
    store = TrialStore(spec.database_url())
    rounds = store.rounds(spec.name)
    by_key = {t.trial_key: t for t in store.trials(spec.name)}
    order = sorted(by_key.values(), key=lambda t: t.started_at)
    fresh = {t.trial_key for t in order[: spec.budget.max_concurrent]}
    for row in rows:
        trial = by_key[row["trial"]]
        first = rounds[row["trial"]][0]
        m = first.bookkeeping
        steps = max(1, round(m.get("examples_seen", 0) / trial.params.get("batch_size", 1)))
        to_first_report = (first.recorded_at - trial.started_at).total_seconds()
        in_round = sum(float(m.get(k, 0.0)) for k in ("time_train_s", "time_eval_s", "time_checkpoint_s",
                                                       "time_report_s"))
        row["ttfs"] = to_first_report - in_round + float(m.get("time_train_s", 0.0)) / steps
        row["fresh_actor"] = row["trial"] in fresh
    store.engine.dispose()
    return rows, sweep_s, spec.budget.max_concurrent


def render(rows: list[dict], sweep_s: float, probe: dict, args, concurrent: int) -> str:
    from trial_breakdown import PHASES

    total = sum(r["wall"] for r in rows)
    train = sum(r["training steps"] for r in rows)
    fresh = [r["ttfs"] for r in rows if r["fresh_actor"]]
    reused = [r["ttfs"] for r in rows if not r["fresh_actor"]]
    lines = [
        f"## Trial worker efficiency ({date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
        "CPU only, shared machine)",
        "",
        f"Command: `{args.command}`",
        "",
        f"A real sweep of {len(rows)} trials ({args.spec}, {concurrent} at a time, W&B off), wall {sweep_s:.0f} s; "
        f"{sum(r['rounds'] for r in rows)} rounds.",
        "",
        "| phase | share of trial wall time | median per trial (s) |",
        "|---|---|---|",
    ]
    for name in [*PHASES, "ray overhead"]:
        lines.append(f"| {name} | {sum(r[name] for r in rows) / total:.1%} | "
                     f"{statistics.median(r[name] for r in rows):.2f} |")
    lines += [
        "",
        f"- Share of trial wall time in training steps: **{train / total:.1%}** (median per trial "
        f"{statistics.median(r['training steps'] / r['wall'] for r in rows):.1%}).",
        f"- Time-to-first-step in the sweep (driver starts the trial -> first step done), median: fresh actor "
        f"{statistics.median(fresh) if fresh else float('nan'):.1f} s ({len(fresh)} trials), reused actor "
        f"{statistics.median(reused) if reused else float('nan'):.1f} s ({len(reused)} trials).",
        "",
        "Time-to-first-step without Ray (a fresh process running the token-tagging trainer, exact):",
        "",
        "| phase | s |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in probe.items()),
        "",
    ]
    return "\n".join(lines)


def smoke_spec(workdir: Path) -> Path:
    spec = yaml.safe_load((ROOT / "examples" / "restaurant8k-minilm.yaml").read_text())
    data = ROOT / "examples" / "data" / "restaurant8k-small"
    spec["model"] = {"path": "minilm-l6", "max_seq_length": 32}
    spec["data"] = {"format": "restaurant8k", "train": str(data / "train.json"), "holdout": str(data / "holdout.json"),
                    "test": str(data / "test.json")}
    spec["search_space"] = {"name": "smoke", "params": {"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2,
                                                                          "log": True}}}
    spec["budget"] = {"trials": 2, "max_concurrent": 1}  # one actor, started once and then reused
    spec["fixed"] = {"batch_size": 16, "num_epochs": 1, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
                     "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}
    path = workdir / "smoke.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--spec", default="examples/restaurant8k-minilm.yaml")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--smoke", action="store_true", help="CI setting: 2 one-epoch trials on restaurant8k-small, "
                                                              "one at a time")
    parser.add_argument("--first-step-probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_step_probe:
        out, data, seq = args.first_step_probe
        first_step_probe(out, data, int(seq))
        return 0
    args.command = " ".join([".venv/bin/python", "bench/trial_efficiency.py", *sys.argv[1:]])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_TMPDIR", f"/tmp/bte{os.getpid() % 100000}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-trial-eff-"))
    try:
        if args.smoke:
            args.trials = 2
            spec_path = smoke_spec(workdir)
            args.spec = "restaurant8k-small, one epoch"
            data, seq = ROOT / "examples" / "data" / "restaurant8k-small", 32
        else:
            spec_path = ROOT / args.spec
            raw = yaml.safe_load(spec_path.read_text())
            data = (spec_path.parent / raw["data"]["train"]).parent
            from sweeper.spec import load_spec

            seq = load_spec(spec_path).model.max_seq_length  # wherever the spec writes it
        rows, sweep_s, concurrent = sweep_measurements(spec_path, args.trials, workdir)
        out = workdir / "probe.json"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--first-step-probe", str(out), str(data),
                        str(seq)], check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        probe = json.loads(out.read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if "bte" in os.environ["RAY_TMPDIR"]:
            shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    text = render(rows, sweep_s, probe, args, concurrent)
    print(text)
    with open(args.results, "a") as fh:
        fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
