"""Replay search policies on recorded learning curves, in simulated time, over hundreds of seeds.

    .venv/bin/python bench/replay.py --task restaurant8k-small --task banking77-10 --seeds 100 --budget 100 \
        --with-variants --check-product 3
    .venv/bin/python bench/replay.py --smoke --json /tmp/replay.json                          # CI (seconds)

The table (bench/results/curves/<task>.jsonl, made by bench/record_curves.py) holds every round of a set of
configurations trained to their end: holdout objective and loss, test objective, compute. A policy proposes a
configuration; it is snapped to the nearest recorded one (log learning rate, log batch size and epochs first, then
the other parameters) and, instead of training, that configuration's curve is fed back round by round (when it was
recorded with two seeds, one of them at random). `--concurrency` trials run at once (the spec's
`budget.max_concurrent`), in an event queue whose clock is compute: a round costs the epochs it trained (2 holdout
evaluations per epoch in the table; `--evals-per-epoch 1` replays only the epoch-end rounds). Compute is counted
as bench/search_efficiency.py counts it: trial-epochs, the epochs every trial had reported, summed; a run stops once
it reaches `--budget`. `--eval-cost measured` also charges each round its holdout evaluation and checkpoint, in epochs
of training, as the table's recording timed them (measured_eval_cost); the default, 0, leaves rounds free.

Policies, each with the objects the product or the library builds (no copies):
  random       Optuna RandomSampler over the space, no early stopping.
  grid         bench/search_efficiency.py's grid rule over the space (learning rate 4 log levels x batch sizes x
               epochs {low, high} x schedules, the rest at mid-range or middle choice), in a seeded random order.
  tune_optuna  plain Ray Tune: ray.tune.search.optuna.OptunaSearch(space, seed) (Optuna's default TPE), fed each
               round and told the last one, no scheduler.
  hf_median    Trainer.hyperparameter_search(backend="optuna"): optuna.create_study with a seeded TPESampler and
               Optuna's default MedianPruner, `trial.report` + `should_prune` at each evaluation, the last value told.
  asha_random  RandomSampler + Ray's ASHAScheduler (the spec's grace period and reduction factor).
  hyperband    RandomSampler + Ray's AsyncHyperBandScheduler with 3 brackets (asynchronous Hyperband).
  bohb         Optuna's default TPE + the same 3-bracket AsyncHyperBandScheduler (BOHB-style).
  sweeper      sweeper's default, from its own constructors: the Optuna sampler `sweeper.search.sampler(spec)`,
               define-by-run sampling through `spec.space().sample` as SweepSearch does, each round reported as
               the best objective so far (sweeper's TuneReporter) to the study and to `controller._scheduler(spec)`
               (Ray's ASHAScheduler, driven through on_trial_add / on_trial_result / on_trial_complete as Tune's
               controller calls them), the worker's patience rule (transformers' EarlyStoppingCallback itself,
               fed eval_loss, with the Trainer's best-metric update), and trials closed with `sweeper.search.tell`.
  sweeper_*    variants of sweeper's default for part 2 of issue 13 (ROUND1_VARIANTS, VARIANTS, THIRD_PASS .. NINTH_PASS; run any
               by name with --policies, e.g. `--policies sweeper,sweeper_rungs_loss`: paired results need sweeper).
  oracle_stop  a bound, not a policy (BOUNDS): random's configurations with perfect early stopping (a trial that
               will reach 95% runs until it does, every other stops at its first round); `_half_epoch`: at
               half-epoch rounds. What no early-stopping rule over random sampling can beat.

Reported per policy: compute to reach 95% and 99% of the table's best holdout value (median and IQR over seeds; a
seed that never reaches it counts as infinite, so a median can be "not reached"), how many seeds reach it, the
median anytime regret curve (PNG), and the test value of the model each policy would select (the best holdout
(trial, round) within the budget; its recorded test value at that round).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import date
from multiprocessing import Pool
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from record_curves import table_rows  # noqa: E402

CURVES = ROOT / "bench" / "results" / "curves"
# The settings bench/search_efficiency.py runs sweeper with on each task (the shipped examples' scheduler and
# patience): what "sweeper's default" means in the live benchmark.
TASK_SETTINGS = {
    "restaurant8k-small": dict(patience=1, min_delta=0.005),
    "banking77-10": dict(patience=2, min_delta=0.001),
}
DEFAULT_SETTINGS = dict(patience=1, min_delta=0.005)
STOP, CONTINUE = "STOP", "CONTINUE"
SCHEDULES = ("linear", "cosine", "constant_with_warmup", "constant")


# -- the table ------------------------------------------------------------------------------------------
@dataclass
class Curve:
    seed: int
    epoch: np.ndarray  # cumulative epochs at each round
    steps: np.ndarray  # optimizer steps at each round (what HF reports to a hyperparameter search as its step)
    holdout: np.ndarray
    loss: np.ndarray
    test: np.ndarray
    cost: np.ndarray | None = None  # the compute clock (Table sets it): epochs, plus each round's evaluation if charged


@dataclass
class Config:
    id: int
    params: dict
    curves: list[Curve] = field(default_factory=list)


class Table:
    """Recorded configurations and their curves, with nearest-configuration lookup."""

    def __init__(self, header: dict, configs: list[Config], evals_per_epoch: int = 2, eval_cost: float = 0.0):
        """`eval_cost`: what each round's holdout evaluation costs, in epochs of training (0: rounds are free)."""
        self.header = header
        stride = max(1, header.get("evals_per_epoch", 2) // evals_per_epoch)
        for config in configs:  # keep only the rounds a spec with `evals_per_epoch` would evaluate
            config.curves = [Curve(c.seed, *(a[stride - 1::stride] for a in (c.epoch, c.steps, c.holdout, c.loss, c.test)))
                             for c in config.curves]
            for c in config.curves:
                c.cost = c.epoch + eval_cost * np.arange(1, len(c.epoch) + 1)
        self.configs = configs
        self.best = max(float(np.nanmax(c.holdout)) for config in configs for c in config.curves)
        self._keys = np.array([self._key(c.params) for c in configs])

    @classmethod
    def load(cls, path: Path, evals_per_epoch: int = 2, eval_cost: float = 0.0) -> Table:
        header, by_id = None, {}
        for row in table_rows(path):
            if row.get("kind") == "header":
                header = row
            elif row.get("kind") == "curve":
                columns = header["columns"]
                data = {name: np.array([np.nan if r[i] is None else r[i] for r in row["rounds"]], dtype=float)
                        for i, name in enumerate(columns)}
                config = by_id.setdefault(row["id"], Config(row["id"], row["params"]))
                config.curves.append(Curve(row["seed"], data["epoch"], data["steps"], data["holdout"],
                                           data["eval_loss"], data["test"]))
        return cls(header, list(by_id.values()), evals_per_epoch, eval_cost)

    @staticmethod
    def _key(params: dict) -> list[float]:
        """Coordinates for snapping: one grid step of learning rate, batch size or epochs is ~1; the other
        parameters weigh less, so they decide only between configurations equal on those three."""
        return [math.log10(params["learning_rate"]) / (3 / 7), math.log2(params["batch_size"]), params["num_epochs"],
                0.3 * math.log2(params["lora_r"]), 0.3 * math.log2(params["lora_alpha"]),
                *(0.3 * (params["lr_scheduler_type"] == s) for s in SCHEDULES),
                0.3 * params["warmup_ratio"] * 10, 0.1 * params["weight_decay"] * 10, 0.1 * params["lora_dropout"] * 5]

    def snap(self, params: dict) -> Config:
        distance = ((self._keys - np.array(self._key(params))) ** 2).sum(axis=1)
        return self.configs[int(np.argmin(distance))]

    def size(self) -> dict:
        curves = sum(len(c.curves) for c in self.configs)
        return {"configs": len(self.configs), "curves": curves,
                "two_seeds": sum(1 for c in self.configs if len(c.curves) > 1),
                "trial_epochs": round(sum(float(cv.epoch[-1]) for c in self.configs for cv in c.curves), 1),
                "best_holdout": round(self.best, 5)}


def measured_eval_cost(path: Path) -> float:
    """What a round's holdout evaluation and checkpoint cost in the recording, in epochs of the same configuration's
    training: per curve, (wall seconds - its test passes - its training seconds) / rounds, over training seconds an
    epoch; the median over curves. The recorder's test pass is timed on its own and is not part of a sweep's round."""
    ratios, columns = [], None
    for row in table_rows(path):
        if row.get("kind") == "header":
            columns = row["columns"]
        elif row.get("kind") == "curve" and "wall_s" in row and row["rounds"]:
            last = row["rounds"][-1]
            train_s, epochs = last[columns.index("train_s")], last[columns.index("epoch")]
            ratios.append((row["wall_s"] - row["test_s"] - train_s) / len(row["rounds"]) / (train_s / epochs))
    if not ratios:
        raise ValueError(f"{path}: no curve records its wall and test seconds; give --eval-cost a number")
    return round(float(np.median(ratios)), 3)


# -- the worker's patience rule --------------------------------------------------------------------------
class Patience:
    """The trainer's early stopping (trainers/hf_loop.py): transformers' own EarlyStoppingCallback on eval_loss.

    The Trainer calls it after each evaluation and only then updates `state.best_metric` (`_determine_best_metric`:
    any improvement, however small), so a round is compared with the best loss of the rounds before it."""

    def __init__(self, patience: int, min_delta: float):
        from transformers import EarlyStoppingCallback

        self.callback = EarlyStoppingCallback(patience, min_delta)
        self.args = SimpleNamespace(metric_for_best_model="eval_loss", greater_is_better=False)
        self.state = SimpleNamespace(best_metric=None)

    def stop(self, loss: float) -> bool:
        control = SimpleNamespace(should_training_stop=False)
        self.callback.on_evaluate(self.args, self.state, control, metrics={"eval_loss": loss})
        if self.state.best_metric is None or loss < self.state.best_metric:
            self.state.best_metric = loss
        return control.should_training_stop


# -- the simulation --------------------------------------------------------------------------------------
@dataclass
class Running:
    number: int
    handle: object  # the policy's own record of the trial
    config: Config
    curve: Curve
    round: int = 0  # rounds reported
    started: float = 0.0


def simulate(policy, table: Table, budget: float, concurrency: int, seed: int, max_trials: int = 10_000,
             pick=None) -> dict:
    """One run of a policy: events (compute, holdout, test, trial, round) in arrival order until the budget, and
    the recorded configuration each trial got. `pick(config)`: which of its curves a trial replays (default: one
    of its recorded seeds at random)."""
    pick = pick or random.Random(seed * 7919 + 1).choice
    queue: list = []  # (time the next round ends, tie-break, Running)
    reported: dict[int, float] = {}  # trial -> compute of the rounds it has reported: summed, the compute spent
    events: list[tuple] = []
    trials = 0
    stops: dict[str, int] = {}
    configs: list[int] = []
    replayed: list[tuple[int, int]] = []  # (configuration, curve seed) of each trial, in start order

    def start(now: float) -> None:
        nonlocal trials
        if trials >= max_trials:
            return
        asked = policy.ask(trials)
        if asked is None:
            return
        handle, params = asked
        config = table.snap(params)
        run = Running(trials, handle, config, pick(config.curves), started=now)
        if hasattr(policy, "sees"):  # a bound (OracleStopPolicy) knows the curve it will be shown
            policy.sees(handle, run.curve)
        configs.append(config.id)
        replayed.append((config.id, run.curve.seed))
        trials += 1
        heapq.heappush(queue, (now + float(run.curve.cost[0]), run.number, run))

    for _ in range(concurrency):
        start(0.0)
    while queue:
        now, _, run = heapq.heappop(queue)
        i = run.round
        run.round += 1
        reported[run.number] = float(run.curve.cost[i])
        compute = sum(reported.values())
        if compute > budget + 1e-9:  # this round ends past the budget: the run has stopped before it
            break
        events.append((compute, float(run.curve.holdout[i]), float(run.curve.test[i]), run.number, run.round))
        last = run.round >= len(run.curve.epoch)
        decision = policy.report(run.handle, run.round, float(run.curve.holdout[i]), float(run.curve.loss[i]), last,
                                 int(run.curve.steps[i]))
        if compute >= budget - 1e-9:
            break
        if decision == CONTINUE and not last:
            heapq.heappush(queue, (run.started + float(run.curve.cost[run.round]), run.number, run))
            continue
        reason = "completed" if last else decision
        stops[reason] = stops.get(reason, 0) + 1
        policy.end(run.handle, reason)
        start(now)
    # A repeat replays a curve this run has already replayed: live, a trial there would train a fresh draw of the
    # noise; here it sees the same numbers again (the cost of snapping to a finite table, heaviest for exploitation).
    repeats = len(replayed) - len(set(replayed))
    return {"events": events, "trials": trials, "stops": stops, "configs": configs, "repeats": repeats}


# -- policies --------------------------------------------------------------------------------------------
class OptunaPolicy:
    """ask/tell on an in-memory Optuna study, define-by-run sampling through the search space."""

    def __init__(self, space, sampler, pruner=None, scheduler=None, report_best=False, seed=0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space = space
        self.study = optuna.create_study(direction="maximize", sampler=sampler,
                                         pruner=pruner or optuna.pruners.NopPruner())
        self.scheduler, self.report_best = scheduler, report_best
        self.median = pruner is not None
        np.random.seed(seed)  # Ray's AsyncHyperBand picks a bracket with np.random

    def ask(self, number):
        trial = self.study.ask()
        constants = self.space.sample(trial)
        handle = SimpleNamespace(trial=trial, trial_id=f"t{number}", best=-math.inf, last=math.nan, stopped=False)
        if self.scheduler is not None:
            self.scheduler.on_trial_add(None, handle)
        return handle, {**trial.params, **constants}

    def report(self, h, round_, value, loss, last, steps):
        h.best, h.last = max(h.best, value), value
        objective = h.best if self.report_best else value
        if self.scheduler is not None:
            h.result = {"round": round_, "objective": objective}
            decision = self.scheduler.on_trial_result(None, h, h.result)
            if decision == "STOP":  # Tune does not hand a stopped trial's result to the searcher
                return "asha"
        # HF reports the global step (so its MedianPruner compares trials at equal steps); Tune its iteration.
        h.trial.report(objective, step=steps if self.median else round_)
        if self.median and h.trial.should_prune():
            return "pruned"
        return CONTINUE

    def end(self, h, reason):
        import optuna

        if self.scheduler is not None:
            self.scheduler.on_trial_complete(None, h, h.result)
        if reason == "pruned":
            self.study.tell(h.trial, state=optuna.trial.TrialState.PRUNED)
        else:  # Ray's OptunaSearch and HF tell the last reported value
            self.study.tell(h.trial, h.best if self.report_best else h.last)


class TuneOptunaPolicy:
    """Plain Ray Tune: OptunaSearch with the space as a define-by-run function, no scheduler."""

    def __init__(self, space, seed):
        from ray.tune.search.optuna import OptunaSearch

        self.searcher = OptunaSearch(space=space.sample, metric="value", mode="max", seed=seed)

    def ask(self, number):
        trial_id = f"t{number}"
        return SimpleNamespace(id=trial_id, result=None), self.searcher.suggest(trial_id)

    def report(self, h, round_, value, loss, last, steps):
        h.result = {"value": value, "training_iteration": round_}
        self.searcher.on_trial_result(h.id, h.result)
        return CONTINUE

    def end(self, h, reason):
        self.searcher.on_trial_complete(h.id, h.result)


class OracleStopPolicy:
    """A bound, not a method: random search (the seeded RandomSampler of `random`, so the same configurations) with
    perfect early stopping, which knows each trial's curve: a trial that will reach the target runs until it does,
    every other is stopped at its first round. No early-stopping rule over random sampling spends less."""

    def __init__(self, space, seed, target):
        import optuna

        self.sampler = OptunaPolicy(space, optuna.samplers.RandomSampler(seed=seed))
        self.target = target

    def ask(self, number):
        return self.sampler.ask(number)

    def sees(self, h, curve):
        h.reaches = bool(np.nanmax(curve.holdout) >= self.target - 1e-12)

    def report(self, h, round_, value, loss, last, steps):
        self.sampler.report(h, round_, value, loss, last, steps)  # no scheduler or pruner: bookkeeping only
        return CONTINUE if h.reaches and value < self.target - 1e-12 else "oracle"

    def end(self, h, reason):
        self.sampler.end(h, reason)


class GridPolicy:
    def __init__(self, space, seed):
        from search_efficiency import grid_points

        # search_efficiency's grid rule, except that the other categoricals take their middle choice (lora_r 16,
        # lora_alpha 32), not the first (4, 8): lora-default's smallest adapter is not a fair fixed pick.
        self.points = grid_points(seed, space, middle_choice=True)

    def ask(self, number):
        return None, dict(self.points[number % len(self.points)])

    def report(self, h, round_, value, loss, last, steps):
        return CONTINUE

    def end(self, h, reason):
        pass


class SweeperPolicy:
    """sweeper's default search, from sweeper's own constructors (see the module docstring).

    `pruned`: close a trial that ASHA or patience stopped as PRUNED (its intermediate values stay in the study)
    instead of COMPLETE; `startup`: the spec's `search.startup_trials` (the product's sampler builds it);
    `multivariate` True or False: a TPESampler that sets it, where the product's leaves it to Optuna. Third pass:
    `rungs` = dict(metric="objective" | "holdout_loss", min_trials, margin): adaptive_halving.AdaptiveHalving (bench/adaptive_halving.py) instead of
    Ray's ASHA (min_trials 1, margin 0 decide as ASHA does); `lr_first` = k: the first k trials spread over the
    learning rate (see lr_first_points), then the sampler; with `lr_only` the other parameters of those k are the
    sampler's (random start-up draws), not the middle values. Sixth and seventh passes: `qmc` = k: the first k trials
    at scrambled-Sobol points (qmc_points); `tpe`: TPESampler settings (e.g. consider_endpoints). Ninth pass:
    `tell_loss`: the study is told each trial's best holdout loss (minimised) instead of its best objective."""

    def __init__(self, spec, seed, pruned=False, startup=None, multivariate=None, patience=True, scheduler=None,
                 gp=False, brackets=1, rungs=None, lr_first=0, bracket_metric="objective", lr_only=False, qmc=0, tpe=None,
                 tell_loss=False):
        import optuna

        from sweeper import search
        from sweeper.controller import _scheduler

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if scheduler:  # another `scheduler:` block in the spec (e.g. a later first rung, or no ASHA)
            spec = spec.model_copy(update={"scheduler": spec.scheduler.model_copy(update=scheduler)})
        if startup is not None:  # the spec's `search.startup_trials`
            spec = spec.model_copy(update={"search": spec.search.model_copy(update={"startup_trials": startup})})
        self.spec, self.search, self.pruned = spec, search, pruned
        sampler = search.sampler(spec, seed=seed)  # what SweepSearch installs on the study
        if multivariate is not None or tpe:
            # the product's TPE with other settings; it leaves `multivariate` to Optuna (None: multivariate for one
            # objective in Optuna 5.0), so True / False here are changes from it. `tpe` overrides any of these.
            settings = dict(seed=seed, constant_liar=True, n_startup_trials=sampler._n_startup_trials)
            if multivariate is not None:
                settings.update(multivariate=multivariate, group=multivariate)
            sampler = optuna.samplers.TPESampler(**{**settings, **(tpe or {})})
        if gp:  # Optuna's Gaussian-process sampler (needs scipy), the same number of random start-up trials
            sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=sampler._n_startup_trials,
                                                warn_independent_sampling=False)
        self.tell_loss = tell_loss  # the sampler models the best holdout loss (minimised), not the objective
        minimize = tell_loss or spec.objective.mode == "min"
        self.study = optuna.create_study(direction="minimize" if minimize else "maximize", sampler=sampler)
        self.scheduler = _scheduler(spec)
        self.rung_metric = spec.scheduler.rung_metric
        if rungs is not None:
            self.scheduler, self.rung_metric = RungsScheduler(spec, **rungs), rungs.get("metric", "objective")
        if brackets > 1:  # Hyperband-style: the same ASHA settings over several brackets (first rungs 1, 2, 4 ...)
            from ray.tune.schedulers import AsyncHyperBandScheduler

            s = spec.scheduler
            self.rung_metric = bracket_metric
            mode = "min" if bracket_metric == "holdout_loss" else spec.objective.mode
            self.scheduler = AsyncHyperBandScheduler(time_attr="round", metric=bracket_metric, mode=mode,
                                                     max_t=spec.max_rounds(), grace_period=s.grace_period,
                                                     reduction_factor=s.reduction_factor, brackets=brackets)
        self.patience = patience
        for params in lr_first_points(spec.space(), lr_first, seed):
            # lr_only: only the learning rate is fixed; the sampler draws the rest (at random: start-up trials)
            self.study.enqueue_trial({"learning_rate": params["learning_rate"]} if lr_only else params)
        for params in qmc_points(spec.space(), qmc, seed):
            self.study.enqueue_trial(params)
        np.random.seed(seed)

    def ask(self, number):
        trial = self.study.ask()
        constants = self.spec.space().sample(trial)  # SweepSearch._suggestion
        handle = SimpleNamespace(trial=trial, trial_id=f"t{number}", best=-math.inf, result=None,
                                 patience=Patience(self.spec.early_stopping.patience, self.spec.early_stopping.min_delta),
                                 loss=math.inf)
        self.scheduler.on_trial_add(None, handle)
        return handle, {**trial.params, **constants}

    def report(self, h, round_, value, loss, last, steps):
        if not math.isnan(value):
            h.best = max(h.best, value)  # TuneReporter: `objective` is the best value so far
        if not math.isnan(loss):
            h.loss = min(h.loss, loss)  # a rung judged on holdout loss: the best loss so far, like the objective
        h.result = {"round": round_, "objective": h.best, "holdout_loss": h.loss}
        stop_by_worker = self.patience and not last and h.patience.stop(loss)
        decision = self.scheduler.on_trial_result(None, h, h.result)
        if decision == "STOP":
            # At max_t ASHA says STOP on the last round too; the worker had finished anyway.
            return "completed" if last else ("patience" if stop_by_worker else "asha")
        h.trial.report(self._told(h), step=round_)  # StudySearcher.on_trial_result -> SweepSearch.round_reported
        return "patience" if stop_by_worker else CONTINUE

    def end(self, h, reason):
        import optuna

        self.scheduler.on_trial_complete(None, h, h.result)
        if self.pruned and reason in ("asha", "patience"):
            # Tune never hands the searcher the result ASHA stopped a trial on: report it, so that a trial stopped
            # at its first rung is pruned with its value rather than with none (which TPE ranks below every other)
            if h.result["round"] not in h.trial.storage.get_trial(h.trial._trial_id).intermediate_values:
                h.trial.report(self._told(h), step=h.result["round"])
            self.study.tell(h.trial.number, state=optuna.trial.TrialState.PRUNED)
        else:
            self.search.tell(self.study, h.trial.number, self._told(h), error=False)

    def _told(self, h) -> float:
        return h.loss if self.tell_loss else h.best


class RungsScheduler:
    """adaptive_halving.AdaptiveHalving (bench/adaptive_halving.py) behind the three calls the replay makes of a Tune scheduler, on the
    spec's rungs (grace period, reduction factor, max rounds); `metric` "holdout_loss" judges the best holdout loss so far."""

    def __init__(self, spec, metric="objective", min_trials=4, margin=0.1):
        from adaptive_halving import AdaptiveHalving

        mode = "min" if metric == "holdout_loss" else spec.objective.mode
        self.metric = metric
        self.rungs = AdaptiveHalving(spec.scheduler.grace_period, spec.scheduler.reduction_factor, spec.max_rounds(),
                                     mode, min_trials=min_trials, margin=margin)

    def on_trial_add(self, runner, trial):
        pass

    def on_trial_result(self, runner, trial, result):
        value = result[self.metric]
        value = math.nan if math.isinf(value) else value  # no finite value yet: nothing to judge
        return STOP if self.rungs.stop(trial.trial_id, result["round"], value) else CONTINUE

    def on_trial_complete(self, runner, trial, result):
        pass


def lr_first_points(space, k: int, seed: int) -> list[dict]:
    """Learning-rate-first start-up: k configurations whose learning rates stratify the (log) range, one at a seeded
    random place in each of k equal slices, in a seeded random order; every other parameter at its middle (a range's
    midpoint, log midpoint for a log range, rounded for an int; a categorical's middle choice, as the grid does)."""
    from search_spaces.space import CategoricalParam, FloatParam, IntParam

    if k <= 0:
        return []
    rng = random.Random(seed * 31 + 7)
    lr = space.params["learning_rate"]
    lo, hi = (math.log(lr.low), math.log(lr.high)) if lr.log else (lr.low, lr.high)
    middle = {}
    for name, p in space.params.items():
        if isinstance(p, CategoricalParam):
            middle[name] = p.choices[len(p.choices) // 2]
        elif isinstance(p, (FloatParam, IntParam)):
            mid = math.exp((math.log(p.low) + math.log(p.high)) / 2) if p.log else (p.low + p.high) / 2
            middle[name] = int(round(mid)) if isinstance(p, IntParam) else mid
    slices = list(range(k))
    rng.shuffle(slices)
    points = []
    for i in slices:
        x = lo + (i + rng.random()) / k * (hi - lo)
        points.append({**middle, "learning_rate": math.exp(x) if lr.log else x})
    return points


def qmc_points(space, k: int, seed: int) -> list[dict]:
    """k scrambled-Sobol start-up configurations (Optuna's QMCSampler on a throwaway study): they cover the space
    more evenly than k random draws, so a narrow winning region is less likely to be missed."""
    import optuna

    if k <= 0:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed, warn_independent_sampling=False)
    study = optuna.create_study(sampler=sampler)
    points = []
    for _ in range(k + 1):  # QMCSampler learns the space from its first (random) trial, then draws Sobol points
        trial = study.ask()
        space.sample(trial)
        points.append(trial.params)
        study.tell(trial, 0.0)
    return points[1:]


class ProductSweeperPolicy(SweeperPolicy):
    """sweeper's default driven through `sweeper.search.SweepSearch` itself, on a real (SQLite) store and study:
    slower, for checking on a few seeds that `SweeperPolicy`'s in-memory study proposes what the product does."""

    def __init__(self, spec, seed, database_url: str):
        from sweeper.search import SweepSearch
        from sweeper.store import TrialStore

        super().__init__(spec, seed)
        store = TrialStore(database_url)
        store.upgrade()
        store.engine.dispose()
        self.product = SweepSearch(spec, database_url)
        self.study = self.product.study

    def ask(self, number):
        suggestion = self.product.suggest()
        if suggestion is None:
            return None
        handle = SimpleNamespace(key=suggestion.key, trial_id=suggestion.key, best=-math.inf, result=None,
                                 trial=SimpleNamespace(report=lambda value, step, key=suggestion.key:
                                                       self.product.round_reported(key, step, value)),
                                 patience=Patience(self.spec.early_stopping.patience, self.spec.early_stopping.min_delta),
                                 loss=math.inf)
        self.scheduler.on_trial_add(None, handle)
        return handle, suggestion.params

    def end(self, h, reason):
        self.scheduler.on_trial_complete(None, h, h.result)
        self.product.finished(h.key, h.best, error=False)


def check_against_product(table: Table, seeds: int, budget: float, concurrency: int, evals_per_epoch: int) -> list:
    """Per seed: whether SweeperPolicy and SweepSearch on a SQLite store proposed the same configurations."""
    import tempfile

    out = []
    for seed in range(seeds):
        spec = replay_spec(table, budget, concurrency, evals_per_epoch, seed)
        url = f"sqlite:///{tempfile.mkdtemp(prefix='replay-check-')}/sweeper.db"
        runs = [simulate(policy, table, budget, concurrency, seed)
                for policy in (SweeperPolicy(spec, seed), ProductSweeperPolicy(spec, seed, url))]
        same = [e[:2] for e in runs[0]["events"]] == [e[:2] for e in runs[1]["events"]]
        out.append({"seed": seed, "trials": runs[0]["trials"], "same_events": same})
    return out


ROUND1_VARIANTS = {  # part 2 of issue 13, first pass (bench/RESULTS.md): runnable by name with --policies
    "sweeper_pruned": dict(pruned=True),
    "sweeper_startup5": dict(startup=5, multivariate=False),
    "sweeper_startup20": dict(startup=20, multivariate=False),
    "sweeper_multivariate": dict(multivariate=True),
    "sweeper_no_patience": dict(patience=False),
    "sweeper_grace2": dict(scheduler={"grace_period": 2}),
    "sweeper_no_asha": dict(scheduler={"type": "none"}),
    "sweeper_no_asha_startup5": dict(scheduler={"type": "none"}, startup=5, multivariate=False),
}
VARIANTS = {  # part 2 of issue 13, second pass: what --with-variants adds
    "sweeper_brackets3": dict(brackets=3),
    "sweeper_brackets3_startup5": dict(brackets=3, startup=5, multivariate=False),
    "sweeper_rf3": dict(scheduler={"reduction_factor": 3}),
    "sweeper_grace2_startup5": dict(scheduler={"grace_period": 2}, startup=5, multivariate=False),
    "sweeper_pruned_startup5": dict(pruned=True, startup=5, multivariate=False),
    "sweeper_multivariate_startup5": dict(multivariate=True, startup=5),
}
THIRD_PASS = {  # part 2 of issue 13, third pass (bench/RESULTS.md): runnable by name with --policies
    "sweeper_rungs_wait": dict(rungs=dict(metric="objective", min_trials=4, margin=0.1)),
    "sweeper_rungs_loss": dict(rungs=dict(metric="holdout_loss", min_trials=1, margin=0.0)),
    "sweeper_rungs_loss_wait": dict(rungs=dict(metric="holdout_loss", min_trials=4, margin=0.1)),
    "sweeper_lr_first5": dict(lr_first=5, startup=5, multivariate=False),
    "sweeper_lr_first10": dict(lr_first=10),
    "sweeper_lr_spread5": dict(lr_first=5, startup=5, lr_only=True, multivariate=False),
    "sweeper_lr_spread10": dict(lr_first=10, lr_only=True),
    "sweeper_half_epoch": dict(evals_per_epoch=2),
    "sweeper_brackets3_startup5_lr_first5": dict(brackets=3, lr_first=5, startup=5, multivariate=False),
    "sweeper_brackets3_startup5_loss": dict(brackets=3, startup=5, bracket_metric="holdout_loss", multivariate=False),
    "sweeper_brackets3_startup5_half_epoch": dict(brackets=3, startup=5, evals_per_epoch=2, multivariate=False),
    "sweeper_rungs_wait_startup5": dict(rungs=dict(metric="objective", min_trials=4, margin=0.1), startup=5, multivariate=False),
    "sweeper_rungs_loss_startup5": dict(rungs=dict(metric="holdout_loss", min_trials=1, margin=0.0), startup=5, multivariate=False),
    # the default before the fourth pass: Ray's ASHAScheduler ranking by `scheduler.rung_metric: objective`
    "sweeper_asha_objective": dict(scheduler={"rung_metric": "objective"}),
}
# Optuna's GPSampler refits its Gaussian process at every ask: ~1-2 minutes a run here, too slow for 100 seeds
# (`--policies sweeper_gp` runs it on a few).
SLOW_VARIANTS = {"sweeper_gp": dict(gp=True)}
FIFTH_PASS = {  # sub-epoch rungs again, now that the default ranks rungs on holdout loss (bench/RESULTS.md)
    "sweeper_half_epoch_startup5": dict(evals_per_epoch=2, startup=5, multivariate=False),
    "sweeper_brackets3_startup5_loss_half_epoch": dict(brackets=3, startup=5, bracket_metric="holdout_loss",
                                                       evals_per_epoch=2, multivariate=False),
}
SIXTH_PASS = {  # quasi-random (Sobol) start-up points before TPE, in place of its random start-up draws
    "sweeper_qmc5": dict(qmc=5),
    "sweeper_qmc10": dict(qmc=10),
}
SEVENTH_PASS = {  # TPE's own settings, on an independent TPE as measured unless a variant's `tpe` says otherwise
    "sweeper_tpe_ei64": dict(tpe={"n_ei_candidates": 64}, multivariate=False),
    "sweeper_tpe_endpoints": dict(tpe={"consider_endpoints": True}, multivariate=False),
    "sweeper_tpe_independent": dict(tpe={"multivariate": False}),  # the control: the default, but independent TPE
    "sweeper_tpe_endpoints_multivariate": dict(tpe={"consider_endpoints": True, "multivariate": None}),
}
# The passes above that set `startup` or `tpe` were measured with an independent TPE (the seventh pass found it): they
# say multivariate=False, so their commands reproduce. The eighth pass repeats the start-up counts on the product's
# own sampler (multivariate, as Optuna 5.0 leaves it), the clean test of the start-up count alone.
EIGHTH_PASS = {
    "sweeper_startup2_mv": dict(startup=2),
    "sweeper_startup3_mv": dict(startup=3),
    "sweeper_startup4_mv": dict(startup=4),
    "sweeper_startup5_mv": dict(startup=5),
    "sweeper_startup20_mv": dict(startup=20),
    "sweeper_pruned_startup5_mv": dict(pruned=True, startup=5),
    "sweeper_half_epoch_startup5_mv": dict(evals_per_epoch=2, startup=5),
}
# Passes one to eight were measured when the default's reduction factor was 2; from the ninth pass on it is 4, so they
# now run on that base. The ninth pass's variants name their factor, so their commands reproduce.
RF2 = {"reduction_factor": 2}
NINTH_PASS = {  # ASHA's reduction factor on the loss rung; the sampler told the best holdout loss, not the objective
    "sweeper_rf2": dict(scheduler=RF2),  # the default until this pass
    "sweeper_rf3_loss": dict(scheduler={"reduction_factor": 3}),
    "sweeper_rf4_loss": dict(scheduler={"reduction_factor": 4}),  # made the default
    "sweeper_tell_loss": dict(tell_loss=True, scheduler=RF2),
    "sweeper_tell_loss_startup3": dict(tell_loss=True, startup=3, scheduler=RF2),
    "sweeper_tell_loss_startup5": dict(tell_loss=True, startup=5, scheduler=RF2),
    "sweeper_rf4_tell_loss_startup5": dict(scheduler={"reduction_factor": 4}, tell_loss=True, startup=5),
}
ALL_VARIANTS = {**ROUND1_VARIANTS, **VARIANTS, **THIRD_PASS, **FIFTH_PASS, **SIXTH_PASS, **SEVENTH_PASS,
                **EIGHTH_PASS, **NINTH_PASS, **SLOW_VARIANTS}
# bounds, not policies: random sampling with perfect early stopping, at epoch or at half-epoch rounds
BOUNDS = {"oracle_stop": {}, "oracle_stop_half_epoch": dict(evals_per_epoch=2)}


def own_settings(name: str) -> dict:
    return {**ALL_VARIANTS, **BOUNDS}.get(name, {})
REGRET_POINTS = 61  # budget points of the anytime regret curves
POLICIES = ["random", "grid", "tune_optuna", "hf_median", "asha_random", "hyperband", "bohb", "sweeper"]


def replay_spec(table: Table, budget: float, concurrency: int, evals_per_epoch: int, seed: int):
    """The spec sweeper would run this replay with: the table's task and space, the live benchmark's scheduler
    and patience for the task, `budget.trials` = the budget in trial-epochs (as bench/search_efficiency.py sets)."""
    from sweeper.spec import parse_spec

    h = table.header
    settings = TASK_SETTINGS.get(h.get("task_key"), DEFAULT_SETTINGS)
    data = {split: str(ROOT / h["data"][split]["path"]) for split in ("train", "holdout", "test")}
    fmt = "csv" if data["train"].endswith(".csv") else "restaurant8k"
    raw = {
        "name": "replay", "task": h["task"], "model": "minilm-l6",
        "data": {"format": fmt, **data, "max_seq_length": h.get("max_seq_length", 32)},
        "search_space": h.get("space", "lora-default"), "objective": {"metric": h["metric"], "direction": "maximize"},
        "budget": {"trials": max(1, int(math.ceil(budget))), "max_concurrent": concurrency},
        "scheduler": {"type": "asha", "grace_period": 1, "evals_per_epoch": evals_per_epoch},  # the default factor
        "early_stopping": settings, "seed": seed, "tracking": {"mode": "none"},
    }
    return parse_spec(raw, ROOT)


def asha_settings(spec) -> dict:
    """Ray's AsyncHyperBandScheduler for the library policies: the spec's rungs, judged on the raw objective."""
    return dict(time_attr="round", metric="objective", mode="max", max_t=spec.max_rounds(),
                grace_period=spec.scheduler.grace_period, reduction_factor=spec.scheduler.reduction_factor)


def make_policy(name: str, spec, seed: int, target: float = math.nan):
    import optuna
    from ray.tune.schedulers import AsyncHyperBandScheduler

    space = spec.space()
    asha = asha_settings(spec)
    if name == "random":
        return OptunaPolicy(space, optuna.samplers.RandomSampler(seed=seed))
    if name == "grid":
        return GridPolicy(space, seed)
    if name == "tune_optuna":
        return TuneOptunaPolicy(space, seed)
    if name == "hf_median":
        return OptunaPolicy(space, optuna.samplers.TPESampler(seed=seed), pruner=optuna.pruners.MedianPruner())
    if name == "asha_random":
        return OptunaPolicy(space, optuna.samplers.RandomSampler(seed=seed),
                            scheduler=AsyncHyperBandScheduler(**asha), seed=seed)
    if name == "hyperband":
        return OptunaPolicy(space, optuna.samplers.RandomSampler(seed=seed),
                            scheduler=AsyncHyperBandScheduler(**asha, brackets=3), seed=seed)
    if name == "bohb":
        return OptunaPolicy(space, optuna.samplers.TPESampler(seed=seed),
                            scheduler=AsyncHyperBandScheduler(**asha, brackets=3), seed=seed)
    if name == "sweeper":
        return SweeperPolicy(spec, seed)
    if name in BOUNDS:
        return OracleStopPolicy(space, seed, target)
    if name in ALL_VARIANTS:
        options = {k: v for k, v in ALL_VARIANTS[name].items() if k != "evals_per_epoch"}  # run_one's business
        return SweeperPolicy(spec, seed, **options)
    raise ValueError(f"unknown policy {name!r}")


# -- measuring a run -------------------------------------------------------------------------------------
def compute_to(events: list[tuple], target: float) -> float:
    return next((e[0] for e in events if e[1] >= target - 1e-12), math.inf)


def selected(events: list[tuple]) -> tuple[float, float]:
    """(holdout, test) of the model the run would select: its best holdout (trial, round), the first on ties."""
    best = max((e for e in events if not math.isnan(e[1])), key=lambda e: e[1], default=None)
    return (best[1], best[2]) if best else (math.nan, math.nan)


def anytime_best(events: list[tuple], grid: np.ndarray) -> np.ndarray:
    """Best holdout value found by each compute point of `grid` (nan before the first evaluation)."""
    out, best, i = np.full(len(grid), np.nan), -math.inf, 0
    for k, at in enumerate(grid):
        while i < len(events) and events[i][0] <= at + 1e-9:
            best = max(best, events[i][1])
            i += 1
        if best > -math.inf:
            out[k] = best
    return out


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile where a value may be infinite (never reached): numpy's gives nan there."""
    a = sorted(values)
    if not a:
        return math.inf
    pos = q * (len(a) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi or a[lo] == a[hi]:
        return a[lo]
    return math.inf if math.isinf(a[hi]) else a[lo] + (a[hi] - a[lo]) * (pos - lo)


_WORK: dict = {}


def _init(table_path, evals_per_epoch, budget, concurrency, eval_cost=0.0):
    _WORK.update(path=Path(table_path), tables={}, budget=budget, concurrency=concurrency,
                 evals_per_epoch=evals_per_epoch, eval_cost=eval_cost)


def _table_for(evals_per_epoch: int) -> Table:
    if evals_per_epoch not in _WORK["tables"]:
        _WORK["tables"][evals_per_epoch] = Table.load(_WORK["path"], evals_per_epoch, _WORK["eval_cost"])
    return _WORK["tables"][evals_per_epoch]


def policy_spec(name: str, table: Table, budget: float, concurrency: int, evals_per_epoch: int, seed: int):
    """The replay spec, except for a variant with its own `evals_per_epoch` (rungs at sub-epoch rounds): its
    rounds are that many an epoch (ASHA's grace period of 1 round is then half an epoch) and its patience is
    counted in as many rounds as the default's is in epochs, so only the rungs move."""
    spec = replay_spec(table, budget, concurrency, evals_per_epoch, seed)
    own = own_settings(name).get("evals_per_epoch")
    if own is None or own == evals_per_epoch:
        return spec
    scale = own // evals_per_epoch
    stopping = spec.early_stopping.model_copy(update={"patience": spec.early_stopping.patience * scale})
    return replay_spec(table, budget, concurrency, own, seed).model_copy(update={"early_stopping": stopping})


def run_one(job: tuple[str, int]) -> dict:
    name, seed = job
    budget, base = _WORK["budget"], _WORK["evals_per_epoch"]
    table = _table_for(own_settings(name).get("evals_per_epoch", base))
    spec = policy_spec(name, _table_for(base), budget, _WORK["concurrency"], base, seed)
    best = _table_for(base).best  # the targets every policy is held to: a sub-epoch variant's table has more rounds
    result = simulate(make_policy(name, spec, seed, 0.95 * best), table, budget, _WORK["concurrency"], seed)
    events = result["events"]
    holdout, test = selected(events)
    return {"policy": name, "seed": seed, "to95": compute_to(events, 0.95 * best),
            "to99": compute_to(events, 0.99 * best), "holdout": holdout, "test": test,
            "trials": result["trials"], "stops": result["stops"], "repeats": result["repeats"],
            "curve": anytime_best(events, np.linspace(0, budget, REGRET_POINTS)).tolist()}


def summarise(runs: list[dict], table: Table, budget: float) -> dict:
    def median_iqr(values):
        q = [quantile(values, p) for p in (0.25, 0.5, 0.75)]
        clean = [None if not math.isfinite(v) else round(float(v), 3) for v in q]
        return clean[1], [clean[0], clean[2]]

    out = {}
    for name in dict.fromkeys(r["policy"] for r in runs):
        mine = [r for r in runs if r["policy"] == name]
        to95, iqr95 = median_iqr([r["to95"] for r in mine])
        to99, iqr99 = median_iqr([r["to99"] for r in mine])
        curves = np.array([r["curve"] for r in mine])
        regret = table.best - curves
        stops: dict[str, int] = {}
        for r in mine:
            for k, v in r["stops"].items():
                stops[k] = stops.get(k, 0) + v
        out[name] = {
            "compute_to_95": to95, "compute_to_95_iqr": iqr95,
            "reached_95": sum(math.isfinite(r["to95"]) for r in mine),
            "compute_to_99": to99, "compute_to_99_iqr": iqr99,
            "reached_99": sum(math.isfinite(r["to99"]) for r in mine),
            "selected_holdout_median": round(float(np.nanmedian([r["holdout"] for r in mine])), 4),
            "selected_test_median": round(float(np.nanmedian([r["test"] for r in mine])), 4),
            "selected_test_iqr": [round(float(v), 4) for v in np.nanpercentile([r["test"] for r in mine], [25, 75])],
            "trials_median": float(np.median([r["trials"] for r in mine])),
            "repeated_share_median": round(float(np.median([r["repeats"] / max(1, r["trials"]) for r in mine])), 3),
            "stops": stops,
            "regret_median": [None if math.isnan(v) else round(float(v), 4)
                              for v in np.median(np.where(np.isnan(regret), np.inf, regret), axis=0)],
            "seeds": len(mine),
        }
    return out


def goals(runs: list[dict], summary: dict, budget: float) -> dict:
    """Issue 13's goals for this task, and each policy paired with sweeper seed by seed (same seed: same first
    random points where both sample them) on compute to 95%: (wins, ties, losses) for the policy."""
    def ratio(other):
        mine, theirs = summary.get("sweeper", {}).get("compute_to_95"), summary.get(other, {}).get("compute_to_95")
        return round(mine / theirs, 3) if mine is not None and theirs else None

    by_seed = {(r["policy"], r["seed"]): r["to95"] for r in runs}
    paired = {}
    for name in summary:
        if name == "sweeper" or "sweeper" not in summary:
            continue
        seeds = [seed for policy, seed in by_seed if policy == name]
        pairs = [(by_seed[(name, seed)], by_seed[("sweeper", seed)]) for seed in seeds]
        paired[name] = [sum(a < b for a, b in pairs), sum(a == b for a, b in pairs), sum(a > b for a, b in pairs)]
    vs_random, vs_tune = ratio("random"), ratio("tune_optuna")
    behind = regret_points_behind(summary, budget)
    return {"sweeper_over_random_95": vs_random, "met_third_of_random": vs_random is not None and vs_random <= 1 / 3,
            "sweeper_over_tune_optuna_95": vs_tune, "met_half_of_tune_optuna": vs_tune is not None and vs_tune <= 0.5,
            "regret_points_behind": behind, "met_regret_at_every_budget": behind == [] if behind is not None else None,
            "paired_vs_sweeper_95_wins_ties_losses": paired}


def regret_points_behind(summary: dict, budget: float) -> list | None:
    """The budget points (of the regret curve) where sweeper's median regret is above another policy's (the issue's
    policies, not sweeper's own variants or the bounds), each as [compute, sweeper's regret, the best other's, who]."""
    if "sweeper" not in summary:
        return None
    others = [name for name in summary if name in POLICIES and name != "sweeper"]
    as_num = lambda v: math.inf if v is None else v  # noqa: E731 - None: no evaluation yet (infinite regret)
    at = np.linspace(0, budget, REGRET_POINTS)
    behind = []
    for i, mine in enumerate(map(as_num, summary["sweeper"]["regret_median"])):
        best, who = min(((as_num(summary[o]["regret_median"][i]), o) for o in others), default=(math.inf, None))
        if mine > best + 1e-12:
            behind.append([round(float(at[i]), 2), None if math.isinf(mine) else mine, best, who])  # None: none yet
    return behind


def plot(task: str, policies: dict, budget: float, path: Path, unit: str = "trial-epochs") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, budget, REGRET_POINTS)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, p in policies.items():
        regret = np.array([np.nan if v is None or not math.isfinite(v) else v for v in p["regret_median"]], dtype=float)
        # part-2 variants dashed (matplotlib's 10 colours repeat), the bounds dotted
        style = ":" if name in BOUNDS else "--" if name.startswith("sweeper_") else "-"
        ax.plot(grid, regret, style, label=name, lw=2.4 if name == "sweeper" else 1.2, color="black" if name == "sweeper" else None)
    ax.set_xlabel(f"compute ({unit})")
    ax.set_ylabel("median regret (table best - best holdout found)")
    ax.set_yscale("log")
    ax.set_title(f"{task}: anytime median regret over seeds")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", help="a table under bench/results/curves (repeatable)")
    parser.add_argument("--table", type=Path, help="a table file instead of --task")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds --first-seed .. +--seeds-1: fresh seeds to confirm a result found on seeds 0..")
    parser.add_argument("--budget", type=float, default=100.0, help="trial-epochs per run")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at once (the spec's max_concurrent)")
    parser.add_argument("--evals-per-epoch", type=int, default=1, choices=(1, 2))
    parser.add_argument("--eval-cost", default="0", metavar="EPOCHS|measured",
                        help="charge each round's holdout evaluation and checkpoint this many epochs of training, or "
                             "`measured`: what the table's recording timed (measured_eval_cost); default 0, rounds free")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated; also {', '.join([*ALL_VARIANTS, *BOUNDS])}")
    parser.add_argument("--with-variants", action="store_true", help="add every sweeper_* variant to --policies")
    parser.add_argument("--jobs", type=int, default=2, help="processes")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "replay.json")
    parser.add_argument("--plot-dir", type=Path, default=None, help="default: beside --json")
    parser.add_argument("--smoke", action="store_true", help="CI: a tiny synthetic table, 3 seeds")
    parser.add_argument("--check-product", type=int, default=0, metavar="N",
                        help="also replay sweeper through SweepSearch on a SQLite store for N seeds, and compare")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    policies = [p for p in args.policies.split(",") if p] + (list(VARIANTS) if args.with_variants else [])
    if args.smoke:
        import tempfile

        args.table = Path(tempfile.mkdtemp(prefix="replay-smoke-")) / "synthetic.jsonl"
        write_synthetic_table(args.table, n_configs=24)
        args.seeds, args.budget, args.jobs = 3, 12.0, 1
    tables = {args.table.stem: args.table} if args.table else {t: CURVES / f"{t}.jsonl" for t in args.task or []}
    if not tables:
        parser.error("give --task, --table or --smoke")
    started = time.perf_counter()
    report = {"command": " ".join(["python", "bench/replay.py", *(sys.argv[1:] if argv is None else argv)]),
              "date": date.today().isoformat(), "compute_unit": "trial-epochs", "budget": args.budget,
              "concurrency": args.concurrency, "evals_per_epoch": args.evals_per_epoch, "tasks": {}}
    for task, path in tables.items():
        jobs = [(p, s) for s in range(args.first_seed, args.first_seed + args.seeds) for p in policies]
        eval_cost = measured_eval_cost(path) if args.eval_cost == "measured" else float(args.eval_cost)
        if eval_cost:
            report["compute_unit"] = "trial-epochs, each round's evaluation charged the task's eval_cost epochs"
        init = (str(path), args.evals_per_epoch, args.budget, args.concurrency, eval_cost)
        if args.jobs > 1:
            with Pool(args.jobs, initializer=_init, initargs=init) as pool:
                runs = pool.map(run_one, jobs, chunksize=4)
        else:
            _init(*init)
            runs = [run_one(job) for job in jobs]
        table = Table.load(path, args.evals_per_epoch)
        summary = summarise(runs, table, args.budget)
        shown = path.relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        report["tasks"][task] = {"table": {"path": str(shown), **table.size()}, "eval_cost": eval_cost, "policies": summary,
                                 "goals": goals(runs, summary, args.budget)}
        if args.check_product:
            check = check_against_product(table, args.check_product, args.budget, args.concurrency,
                                          args.evals_per_epoch)
            report["tasks"][task]["product_check"] = check
            print(f"SweepSearch on a SQLite store vs the in-memory replay: {check}")
        plot_dir = args.plot_dir or args.json.parent
        plot_dir.mkdir(parents=True, exist_ok=True)
        plot(task, summary, args.budget, plot_dir / f"replay_regret_{task}.png", report["compute_unit"])
        print_summary(task, table, summary)
        print(json.dumps(report["tasks"][task]["goals"]))
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json} in {report['seconds']} s")
    return 0


def print_summary(task: str, table: Table, summary: dict) -> None:
    print(f"\n{task}: {table.size()}")
    print(f"{'policy':28} {'to95 med':>9} {'IQR':>16} {'reach':>6} {'to99 med':>9} {'reach':>6} {'test':>7} {'trials':>6} {'repeat':>6}")
    for name, p in summary.items():
        iqr = "-".join("inf" if v is None else f"{v:g}" for v in p["compute_to_95_iqr"])
        print(f"{name:28} {_fmt(p['compute_to_95']):>9} {iqr:>16} {p['reached_95']:>6} {_fmt(p['compute_to_99']):>9} "
              f"{p['reached_99']:>6} {p['selected_test_median']:>7.4f} {p['trials_median']:>6g} "
              f"{p['repeated_share_median']:>6.2f}")


def _fmt(value) -> str:
    return "n/r" if value is None else f"{value:g}"


# -- a synthetic table, for the smoke setting and the tests -------------------------------------------------
def synthetic_configs(n_configs: int, good: int | None = None, seed: int = 0) -> list[dict]:
    """`n_configs` configurations of the recorder's grid, each with one made-up curve (2 rounds an epoch): the
    holdout value rises towards a ceiling set by the learning rate's distance from 1e-3 (or, with `good`, only
    configuration `good` reaches 1.0 and every other one stays at or below 0.5); the loss falls as the value rises."""
    from record_curves import grid

    rng = random.Random(seed)
    rows = []
    for config in grid(seed)[:n_configs]:
        if good is None:
            ceiling = max(0.05, 1.0 - abs(math.log10(config["learning_rate"]) + 3) / 2.5) * rng.uniform(0.9, 1.0)
        else:
            ceiling = 1.0 if len(rows) == good else 0.5 * rng.uniform(0.5, 1.0)
        rounds = []
        for r in range(1, 2 * config["num_epochs"] + 1):
            value = ceiling * (1 - math.exp(-r / 2))
            rounds.append([r, r / 2, r, r * 8, r * 100, r * 0.1, round(value, 5), round(2.0 - value, 5),
                           round(value * 0.95, 5), round(2.0 - value, 5)])
        rows.append({"kind": "curve", "id": config["id"], "seed": 1, "params": {k: v for k, v in config.items() if k != "id"},
                     "stop": "completed", "rounds": rounds})
    return rows


def write_synthetic_table(path: Path, n_configs: int, good: int | None = None, seed: int = 0) -> Path:
    header = {"kind": "header", "task_key": "synthetic", "task": "token_tagging", "metric": "f1_micro", "mode": "max",
              "space": "lora-default", "evals_per_epoch": 2, "max_seq_length": 32,
              "data": {split: {"path": f"examples/data/restaurant8k-small/{split}.json"}
                       for split in ("train", "holdout", "test")},
              "columns": ["round", "epoch", "steps", "examples", "tokens", "train_s", "holdout", "eval_loss", "test",
                          "test_loss"]}
    lines = [header, *synthetic_configs(n_configs, good, seed)]
    path.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
    return path


if __name__ == "__main__":
    sys.exit(main())
