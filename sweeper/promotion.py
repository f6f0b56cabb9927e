"""Promotion: the sweep's best trial is promoted only if every gate of its spec holds on data it was not selected on.

- The gates are fixed in the spec before the sweep (they are part of the spec's fingerprint).
- The best trial by the objective is re-evaluated, from its best round's checkpoint, on the test split the
  search never saw. A spec without one is checked on the holdout, and the result says plainly that it was
  checked on the selection data only.
- A gate passes only if the bound of a percentile-bootstrap interval over the evaluated examples clears the
  threshold: the lower bound for `>=`, the upper bound for `<=`; never the point value. `per_field_f1` is one
  gate per field, so a model good on average that fails one field is not promoted.
- `seeds: N` re-trains the winner's config with N more seeds for its best-round count; each gate must then also
  hold for the mean over all seeds.
- A best trial that fails is not replaced: the next trials (up to `candidates`) are checked and the first that
  clears every gate is named runner-up. Promoting it would select on the test split.
- The heavy steps (a checkpoint's predictions, a seed's re-training) are plain functions of one job, run on
  `Workers` (sweeper.controller: Ray tasks holding one trial's resources); this module stays free of Ray and
  coordinates: the gates, the bootstrap, the record and the export.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from sweeper import checkpoints
from sweeper.audit import audited_sha256, labels_of
from sweeper.datasets import FIELDS_EXAMPLES, read_examples
from sweeper.export import export_sweep, target_problem
from sweeper.spec import PER_FIELD_GATE, Gate, Promotion, Spec, spec_from_store
from sweeper.store import TrialStore
from sweeper.trial_config import trial_config

Records = list[dict]
Score = Callable[[Records], dict[str, float]]


class PromotionError(RuntimeError):
    """Promotion cannot run (no gates in the spec, no trial, a missing checkpoint); the message says what to do."""


@dataclass
class GateCheck:
    gate: str  # as the spec writes it: `per_field_f1 >= 0.9`
    metric: str  # the metric checked: a per-field gate becomes one check per field (`f1_time`)
    op: str
    threshold: float
    value: float | None  # point value on the evaluated split
    low: float | None  # bootstrap interval
    high: float | None
    holdout: float | None = None  # the trial's value at its best round on the holdout (what it was selected on)
    seed_values: list[float] = field(default_factory=list)  # point values of the re-trained seeds
    note: str = ""

    @property
    def bound(self) -> float | None:
        """The side of the interval that must clear the threshold."""
        return self.low if self.op == ">=" else self.high

    @property
    def seed_mean(self) -> float | None:
        values = [self.value, *self.seed_values] if self.seed_values and self.value is not None else []
        return float(np.mean(values)) if values else None

    @property
    def passed(self) -> bool:
        return _clears(self.bound, self.op, self.threshold) and (
            not self.seed_values or _clears(self.seed_mean, self.op, self.threshold))


def _clears(value: float | None, op: str, threshold: float) -> bool:
    if value is None or math.isnan(value):
        return False
    return value >= threshold if op == ">=" else value <= threshold


@dataclass
class TrialCheck:
    trial_key: str
    objective: float
    examples: int
    gates: list[GateCheck]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[GateCheck]:
        return [g for g in self.gates if not g.passed]


@dataclass
class PromotionResult:
    sweep: str
    trial_key: str  # the best trial by the objective: the only one that may be promoted
    split: str  # test | holdout
    confidence: float
    bootstrap_samples: int
    checked: list[TrialCheck]  # best first, then lower-ranked trials looked at for a runner-up
    seeds: list[int] = field(default_factory=list)
    runner_up: str | None = None
    export: str | None = None
    workers: list[dict] = field(default_factory=list)  # where each prediction and re-training ran (Ray node, pid)

    @property
    def promoted(self) -> bool:
        return self.checked[0].passed

    @property
    def selection_only(self) -> bool:
        return self.split != "test"

    def note(self) -> str:
        where = ("on the test split" if not self.selection_only else
                 "on the selection data only (the spec has no test split; these numbers are optimistic)")
        if self.promoted:
            return f"PROMOTED: trial {self.trial_key} clears every gate {where}"
        failed = "; ".join(_failure(g) for g in self.checked[0].failed)
        runner = f"; runner-up {self.runner_up} clears every gate (not promoted)" if self.runner_up else ""
        return f"NOT PROMOTED: trial {self.trial_key} fails {failed} {where}{runner}"

    def to_dict(self) -> dict:
        checked = [{**{k: v for k, v in asdict(c).items() if k != "gates"}, "passed": c.passed,
                    "gates": [{**asdict(g), "bound": g.bound, "seed_mean": g.seed_mean, "passed": g.passed}
                              for g in c.gates]} for c in self.checked]
        record = {"promoted": self.promoted, "status": "PROMOTED" if self.promoted else "NOT PROMOTED",
                  "note": self.note(), **asdict(self), "checked": checked, "selection_only": self.selection_only}
        return _json_safe(record)


def _failure(check: GateCheck) -> str:
    side = "lower" if check.op == ">=" else "upper"
    detail = check.note or (f"{side} bound {_fmt(check.bound)}" if not _clears(check.bound, check.op, check.threshold)
                            else f"mean over seeds {_fmt(check.seed_mean)}")
    return f"{check.metric} {check.op} {check.threshold:g} ({detail})"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _json_safe(value):
    """NaN and infinity become None: strict JSON (and PostgreSQL's json type) holds neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# -- gate logic (pure: per-example records in, checks out) -------------------------------------------
def bootstrap_intervals(records: Records, score: Score, metrics: list[str], samples: int, confidence: float,
                        seed: int) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap over examples: resample the records with replacement `samples` times, score each
    resample, and take the (1-c)/2 and (1+c)/2 quantiles of each metric. A resample in which a metric is
    undefined (a field that does not occur in it) is left out of that metric's interval."""
    rng = np.random.default_rng(seed)
    draws = np.full((samples, len(metrics)), np.nan)
    for b in range(samples):
        resample = [records[i] for i in rng.integers(0, len(records), len(records))]
        scores = score(resample)
        draws[b] = [scores.get(m, np.nan) for m in metrics]
    alpha = 1 - confidence
    intervals = {}
    for k, metric in enumerate(metrics):
        column = draws[:, k][~np.isnan(draws[:, k])]
        intervals[metric] = tuple(float(q) for q in np.quantile(column, [alpha / 2, 1 - alpha / 2])) \
            if column.size else (math.nan, math.nan)
    return intervals


def expand_gates(gates: list[Gate], fields: list[str]) -> list[tuple[Gate, str]]:
    """(gate, metric) pairs: `per_field_f1` becomes `f1_<field>` for every field."""
    return [(gate, metric) for gate in gates
            for metric in ([f"f1_{f}" for f in fields] if gate.metric == PER_FIELD_GATE else [gate.metric])]


def check_gates(records: Records, score: Score, settings: Promotion, fields: list[str], seed: int,
                holdout: dict | None = None) -> list[GateCheck]:
    """Every gate on these records: point value, bootstrap interval, pass or fail."""
    expanded = expand_gates(settings.gates, fields)
    unchecked = [GateCheck(str(g), PER_FIELD_GATE, g.op, g.threshold, None, None, None,
                           note="the data has no fields to check") for g in settings.gates
                 if g.metric == PER_FIELD_GATE and not fields]
    point = score(records)
    metrics = sorted({metric for _, metric in expanded})
    intervals = bootstrap_intervals(records, score, metrics, settings.bootstrap_samples, settings.confidence, seed)
    checks = []
    for gate, metric in expanded:
        low, high = intervals[metric]
        value = point.get(metric)
        note = "" if value is not None else f"{metric} cannot be computed: the field never occurs in this split"
        checks.append(GateCheck(str(gate), metric, gate.op, gate.threshold, _nan_to_none(value), _nan_to_none(low),
                                _nan_to_none(high), _nan_to_none((holdout or {}).get(metric)), note=note))
    return checks + unchecked


def _nan_to_none(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


# -- the promotion of a stored sweep -------------------------------------------------------------------
def settings_of(spec: Spec) -> Promotion:
    if spec.promotion is None:
        raise PromotionError(f"sweep {spec.name!r} has no `promotion:` gates in its spec; gates are fixed before a "
                             "sweep, so add them to the spec and run it under a new `name:`")
    return spec.promotion


class Workers(Protocol):
    """Where promotion's heavy steps run: `sweeper.controller.Workers` (Ray tasks holding one trial's resources)."""

    threads: int  # torch threads per step, as a trial has

    def run(self, step: Callable[[dict], object], jobs: list[dict]) -> list[tuple[object, dict]]:
        """step(job) for each job, side by side where there is room; (result, where it ran) per job."""


def promote(store: TrialStore, sweep_name: str, model_path: str, export_dir: Path, workers: Workers,
            log=print) -> PromotionResult:
    """Check the gates, record the outcome, and write the export (which says whether it was promoted).

    Predictions and seed re-trainings run on `workers`; the gates, the bootstrap, the record and the export here."""
    from trainers import task_module  # torch loads only when a promotion really runs

    sweep = store.get_sweep(sweep_name)
    if sweep is None:
        raise PromotionError(f"no sweep named {sweep_name!r} in the store")
    if problem := target_problem(export_dir, replace=True):  # refused now, not after the evaluation
        raise PromotionError(problem)
    spec = spec_from_store(sweep.spec)
    settings = settings_of(spec)
    ranked = store.ranked_trials(sweep_name)
    if not ranked:
        raise PromotionError(f"sweep {sweep_name!r} has no trial with a {sweep.objective_metric} value")
    split = "test" if spec.data.test else "holdout"
    sha256 = audited_sha256(sweep.audit) or {}  # the files the sweep's audit read, or DataChanged
    examples = read_examples(getattr(spec.data, split), spec.data.format, sha256.get(split))
    if not examples:
        raise PromotionError(f"data.{split} ({getattr(spec.data, split)}) has no usable rows to check the gates on")
    train = read_examples(spec.data.train, spec.data.format, sha256.get("train"))
    with_fields = isinstance(examples[0], FIELDS_EXAMPLES)  # fields to gate one by one (a class label is no field)
    fields = sorted({f for e in train + examples for f in labels_of(e)}) if with_fields else []
    module = task_module(spec.task)
    at_best = store.best_round_metrics(sweep_name)
    ran: list[dict] = []  # where each step ran, for the record

    def evaluate(trial) -> TrialCheck | None:
        recorded = store.best_checkpoint(trial)
        log(f"promotion: re-evaluating trial {trial.trial_key} (round {trial.best_round}) on the {split} split "
            f"({len(examples)} rows)")
        config = _config(sweep, spec, trial.params, model_path, "", torch_threads=workers.threads)
        job = {"config": config, "checkpoint": recorded, "storage": sweep.experiment_path or "", "examples": examples,
               "label": f"re-evaluating trial {trial.trial_key}"}
        [(records, where)] = workers.run(predict_checkpoint, [job])
        if records is None:  # the checkpoint is gone (looked for where the step ran, where the trials wrote it)
            if trial is ranked[0]:
                raise PromotionError(f"the best trial {trial.trial_key}'s checkpoint is missing "
                                     f"({recorded or 'never recorded'}); it cannot be re-evaluated")
            return None
        ran.append(_ran("predict", trial.trial_key, where, log))
        checks = check_gates(records, module.score, settings, fields, spec.seed, at_best.get(trial.trial_key, {}))
        return TrialCheck(trial.trial_key, trial.best_value, len(examples), checks)

    best = evaluate(ranked[0])
    result = PromotionResult(sweep_name, ranked[0].trial_key, split, settings.confidence, settings.bootstrap_samples,
                             [best])
    if best.passed and settings.seeds:
        result.seeds = [spec.seed + k for k in range(1, settings.seeds + 1)]
        ran += _add_seed_values(best, workers, sweep, spec, ranked[0], model_path, examples, result.seeds, log)
    if not result.promoted:
        for trial in ranked[1 : settings.candidates]:
            check = evaluate(trial)
            if check is not None:
                result.checked.append(check)
                if check.passed:
                    result.runner_up = trial.trial_key
                    break
    result.workers = ran
    result.export = str(export_sweep(store, sweep_name, export_dir, model_path, promotion=result.to_dict()))
    store.record_promotion(sweep_name, result.trial_key, result.promoted, split, result.to_dict(),
                           runner_up=result.runner_up or "", export_path=result.export)
    return result


def _ran(step: str, trial_key: str, where: dict, log, seed: int | None = None) -> dict:
    """One step's record: which, for what, and where it ran (Ray node id, host, pid)."""
    what = f"trial {trial_key}" + (f" seed {seed}" if seed is not None else "")
    log(f"promotion: {step} of {what} ran on node {where['node'][:12]} ({where['host']}, pid {where['pid']})")
    return {"step": step, "trial": trial_key, **({"seed": seed} if seed is not None else {}), **where}


def _config(sweep, spec: Spec, params: dict, model_path: str, output_dir: str, **overrides):
    """A trial's config, on the files the sweep's audit read."""
    return trial_config(spec, params, model_path, output_dir, audited_sha256(sweep.audit), **overrides)


def _add_seed_values(check: TrialCheck, workers: Workers, sweep, spec: Spec, trial, model_path: str, examples,
                     seeds: list[int], log) -> list[dict]:
    """Re-train the winner with other seeds for its best-round count, side by side on the workers, and score each
    on the same split. Returns where each ran."""
    log(f"promotion: re-training trial {trial.trial_key} with seed(s) {', '.join(map(str, seeds))} for "
        f"{trial.best_round} round(s)")
    jobs = [{"config": _config(sweep, spec, trial.params, model_path, "", seed=seed, max_rounds=trial.best_round,
                               torch_threads=workers.threads),
             "metric": sweep.objective_metric, "mode": sweep.objective_mode, "examples": examples,
             "label": f"re-training trial {trial.trial_key} with seed {seed}"} for seed in seeds]
    ran = []
    for seed, (scores, where) in zip(seeds, workers.run(retrain_seed, jobs)):
        for gate in check.gates:
            gate.seed_values.append(float(scores.get(gate.metric, math.nan)))
        ran.append(_ran("seed", trial.trial_key, where, log, seed))
    return ran


# -- the steps that run on a worker (plain functions of one job: no Ray here) ---------------------------
def predict_checkpoint(job: dict) -> Records | None:
    """The trial's predictions on the split, from its checkpoint as the worker sees it (a shared volume, or a
    download from object storage); None when the checkpoint is gone."""
    from trainers import task_module

    with checkpoints.local_copy(job["checkpoint"], job["storage"]) as checkpoint:
        if checkpoint is None:
            return None
        config = job["config"].model_copy(update={"output_dir": tempfile.gettempdir()})  # the worker's
        return task_module(config.task).predict(config, str(checkpoint), job["examples"])


def retrain_seed(job: dict) -> dict[str, float]:
    """One seed's re-training (in a temporary folder of the worker), scored on the split at its best holdout round."""
    from trainers import task_module
    from trainers.base import ListReporter

    module = task_module(job["config"].task)
    with tempfile.TemporaryDirectory(prefix="sweeper-seed-") as out:
        config = job["config"].model_copy(update={"output_dir": out})
        reporter = ListReporter()
        module.train(config, reporter)
        checkpoint = _best_saved_round(reporter, job["metric"], job["mode"])
        return module.score(module.predict(config, checkpoint, job["examples"]))


def _best_saved_round(reporter, metric: str, mode: str) -> str:
    """The checkpoint of the re-trained seed's best holdout round that is still on disk (selection on holdout)."""
    saved = [(r.metrics.get(metric, math.nan), c) for r, c in zip(reporter.rounds, reporter.checkpoints)
             if c and Path(c).is_dir()]
    if not saved:
        raise PromotionError("the seed's re-training kept no checkpoint to score")
    ranked = sorted(saved, key=lambda vc: (math.isnan(vc[0]), vc[0] if mode == "min" else -vc[0]))
    return ranked[0][1]
