"""Controller overhead: trials per second of sweeper's controller against raw Ray Tune and a bare Optuna loop,
with a trainable that does almost nothing.

    .venv/bin/python bench/controller_overhead.py --trials 200 --repeats 3     # the full setting
    .venv/bin/python bench/controller_overhead.py --smoke --results /tmp/r.md  # CI smoke

Every variant runs the same near-empty trial: it reports `--rounds` rounds of a made-up metric (a smooth
function of the learning rate that improves per round) through sweeper's own `TuneReporter`, with no
checkpoint. The search space is `lora-quick`, the TPE sampler is sweeper's (seeded, constant liar, its
n_startup rule), ASHA is sweeper's (`controller._scheduler`), 2 trials at a time (`max_concurrent: 2`, 1 CPU
each), actors reused. What differs:

  bare optuna       `study.optimize` in one process: same sampler, in-memory study, SuccessiveHalvingPruner
                    (min_resource 1, reduction factor 2) standing in for ASHA; no Ray.
  raw tune          `tune.Tuner` + OptunaSearch (in-memory study) in a ConcurrencyLimiter + the same ASHA.
  raw tune + RDB    as raw tune, with the Optuna study in SQLite through Optuna's plain `RDBStorage` (SQLite's
                    default rollback journal: a full fsync per commit), to attribute.
  ... WAL           (`--attribution`) the same through sweeper's `StudyStorage`: WAL + synchronous=NORMAL.
  sweeper           `sweeper.controller.run_sweep` itself, with only `controller._trainable` swapped for the
                    near-empty trial: the Optuna study in the store's SQLite database, `StoreCallback` writing
                    every trial start, round and end to the SQLite trial store, `ProgressCallback`, the
                    FailureConfig and CheckpointConfig it builds; W&B off.

Ray is started once (`controller.start_ray`) and shared by the Ray variants, so ray.init is not in any
timing; the timed span is `Tuner(...).fit()` (sweeper: `run_sweep`, which builds the Tuner and fits it).
Variants are interleaved across repeats (the machine is shared); the median of the repeats is reported.
sweeper's fixed per-sweep work before Ray (`sweeps.run`: data audit, store migration, sweep row) is timed
once separately.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VARIANTS = ("bare optuna", "raw tune", "raw tune + RDB study", "sweeper")
WAL_VARIANT = "raw tune + RDB study, SQLite WAL + synchronous=NORMAL (sweeper's StudyStorage)"


def fake_trial(params: dict, job: dict) -> None:
    """The near-empty trainable: `rounds` reports of a made-up holdout metric, no training, no checkpoint."""
    from sweeper.controller import TuneReporter
    from trainers.base import RoundRecord

    reporter = TuneReporter(job["metric"], job["mode"])
    for round_ in range(1, job["rounds"] + 1):
        f1 = fake_metric(params, round_)
        bookkeeping = {"epoch": float(round_), "examples_seen": 400 * round_, "tokens_seen": 9000 * round_,
                       "device": "cpu", "stop_reason": "completed" if round_ == job["rounds"] else ""}
        reporter.report(RoundRecord(round_, {"eval_loss": 1.0 - f1, "f1_micro": f1}, bookkeeping), None)


def fake_metric(params: dict, round_: int) -> float:
    distance = abs(math.log10(params["learning_rate"]) - math.log10(3e-3)) / 3
    return max(0.0, min(1.0, 0.6 - distance + 0.05 * round_ + 0.01 * (params["lora_r"] == 16)))


def make_spec(trials: int, workdir: Path, name: str):
    import yaml

    from sweeper.spec import parse_spec

    raw = yaml.safe_load((ROOT / "examples" / "restaurant8k-minilm.yaml").read_text())
    raw.update(name=name, storage={"root": str(workdir / name)}, tracking={"mode": "none"})
    raw["budget"] = {"trials": trials, "max_concurrent": 2, "max_failures": 0}
    return parse_spec(raw, ROOT / "examples")


def job_for(spec, rounds: int) -> dict:
    return {"metric": spec.objective.metric, "mode": spec.objective.mode, "rounds": rounds}


def run_bare_optuna(spec, rounds: int, workdir: Path) -> float:
    import optuna

    startup = max(2, min(10, spec.budget.trials // 3))
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup, constant_liar=True)
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    space = spec.space()

    def objective(trial):
        params = {**(space.sample(trial) or {}), **trial.params}
        best = -math.inf
        for round_ in range(1, rounds + 1):
            best = max(best, fake_metric(params, round_))
            trial.report(best, round_)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    started = time.perf_counter()
    study.optimize(objective, n_trials=spec.budget.trials)
    return time.perf_counter() - started


def run_raw_tune(spec, rounds: int, workdir: Path, rdb_url: str | None = None, wal: bool = False) -> float:
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from sweeper import controller
    from sweeper.study import StudyStorage

    startup = max(2, min(10, spec.budget.trials // 3))
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup, constant_liar=True)
    storage = None
    if rdb_url:  # attribution: Optuna's own storage in SQLite's default journal, or sweeper's (WAL)
        storage = StudyStorage(rdb_url) if wal else optuna.storages.RDBStorage(rdb_url)
    searcher = OptunaSearch(space=spec.space().sample, metric="objective", mode=spec.objective.mode, sampler=sampler,
                            study_name=spec.name, storage=storage)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(fake_trial, job=job_for(spec, rounds)), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent),
                                    scheduler=controller._scheduler(spec), num_samples=spec.budget.trials,
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=spec.name, storage_path=str(workdir / "raw-tune"), verbose=0),
    )
    started = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - started


def run_sweeper(spec, rounds: int, workdir: Path) -> tuple[float, dict]:
    from ray import tune

    from sweeper import controller, sweeps

    layout = sweeps.Layout(spec)
    store = sweeps.open_store(spec)
    store.open_sweep(spec.name, sweeps.stored_spec(spec), spec.fingerprint(), spec.objective.metric,
                     spec.objective.mode)
    original = controller._trainable

    def near_empty(spec_, job):
        resources = {"cpu": spec_.resources.cpus, "gpu": spec_.resources.gpus}
        return tune.with_resources(tune.with_parameters(fake_trial, job={**job, "rounds": rounds}), resources)

    controller._trainable = near_empty
    try:
        started = time.perf_counter()
        controller.run_sweep(spec, spec.database_url(), layout.tune_path, layout.sweep_dir, "unused",
                             tracking_mode="disabled")
        elapsed = time.perf_counter() - started
    finally:
        controller._trainable = original
    trials = store.trials(spec.name)
    stored = {"trials": len(trials), "rounds": sum(t.rounds for t in trials),
              "unfinished": sum(t.status == "running" for t in trials)}
    store.engine.dispose()
    return elapsed, stored


def sweeper_setup_s(workdir: Path) -> float:
    """The fixed work `sweeps.run` does before Ray: data audit, store migration, the sweep's row."""
    from sweeper import sweeps
    from sweeper.audit import audit

    spec = make_spec(10, workdir, "setup-probe")
    started = time.perf_counter()
    audit(spec, frozenset())
    store = sweeps.open_store(spec)
    store.open_sweep(spec.name, sweeps.stored_spec(spec), spec.fingerprint(), spec.objective.metric,
                     spec.objective.mode)
    elapsed = time.perf_counter() - started
    store.engine.dispose()
    return elapsed


def render(rows: dict[str, list[float]], args, extra: dict) -> str:
    n = args.trials
    median = {v: statistics.median(times) for v, times in rows.items()}
    raw = median["raw tune"]
    lines = [
        f"## Controller overhead ({date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, CPU only, "
        "shared machine)",
        "",
        f"Command: `{args.command}`",
        "",
        f"{n} trials of a near-empty trainable ({args.rounds} reported rounds each, no checkpoint), `lora-quick` "
        f"space, TPE + ASHA, 2 trials at a time; median of {args.repeats} interleaved repeats. Ray started once "
        "beforehand (not timed).",
        "",
        "| variant | wall s (median) | all repeats (s) | trials / s | vs raw Ray Tune |",
        "|---|---|---|---|---|",
    ]
    for v in rows:
        if not rows[v]:
            continue
        lines.append(f"| {v} | {median[v]:.1f} | {', '.join(f'{t:.1f}' for t in rows[v])} | {n / median[v]:.2f} | "
                     f"{raw / median[v]:.2f}x |")
    ratio = median["sweeper"] / raw
    verdict = "met" if ratio <= 1.10 else "NOT met"
    lines += [
        "",
        f"- sweeper's trials/s is {1 / ratio:.0%} of raw Ray Tune's ({(ratio - 1):+.0%} wall time). Goal (within 10% of "
        f"raw Ray Tune): **{verdict}**.",
        f"- sweeper's store after a run: {extra['stored']['trials']} trials, {extra['stored']['rounds']} rounds recorded, "
        f"{extra['stored']['unfinished']} left `running`.",
        f"- sweeper's fixed work before Ray (`sweeps.run`: data audit, store migration, sweep row), once per sweep: "
        f"{extra['setup_s']:.2f} s; `ray.init` (local): {extra['ray_init_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--smoke", action="store_true", help="CI setting: 4 trials, 1 repeat, no RDB-only variant")
    parser.add_argument("--attribution", action="store_true",
                        help=f"also run '{WAL_VARIANT}' (where sweeper's overhead comes from)")
    args = parser.parse_args()
    args.command = " ".join([".venv/bin/python", "bench/controller_overhead.py", *sys.argv[1:]])
    if args.smoke:
        args.trials, args.repeats = 4, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_TMPDIR", f"/tmp/bco{os.getpid() % 100000}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    from sweeper import controller

    started = time.perf_counter()
    controller.start_ray(None, {})
    ray_init_s = time.perf_counter() - started
    variants = VARIANTS + ((WAL_VARIANT,) if args.attribution else ())
    if args.smoke:  # the attribution variant is not needed to check that the script works
        variants = tuple(v for v in variants if v != "raw tune + RDB study")
    rows: dict[str, list[float]] = {v: [] for v in variants}
    extra: dict = {"ray_init_s": ray_init_s}
    try:
        extra["setup_s"] = sweeper_setup_s(workdir)
        for rep in range(args.repeats):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for variant in order:
                spec = make_spec(args.trials, workdir, f"ovh-{rep}-{variants.index(variant)}")
                if variant == "bare optuna":
                    elapsed = run_bare_optuna(spec, args.rounds, workdir)
                elif variant == "raw tune":
                    elapsed = run_raw_tune(spec, args.rounds, workdir)
                elif variant in ("raw tune + RDB study", WAL_VARIANT):
                    Path(spec.storage.root).mkdir(parents=True, exist_ok=True)
                    elapsed = run_raw_tune(spec, args.rounds, workdir, spec.database_url(), wal=variant == WAL_VARIANT)
                else:
                    elapsed, extra["stored"] = run_sweeper(spec, args.rounds, workdir)
                rows[variant].append(elapsed)
                print(f"[controller_overhead] repeat {rep} {variant}: {elapsed:.1f} s", flush=True)
    finally:
        controller.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
        if "bco" in os.environ["RAY_TMPDIR"]:  # only the private Ray folder this script made
            shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    text = render(rows, args, extra)
    print(text)
    with open(args.results, "a") as fh:
        fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
