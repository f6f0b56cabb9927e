"""How well the budget probe predicts a round: sweeper.budget's estimate against real MiniLM trials.

    nice -n 19 .venv/bin/python bench/budget_probe.py                       # both shipped tasks, 4 batch sizes
    .venv/bin/python bench/budget_probe.py --task banking77 --batches 8 64 --results /tmp/r.md

For each task: the probe (sweeper.budget.run_probe: a few steps of the smallest and largest batch size of
lora-default and one holdout evaluation each, as `sweeper validate --probe` runs it, in this process) fits the cost
model; then a real trial of each batch size (the same trainer, the probe's other hyperparameters) trains two rounds
of the spec's schedule, and the seconds from its start to its first round, and of its second round (a round in a
warm process: steps, evaluation, checkpoint), are compared with what the model predicted. Appends a section to
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = {"restaurant8k": "restaurant8k-minilm.yaml", "banking77": "banking77-minilm.yaml"}


class Timed:
    """A reporter that notes when each round came."""

    def __init__(self):
        self.started, self.at = time.perf_counter(), []

    def report(self, record, checkpoint_dir):
        self.at.append(time.perf_counter() - self.started)

    def resume_from(self):
        return None

    def stop_requested(self):
        return False


def task_spec(task: str, evals_per_epoch: int):
    from sweeper.spec import parse_spec

    path = ROOT / "examples" / TASKS[task]
    raw = yaml.safe_load(path.read_text())
    raw.update(search_space="lora-default", tracking={"mode": "none"}, resources={"cpus": 1, "torch_threads": 1},
               scheduler={**raw["scheduler"], "evals_per_epoch": evals_per_epoch})
    return parse_spec(raw, path.parent, str(path))


def measure(task: str, batches: list[int], evals_per_epoch: int) -> dict:
    from sweeper.budget import CostModel, Plan, probe_params, probe_shapes, run_probe
    from sweeper.trial_config import complete, template
    from trainers import trainer_for
    from trainers.models import resolve_model

    spec = task_spec(task, evals_per_epoch)
    job = template(spec, resolve_model(spec.model.path), torch_threads=1)
    started = time.perf_counter()
    measured = run_probe(job, probe_shapes(spec))
    probe_s = time.perf_counter() - started
    model = CostModel.fit(measured, evals_per_epoch)
    plan = Plan.make(spec, model)
    rows = []
    for batch in batches:
        with tempfile.TemporaryDirectory(prefix="budget-probe-") as out:
            reporter = Timed()
            trainer_for(spec.task)(complete(job, probe_params(spec, batch), out, max_rounds=2), reporter)
        first, second = reporter.at[0], reporter.at[1] - reporter.at[0]
        rows.append({"batch_size": batch, "round_steps": model.round_steps(batch),
                     "first_round_predicted_s": model.first_round_s(batch), "first_round_measured_s": first,
                     "round_predicted_s": model.round_s(batch), "round_measured_s": second})
    return {"task": task, "probe_s": probe_s, "model": model.to_dict(), "plan": plan.lines(), "shapes": rows}


def section(results: list[dict], command: str) -> str:
    lines = [f"## Budget probe accuracy (issue 13, part 3; {date.today()}, {platform.machine()}, "
             f"{os.cpu_count()} cores, CPU only, shared machine)", "",
             f"Command: `{command}`", "",
             "Predicted (sweeper.budget's cost model, from the probe) against measured seconds of real MiniLM "
             "trials in the same process: to the first round (start-up, the round's steps, one holdout evaluation, "
             "its checkpoint) and of the second round. Error = predicted / measured - 1.", ""]
    for result in results:
        model = result["model"]
        lines += [f"**{result['task']}** ({model['train_rows']} training rows, {model['evals_per_epoch']} rounds an "
                  f"epoch): probe {result['probe_s']:.1f} s; fitted step {model['step_fixed_s']:.3f} s + "
                  f"{model['step_example_s'] * 1000:.2f} ms an example, evaluation {model['eval_s']:.2f} s, "
                  f"start-up {model['startup_s']:.2f} s", "",
                  "| batch | steps a round | first round predicted s | measured s | error | round predicted s "
                  "| measured s | error |", "|---|---|---|---|---|---|---|---|"]
        for r in result["shapes"]:
            first_err = r["first_round_predicted_s"] / r["first_round_measured_s"] - 1
            round_err = r["round_predicted_s"] / r["round_measured_s"] - 1
            lines.append(f"| {r['batch_size']} | {r['round_steps']} | {r['first_round_predicted_s']:.1f} | "
                         f"{r['first_round_measured_s']:.1f} | {first_err:+.0%} | {r['round_predicted_s']:.1f} | "
                         f"{r['round_measured_s']:.1f} | {round_err:+.0%} |")
        lines += ["", "The plan it printed (the example spec's budget, lora-default):", "", "```",
                  *result["plan"], "```", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", action="append", choices=sorted(TASKS), help="repeatable; default: both")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--evals-per-epoch", type=int, default=4)
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    results = [measure(task, args.batches, args.evals_per_epoch) for task in args.task or sorted(TASKS)]
    text = section(results, "nice -n 19 .venv/bin/python " + " ".join(["bench/budget_probe.py", *sys.argv[1:]]))
    print(text)
    with open(args.results, "a") as handle:
        handle.write("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
