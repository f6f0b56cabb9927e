"""Does the replay's simulation decide what a real Ray Tune run decides? Issue 13 asks this to be checked on a few
seeds before the replay's numbers are trusted.

    .venv/bin/python bench/replay_tune.py --task restaurant8k-small --task banking77-10 --seeds 3 --trials 12 \
        --policies sweeper,tune_optuna,asha_random
    .venv/bin/python bench/replay_tune.py --smoke --concurrency 1 --json /tmp/replay_tune.json    # CI (~30 s)

Per policy and seed, the policy runs twice on one table, for `--trials` trials, `--concurrency` at a time:
- simulated: bench/replay.py's `simulate` with the policy `replay.make_policy` builds (compute as the clock);
- in Ray Tune: `tune.Tuner` with a function trainable that replays the snapped configuration's recorded curve, each
  round at its simulated time (`SimulatedClock`: `--seconds-per-epoch` a trial-epoch, a trial starting when the
  simulation starts it, so Tune's own delays do not pile up), and the policy's Tune objects (`tune_objects`):
  sweeper: what `sweeper.controller.run_sweep` builds (`StudySearcher` over `SweepSearch` on a SQLite store and
           study, `controller._scheduler`: Ray's ASHAScheduler), the rounds reported through sweeper's
           TuneReporter, with the worker's patience rule;
  tune_optuna: Ray's OptunaSearch(space, seed), no scheduler, each round's raw value reported;
  asha_random: OptunaSearch with Optuna's seeded RandomSampler and Ray's AsyncHyperBandScheduler (1 bracket).
  Each searcher under a `ConcurrencyLimiter`.
Both replay each configuration's first recorded seed. Compared: trial by trial, in the order they were started,
the configuration it ran and the round it ended at. What can still differ is the order of two events closer in
simulated time than Tune's own latency (a few hundredths of a second to a few tenths here).
Writes a JSON: per task and seed, whether every trial agreed, and the first one that did not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import replay  # noqa: E402

TIE_S = 0.01  # s
POLICIES = ("sweeper", "tune_optuna", "asha_random")
NUMBER = "replay_number"  # config entry: the trial's number in start order (Tune's trial ids are random)


def first_curve(curves: list) -> object:
    return curves[0]


def simulated(policy: str, table: replay.Table, spec, trials: int, seed: int) -> list[list[int]]:
    """[configuration id, last round] of each trial, in start order."""
    run = replay.simulate(replay.make_policy(policy, spec, seed), table, math.inf, spec.budget.max_concurrent, seed,
                          max_trials=trials, pick=first_curve)
    rounds: dict[int, int] = {}
    for _, _, _, trial, round_ in run["events"]:
        rounds[trial] = round_
    return [[config, rounds[number]] for number, config in enumerate(run["configs"])]


def replay_trial(config: dict, table: replay.Table, patience: tuple[int, float] | None, seconds_per_epoch: float,
                 folder: str, concurrency: int, metric: str) -> None:
    """A Tune function trainable: the snapped configuration's curve, one round at a time, each at its simulated
    time. With `patience` (sweeper) through sweeper's own TuneReporter (objective and holdout loss best so far, the
    round) and the worker's patience rule; without, each round's raw value, as the library policies are fed."""
    from sweeper.controller import TRIAL, TuneReporter
    from trainers.base import RoundRecord

    curve = first_curve(table.snap(config).curves)
    number = config[NUMBER] if NUMBER in config else int(config[TRIAL]["key"].lstrip("t"))
    clock = SimulatedClock(Path(folder), seconds_per_epoch)
    reporter = TuneReporter(metric, "max")
    worker_patience = replay.Patience(*patience) if patience else None
    started = reported = clock.start(number, concurrency)
    try:
        for i in range(len(curve.epoch)):
            if not clock.wait(started + float(curve.epoch[i]), number, reporter.stop_requested):
                return  # Tune stopped it (ASHA) after its last report
            loss, value = float(curve.loss[i]), float(curve.holdout[i])
            stop = worker_patience is not None and i < len(curve.epoch) - 1 and worker_patience.stop(loss)
            reported = started + float(curve.epoch[i])  # first: Tune ends a stopped trial inside its report
            if worker_patience is None:
                from ray import tune

                tune.report({"value": value, "objective": value, "round": i + 1})
            else:
                reporter.report(RoundRecord(i + 1, {metric: value, "eval_loss": loss}), None)
            if stop:
                return
    finally:
        clock.ended(number, reported)


class SimulatedClock:
    """The simulation's clock, in real time: simulated time t (trial-epochs) is `origin + t * seconds_per_epoch`,
    shared by every trial through files in `folder`. A trial starts when the simulation would start it, not when
    Tune gets round to it, so the time Tune takes to start a trial does not pile up over a sweep and reorder events.

    In simulated time the first `concurrency` trials start at 0, and trial k after them starts when the (k - c + 1)th
    trial ends (the one slot it takes). Ties go to the lower trial number, as in the simulation: each trial's
    events come TIE_S a number later."""

    def __init__(self, folder: Path, seconds_per_epoch: float):
        self.folder, self.seconds_per_epoch = folder, seconds_per_epoch

    def start(self, number: int, concurrency: int) -> float:
        if number == 0:
            self._write("origin", time.time())
        if number < concurrency:
            return 0.0
        ended = self._await(lambda: sorted(float(f.read_text()) for f in self.folder.glob("ended-*")),
                            lambda ends: len(ends) > number - concurrency)
        return ended[number - concurrency]

    def wait(self, simulated: float, number: int, stopped) -> bool:
        """Sleep until `simulated` (for trial `number`); False if `stopped()` first."""
        origin = self._await(lambda: self._read("origin"), lambda value: value is not None)
        due = origin + simulated * self.seconds_per_epoch + number * TIE_S
        while time.time() < due:
            if stopped():
                return False
            time.sleep(min(0.01, max(0.0, due - time.time())))
        return not stopped()

    def ended(self, number: int, simulated: float) -> None:
        self._write(f"ended-{number}", simulated)

    def _write(self, name: str, value: float) -> None:
        (self.folder / f".{name}.tmp").write_text(repr(value))  # not matched by ended-*
        (self.folder / f".{name}.tmp").rename(self.folder / name)  # whole, or not there

    def _read(self, name: str) -> float | None:
        path = self.folder / name
        return float(path.read_text()) if path.exists() else None

    @staticmethod
    def _await(read, ready):
        deadline = time.monotonic() + 120
        while not ready(value := read()):
            assert time.monotonic() < deadline, "the trials before this one never ended"
            time.sleep(0.01)
        return value


def numbered(searcher):
    """`searcher`, with each suggestion's number in start order in its config (NUMBER), for the clock."""
    from ray.tune.search import Searcher

    class Numbered(Searcher):
        def __init__(self):
            super().__init__(metric=searcher.metric, mode=searcher.mode)
            self.count = 0

        def suggest(self, trial_id):
            config = searcher.suggest(trial_id)
            if isinstance(config, dict):
                config, self.count = {**config, NUMBER: self.count}, self.count + 1
            return config

        def set_search_properties(self, metric, mode, config, **spec):
            return searcher.set_search_properties(metric, mode, config, **spec)

        def on_trial_result(self, trial_id, result):
            searcher.on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id, result=None, error=False):
            searcher.on_trial_complete(trial_id, result, error)

    return Numbered()


def tune_objects(policy: str, spec, seed: int, folder: Path) -> tuple:
    """(searcher, scheduler, worker patience) of `policy` in a real Tune run; the same objects as the simulation."""
    import optuna
    from ray.tune.schedulers import AsyncHyperBandScheduler
    from ray.tune.search.optuna import OptunaSearch

    from sweeper import controller
    from sweeper.search import SweepSearch
    from sweeper.store import TrialStore

    if policy == "sweeper":
        url = f"sqlite:///{folder}/sweeper.db"
        store = TrialStore(url)
        store.upgrade()
        store.engine.dispose()
        searcher = controller.StudySearcher(SweepSearch(spec, url), spec.objective.mode)
        return searcher, controller._scheduler(spec), (spec.early_stopping.patience, spec.early_stopping.min_delta)
    space = spec.space()
    if policy == "tune_optuna":  # replay.TuneOptunaPolicy's searcher
        return numbered(OptunaSearch(space=space.sample, metric="value", mode="max", seed=seed)), None, None
    if policy == "asha_random":  # replay's asha_random: Optuna's RandomSampler, Ray's AsyncHyperBand
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(space=space.sample, metric="objective", mode="max",
                                sampler=optuna.samplers.RandomSampler(seed=seed))
        return numbered(searcher), AsyncHyperBandScheduler(**replay.asha_settings(spec)), None
    raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")


def in_tune(policy: str, table: replay.Table, spec, seed: int, folder: Path, seconds_per_epoch: float) -> list:
    """The same, run by Ray Tune with the policy's searcher and scheduler."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from sweeper import controller

    searcher, scheduler, patience = tune_objects(policy, spec, seed, folder)
    tuner = tune.Tuner(
        tune.with_parameters(replay_trial, table=table, patience=patience, seconds_per_epoch=seconds_per_epoch,
                             folder=str(folder), concurrency=spec.budget.max_concurrent,
                             metric=spec.objective.metric),
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent),
                                    scheduler=scheduler, num_samples=spec.budget.trials, reuse_actors=True),
        run_config=tune.RunConfig(name="replay", storage_path=str(folder / "tune"), verbose=0),
    )
    results = tuner.fit()

    def number(config):
        return config[NUMBER] if NUMBER in config else int(config[controller.TRIAL]["key"].lstrip("t"))

    trials = sorted((number(r.config), table.snap(r.config).id, int(r.metrics["round"])) for r in results)
    return [[config, round_] for _, config, round_ in trials]


def check(policy: str, table: replay.Table, seeds: int, trials: int, concurrency: int,
          seconds_per_epoch: float) -> list[dict]:
    out = []
    for seed in range(seeds):
        spec = replay.replay_spec(table, trials, concurrency, evals_per_epoch=1, seed=seed)
        expected = simulated(policy, table, spec, trials, seed)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="replay-tune-") as folder:
            ran = in_tune(policy, table, spec, seed, Path(folder), seconds_per_epoch)
        differ = [i for i, (a, b) in enumerate(zip(expected, ran)) if a != b]
        out.append({"seed": seed, "same": expected == ran, "simulated": expected, "tune": ran,
                    "first_difference": differ[0] if differ else None,
                    "tune_seconds": round(time.perf_counter() - started, 1)})
        verdict = "same" if not differ else f"differs from trial {differ[0]}"
        print(f"{policy} seed {seed}: {verdict} ([config, last round]: simulated {expected}, Tune {ran})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", help="a table under bench/results/curves (repeatable)")
    parser.add_argument("--policies", default="sweeper", help=f"comma-separated, of {', '.join(POLICIES)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seconds-per-epoch", type=float, help="default 2 (--smoke: 1)")
    parser.add_argument("--address", help="a running Ray cluster (default: a private local one)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "replay_tune.json")
    parser.add_argument("--smoke", action="store_true", help="CI: a small synthetic table, 1 seed, 6 trials")
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    if unknown := sorted(set(policies) - set(POLICIES)):
        parser.error(f"--policies: unknown {', '.join(unknown)}; known: {', '.join(POLICIES)}")

    from sweeper import controller

    tables = {t: replay.CURVES / f"{t}.jsonl" for t in args.task or []}
    if args.smoke:
        path = Path(tempfile.mkdtemp(prefix="replay-tune-smoke-")) / "synthetic.jsonl"
        tables = {"synthetic": replay.write_synthetic_table(path, n_configs=24)}
        args.seeds, args.trials = 1, 6
    if not tables:
        parser.error("give --task or --smoke")
    args.seconds_per_epoch = args.seconds_per_epoch or (1.0 if args.smoke else 2.0)
    # The trainable is this module's: trial workers import it (and bench/replay.py) from bench/.
    controller.start_ray(args.address, {"PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT)])})
    report = {"command": " ".join(["python", "bench/replay_tune.py", *(sys.argv[1:] if argv is None else argv)]),
              "trials": args.trials, "concurrency": args.concurrency, "seconds_per_epoch": args.seconds_per_epoch,
              "tasks": {}}
    try:
        for task, path in tables.items():
            print(f"{task}:", flush=True)
            table = replay.Table.load(path, 1)
            report["tasks"][task] = {policy: check(policy, table, args.seeds, args.trials, args.concurrency,
                                                   args.seconds_per_epoch) for policy in policies}
    finally:
        controller.shutdown()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    runs = [run for policies in report["tasks"].values() for seeds in policies.values() for run in seeds]
    agree, total = sum(run["same"] for run in runs), len(runs)
    print(f"the simulation and Tune took the same decisions on {agree} of {total} seeds; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
