"""Record real learning curves once, for the replay benchmark (bench/replay.py).

    nice -n 19 .venv/bin/python bench/record_curves.py --task restaurant8k-small --minutes 40
    nice -n 19 .venv/bin/python bench/record_curves.py --task banking77-10 --minutes 40
    .venv/bin/python bench/record_curves.py --task restaurant8k-small --smoke --out /tmp/c.jsonl   # CI (seconds)

Each configuration of a grid over the `lora-default` space is trained by the task's real trainer
(`trainers.<task>.train`, MiniLM + LoRA, no Ray, one torch thread) to its own end: 2 holdout evaluations per epoch,
early stopping off (patience never reached), so the whole curve is known. Every round records the holdout objective
and loss, the test objective and loss (the task's own `predict` + `score` on the test split, from that round's
checkpoint: at EVERY round, for both tasks), and its compute: cumulative optimizer steps, examples, input tokens,
training seconds and epochs.

The grid: learning rate on 8 log-spaced values over [1e-5, 1e-2] x batch size {8, 16, 32, 64} x epochs 1-6 (192
cells, all of them when time allows); each cell's other parameters (schedule, warmup, weight decay, LoRA rank, alpha,
dropout) are drawn once, with a fixed seed, from their own grid values. The cells are visited in a fixed random
order, so a recording cut short by `--minutes` is still a uniform sample of the grid. Every 5th configuration is
trained a second time with another seed, right after its first (how the noise gets into the replay).

Output: JSON Lines, appended one line per (configuration, seed) as each finishes, so a killed recording continues
where it stopped when run again. The first line is the header: the command, package versions, data files and
their SHA-256, the grid, and the column names of the round rows.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CURVES = ROOT / "bench" / "results" / "curves"
TASKS = {
    "restaurant8k-small": dict(task="token_tagging", format="restaurant8k", folder="examples/data/restaurant8k-small",
                               ext="json", metric="f1_micro", max_seq_length=32),
    # 10 of banking77's 77 intents (the first 10 labels in sorted order), all their rows: 12 train, 3 holdout and
    # 5 test per label; written by `banking_subset` under bench/results/curves/data/. (20 labels cost ~80 s per
    # 4-epoch configuration on this shared machine under `nice`: too few configurations in the time.)
    "banking77-10": dict(task="sequence_classification", format="csv", folder="bench/results/curves/data/banking77-10",
                         ext="csv", metric="f1_macro", max_seq_length=64, source="examples/data/banking77", labels=10),
}
SPACE = "lora-default"
EVALS_PER_EPOCH = 2
NO_EARLY_STOPPING = 1_000_000  # patience in rounds: never reached
LEARNING_RATES = [float(f"{1e-5 * 10 ** (3 * i / 7):.3g}") for i in range(8)]  # 1e-5 .. 1e-2, log-spaced
BATCH_SIZES = [8, 16, 32, 64]
EPOCHS = [1, 2, 3, 4, 5, 6]
OTHER_AXES = {  # drawn once per cell, from these values (each inside lora-default's range)
    "lr_scheduler_type": ["linear", "cosine", "constant_with_warmup", "constant"],
    "warmup_ratio": [0.0, 0.1],  # 0.0 whatever is drawn when the schedule has no warmup (lora-default's `otherwise`)
    "weight_decay": [0.0, 0.05, 0.1],
    "lora_r": [4, 8, 16, 32],
    "lora_alpha": [8, 16, 32, 64],
    "lora_dropout": [0.0, 0.1, 0.2],
}
NO_WARMUP = {"constant"}
SECOND_SEED_EVERY = 5
COLUMNS = ["round", "epoch", "steps", "examples", "tokens", "train_s", "holdout", "eval_loss", "test", "test_loss"]


def grid(seed: int = 0) -> list[dict]:
    """Every (lr, batch, epochs) cell with its drawn other parameters, in a fixed random order."""
    rng = random.Random(seed)
    cells = [(lr, b, e) for lr in LEARNING_RATES for b in BATCH_SIZES for e in EPOCHS]
    rng.shuffle(cells)
    configs = []
    for i, (lr, batch, epochs) in enumerate(cells):
        other = {name: rng.choice(values) for name, values in OTHER_AXES.items()}
        if other["lr_scheduler_type"] in NO_WARMUP:
            other["warmup_ratio"] = 0.0
        configs.append({"id": i, "learning_rate": lr, "batch_size": batch, "num_epochs": epochs, **other})
    return configs


def jobs(configs: list[dict]) -> list[tuple[dict, int]]:
    """(config, seed): seed 1 for each, seed 2 right after for every SECOND_SEED_EVERY-th."""
    out = []
    for i, config in enumerate(configs):
        out.append((config, 1))
        if i % SECOND_SEED_EVERY == 0:
            out.append((config, 2))
    return out


def todo_jobs(configs: list[dict], done: set[tuple[int, int]], shard: str = "0/1",
              ids: set[int] | None = None) -> list[tuple[dict, int]]:
    """The jobs not yet `done` (of the configurations `ids` only, with the seeds the grid gives them), and of those
    every N-th from the K-th (`shard` "K/N"): N shards started together from the same table split its remaining jobs
    between them."""
    k, n = (int(x) for x in shard.split("/"))
    if not 0 <= k < n:
        raise SystemExit(f"--shard {shard}: K must be 0 .. N-1")
    return [(c, s) for c, s in jobs(configs) if (c["id"], s) not in done and (ids is None or c["id"] in ids)][k::n]


def merge(table: Path, shards: list[Path]) -> int:
    """Append the shards' curves (each recorded with `--out SHARD --table TABLE --shard K/N`) to the table, once each;
    a shard recorded on other data is refused. Returns the number of curves added."""
    data = table_rows(table)[0]["data"]
    added = 0
    for shard in shards:
        header, *curves = table_rows(shard)
        if header["data"] != data:
            raise SystemExit(f"{shard}: recorded on other data than {table}; not merged")
        done = done_jobs(table)
        new = [json.dumps(row, separators=(",", ":")) + "\n" for row in curves if (row["id"], row["seed"]) not in done]
        with open(table, "a") as f:
            f.writelines(new)
        added += len(new)
    return added


def banking_subset(spec: dict) -> None:
    """Write the banking77 subset (idempotent: same rows every time)."""
    target = ROOT / spec["folder"]
    if (target / "test.csv").is_file():
        return
    source = ROOT / spec["source"]
    with open(source / "train.csv", newline="") as f:
        labels = sorted({row["category"] for row in csv.DictReader(f)})[: spec["labels"]]
    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "holdout", "test"):
        with open(source / f"{split}.csv", newline="") as f:
            rows = [row for row in csv.DictReader(f) if row["category"] in labels]
        with open(target / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "category"])
            writer.writeheader()
            writer.writerows(rows)


def data_files(spec: dict) -> dict:
    folder = ROOT / spec["folder"]
    return {split: str(folder / f"{split}.{spec['ext']}") for split in ("train", "holdout", "test")}


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def header(task_key: str, spec: dict, argv: list[str]) -> dict:
    from sweeper.export import package_versions

    files = data_files(spec)
    return {
        "kind": "header", "task_key": task_key, "task": spec["task"], "metric": spec["metric"], "mode": "max",
        "model": "minilm-l6", "space": SPACE, "evals_per_epoch": EVALS_PER_EPOCH,
        "max_seq_length": spec["max_seq_length"], "torch_threads": 1,
        "command": " ".join(["python", "bench/record_curves.py", *argv]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "data": {split: {"path": str(Path(p).relative_to(ROOT)), "sha256": sha256(p)} for split, p in files.items()},
        "grid": {"learning_rate": LEARNING_RATES, "batch_size": BATCH_SIZES, "num_epochs": EPOCHS, **OTHER_AXES},
        "columns": COLUMNS,
        "test_at": "every round (the round's checkpoint, the task's predict + score on the whole test split)",
    }


def trial_config(spec: dict, model_path: str, hparams: dict, seed: int, output_dir: str, files: dict):
    from trainers.base import TrialConfig

    return TrialConfig.model_validate(dict(
        task=spec["task"], model_path=model_path,
        data={"format": spec["format"], "train": files["train"], "holdout": files["holdout"]},
        hparams=hparams, seed=seed, output_dir=output_dir, max_seq_length=spec["max_seq_length"],
        evals_per_epoch=EVALS_PER_EPOCH, patience=NO_EARLY_STOPPING, min_delta=0.0, torch_threads=1))


class CurveReporter:
    """A trainer Reporter that scores each round's checkpoint on the test split as it arrives."""

    def __init__(self, module, config, test_examples, metric: str):
        self.module, self.config, self.test_examples, self.metric = module, config, test_examples, metric
        self.rows: list[list] = []
        self.test_s = 0.0

    def report(self, record, checkpoint_dir):
        started = time.perf_counter()
        test = self.module.score(self.module.predict(self.config, checkpoint_dir, self.test_examples))
        self.test_s += time.perf_counter() - started
        b, m = record.bookkeeping, record.metrics
        self.rows.append([record.round, b["epoch"], b["examples_seen"] // self.config.hparams.batch_size,
                          b["examples_seen"], b["tokens_seen"], round(b["time_train_s"], 3),
                          _num(m.get(self.metric)), _num(m.get("eval_loss")), _num(test.get(self.metric)),
                          _num(test.get("eval_loss"))])

    def resume_from(self):
        return None

    def stop_requested(self):
        return False


def _num(value) -> float | None:
    return round(float(value), 5) if value is not None and math.isfinite(float(value)) else None


def record_one(spec: dict, model_path: str, config: dict, seed: int, workdir: Path, test_examples) -> dict:
    from trainers import task_module

    module = task_module(spec["task"])
    hparams = {k: v for k, v in config.items() if k != "id"}
    out = tempfile.mkdtemp(prefix="curve-", dir=workdir)
    try:
        trial = trial_config(spec, model_path, hparams, seed, out, data_files(spec))
        reporter = CurveReporter(module, trial, test_examples, spec["metric"])
        started = time.perf_counter()
        outcome = module.train(trial, reporter)
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"kind": "curve", "id": config["id"], "seed": seed, "params": hparams, "stop": outcome.stop_reason,
            "wall_s": round(wall, 2), "test_s": round(reporter.test_s, 2), "rounds": reporter.rows}


def table_rows(path: Path) -> list[dict]:
    """A table's lines, parsed: its header, then one row per recorded (configuration, seed). A line cut by a killed
    recording is left out (that job runs again)."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def done_jobs(path: Path) -> set[tuple[int, int]]:
    if not path.is_file():
        return set()
    return {(row["id"], row["seed"]) for row in table_rows(path) if row.get("kind") == "curve"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--minutes", type=float, default=38.0, help="start no configuration after this long")
    parser.add_argument("--configs", type=int, default=None, help="at most this many grid configurations")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/curves/<task>.jsonl")
    parser.add_argument("--table", type=Path, default=None, help="jobs already in this table count as done (with --out)")
    parser.add_argument("--smoke", action="store_true", help="2 configurations, 1 epoch, smallest batch cost")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="record only the K-th of every N jobs still to do (N processes, one core each, each with "
                             "its own --out; append their curve lines to the table afterwards)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="SHARD", help="append these shards' curves to the table")
    parser.add_argument("--ids", type=lambda s: {int(x) for x in s.split(",")}, default=None,
                        help="only these configurations' jobs, with their seeds (e.g. to train a table's configurations "
                             "again with today's trainer, into another --out)")
    args = parser.parse_args(argv)
    if args.merge:
        out = args.out or CURVES / f"{args.task}.jsonl"
        print(f"{merge(out, args.merge)} curves added to {out}")
        return 0

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sweeper.datasets import read_examples
    from trainers.models import resolve_model

    spec = TASKS[args.task]
    if "source" in spec:
        banking_subset(spec)
    out = args.out or CURVES / f"{args.task}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    configs = grid()
    if args.smoke:
        configs = [c for c in configs if c["num_epochs"] == 1 and c["batch_size"] == 64][:2]
    if args.configs is not None:
        configs = configs[: args.configs]
    done = done_jobs(out) | (done_jobs(args.table) if args.table else set())
    todo = todo_jobs(configs, done, args.shard, args.ids)
    if not out.is_file() or not out.read_text().strip():
        out.write_text(json.dumps(header(args.task, spec, argv), separators=(",", ":")) + "\n")
    model_path = resolve_model("minilm-l6")
    test_examples = read_examples(data_files(spec)["test"], spec["format"])
    workdir = Path(tempfile.mkdtemp(prefix="record-curves-"))
    started = time.monotonic()
    try:
        for n, (config, seed) in enumerate(todo):
            if time.monotonic() - started > args.minutes * 60:
                print(f"time is up after {n} of {len(todo)} jobs; run again to continue", flush=True)
                break
            row = record_one(spec, model_path, config, seed, workdir, test_examples)
            with open(out, "a") as f:  # one whole line per job: a kill loses at most the job in flight
                f.write(json.dumps(row, separators=(",", ":")) + "\n")
            best = max((r[6] for r in row["rounds"] if r[6] is not None), default=None)
            print(f"[{time.monotonic() - started:7.1f}s] id={config['id']} seed={seed} lr={config['learning_rate']} "
                  f"bs={config['batch_size']} ep={config['num_epochs']} best={best} wall={row['wall_s']}s "
                  f"test={row['test_s']}s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
