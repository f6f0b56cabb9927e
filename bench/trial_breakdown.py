"""Where a quickstart trial's wall time goes: model load, tokenization, training steps, evaluation,
checkpointing, and Ray overhead (everything else: actor start, imports, scheduling, result handling).

    .venv/bin/python bench/trial_breakdown.py [--trials 8] [--spec examples/restaurant8k-minilm.yaml]

Runs a real sweep in a temporary folder and appends a table to bench/RESULTS.md. Per-trial times
come from the trainer's own timers (reported each round) and the driver's start / finish timestamps.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PHASES = {"model load": "time_load_s", "tokenization": "time_tokenize_s", "training steps": "time_train_s",
          "evaluation": "time_eval_s", "checkpointing": "time_checkpoint_s", "report + checkpoint persist": "time_report_s"}


def run_sweep(spec_path: Path, trials: int, workdir: Path):
    from sweeper import sweeps
    from sweeper.spec import parse_spec

    raw = yaml.safe_load(spec_path.read_text())
    raw.update(name="bench-breakdown", storage={"root": str(workdir / "state")}, tracking={"mode": "none"})
    raw["budget"] = {**raw["budget"], "trials": trials}
    spec = parse_spec(raw, spec_path.resolve().parent)
    started = time.perf_counter()
    sweeps.run(spec)
    return spec, time.perf_counter() - started


def breakdown(spec) -> list[dict]:
    from sweeper.store import TrialStore

    store = TrialStore(spec.database_url())
    rounds = store.rounds(spec.name)
    rows = []
    for trial in store.trials(spec.name):
        last = rounds[trial.trial_key][-1].bookkeeping
        wall = (trial.finished_at - trial.started_at).total_seconds()
        phases = {name: float(last.get(key, 0.0)) for name, key in PHASES.items()}
        rows.append({"trial": trial.trial_key, "wall": wall, "rounds": trial.rounds, **phases,
                     "ray overhead": wall - sum(phases.values())})
    return rows


def render(rows: list[dict], sweep_s: float, args) -> str:
    total = sum(r["wall"] for r in rows)
    names = [*PHASES, "ray overhead"]
    lines = [
        f"## Trial breakdown ({date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, CPU only)",
        "",
        f"Command: `.venv/bin/python bench/trial_breakdown.py --trials {args.trials} --spec {args.spec}`",
        f"Sweep wall time {sweep_s:.1f} s for {len(rows)} trials ({sum(r['rounds'] for r in rows)} rounds); "
        f"trial wall times summed: {total:.1f} s (2 trials run at once).",
        "",
        "| phase | share of trial wall time | median per trial (s) |",
        "|---|---|---|",
    ]
    for name in names:
        share = sum(r[name] for r in rows) / total if total else 0.0
        lines.append(f"| {name} | {share:.1%} | {statistics.median(r[name] for r in rows):.2f} |")
    overhead = statistics.median(r["ray overhead"] + r["model load"] + r["tokenization"] for r in rows)
    train = statistics.median(r["training steps"] for r in rows)
    verdict = "met" if overhead < train else "NOT met"
    lines += ["", f"Per-trial overhead (Ray + model load + tokenization), median: {overhead:.2f} s; training steps, "
              f"median: {train:.2f} s. Goal (overhead below training time): {verdict}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--spec", default="examples/restaurant8k-minilm.yaml")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="sweeper-bench-") as tmp:
        spec, sweep_s = run_sweep(ROOT / args.spec, args.trials, Path(tmp))
        text = render(breakdown(spec), sweep_s, args)
    print(text)
    with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
        fh.write("\n" + text)


if __name__ == "__main__":
    sys.exit(main())
