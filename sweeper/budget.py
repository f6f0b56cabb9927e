"""What a sweep's budget buys, measured before the sweep: a short timed probe of the real trainer, and the plan.

The probe trains a few optimizer steps and runs one holdout evaluation of two shapes (the smallest and the largest
batch size the space allows: the slowest round and the fastest), on the real trainer and model, on the machine that
will train (`sweeper run`: a Ray task with a trial's resources, sweeper.controller; `sweeper validate --probe`:
in this process). From it a `CostModel` estimates, for any trial, the seconds of a round (the round's training
steps plus one holdout evaluation and its checkpoint) and of the start-up before its first step; a step's time is
fitted as fixed + per-example x batch size, the steps of a round follow from the training rows, the batch size and
`scheduler.evals_per_epoch`. The `Plan` turns that into what the user needs to decide: the cost of a trial, how
many trials and rounds `budget.time_budget_s` buys at `budget.max_concurrent`, where the first ASHA rung lands and
what filling it costs for `budget.trials`, with a warning naming the setting to change when it cannot be filled.
The controller also admits trials with it: none is started that could not reach its first round before the
deadline (sweeper.search). No Ray here.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field

from search_spaces.space import CategoricalParam, FloatParam, IntParam
from sweeper.spec import Spec

PROBE_STEPS = 5  # optimizer steps a probe trains each shape: enough to time a step, few enough to stay cheap
MAX_VALUES = 64  # an int range of batch sizes or epochs is weighed on at most this many of its values


# -- the probe: runs where a trial runs -----------------------------------------------------------------------
class ProbeReporter:
    """A reporter that keeps the first round's record and when it came."""

    def __init__(self):
        self.started = time.perf_counter()
        self.record = None
        self.reported_s: float | None = None

    def report(self, record, checkpoint_dir):
        if self.record is None:
            self.record, self.reported_s = record, time.perf_counter() - self.started

    def resume_from(self):
        return None

    def stop_requested(self):
        return False


def probe_params(spec: Spec, batch_size: int) -> dict:
    """A complete set of hyperparameters with `batch_size`: the search space's first choice or lowest value of
    every other parameter, but the largest LoRA rank (the costliest adapter); conditions unmet take `otherwise`."""
    params: dict = {}
    for name, param in spec.space().params.items():
        if param.when and any(params.get(k, spec.fixed.get(k)) not in v for k, v in param.when.items()):
            params[name] = param.otherwise
        elif name == "lora_r":
            params[name] = spec.space().upper_bound(name)
        elif isinstance(param, CategoricalParam):
            params[name] = param.choices[0]
        else:
            params[name] = param.low
    if "batch_size" not in spec.fixed:
        params["batch_size"] = batch_size
    return params


def probe_shapes(spec: Spec) -> list[dict]:
    """The shapes the probe times: the smallest and the largest batch size (one when it is fixed)."""
    batches = sorted({b for b, _ in _weighted(spec, "batch_size")})
    return [probe_params(spec, b) for b in dict.fromkeys((batches[0], batches[-1]))]


def run_probe(template: dict, shapes: list[dict], steps: int = PROBE_STEPS) -> list[dict]:
    """Train each shape for about `steps` optimizer steps and one holdout evaluation, with the trial's own trainer
    and config (`template`: sweeper.trial_config.template); returns one measurement per shape, as plain values.

    The shape's round is made `steps` long by raising its evaluations per epoch, and the trial stops after it
    (max_rounds 1); what the round cost comes from the trainer's own timings in its record."""
    from sweeper.trial_config import complete
    from trainers import trainer_for

    measured = []
    for params in shapes:
        with tempfile.TemporaryDirectory(prefix="sweeper-probe-") as output_dir:
            config = complete(template, params, output_dir, max_rounds=1)
            rows = len(config.data.read("train"))
            per_epoch = math.ceil(rows / config.hparams.batch_size)
            config = config.model_copy(update={"evals_per_epoch": max(1, math.ceil(per_epoch / steps))})
            reporter = ProbeReporter()
            trainer_for(config.task)(config, reporter)
            wall_s = time.perf_counter() - reporter.started
        measured.append(measurement(config.hparams.batch_size, rows, reporter, wall_s))
    return measured


def measurement(batch_size: int, examples: int, reporter: ProbeReporter, wall_s: float) -> dict:
    """What a probe of one shape measured. A trainer that does not time its steps (no `time_train_s`: the
    synthetic task) is measured by its round's wall time alone."""
    if reporter.record is None:
        raise ProbeError(f"the probe of batch size {batch_size} reported no round")
    book = reporter.record.bookkeeping
    steps = max(1, reporter.record.steps(batch_size))
    train_s, first_s = book.get("time_train_s"), book.get("time_first_step_s")
    step_s = None if train_s is None else train_s / steps
    if train_s is not None and first_s is not None and steps > 1:
        step_s = (train_s - first_s) / (steps - 1)  # a step once warm: the first one's warm-up is start-up
    return {"batch_size": batch_size, "steps": steps, "first_report_s": reporter.reported_s, "wall_s": wall_s,
            "train_s": train_s, "step_s": step_s,
            "eval_s": sum(book.get(k, 0.0) for k in ("time_eval_s", "time_checkpoint_s", "time_report_s")),
            "train_rows": int(book.get("train_rows") or examples), "device": book.get("device", "")}


class ProbeError(RuntimeError):
    """The probe could not measure a round."""


# -- the cost model ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostModel:
    """Seconds of a trial's rounds, from a probe. `round_flat_s` set: every round costs that (a trainer that does
    not time its steps), else a round is its steps x (step_fixed_s + step_example_s x batch) + eval_s."""

    train_rows: int
    evals_per_epoch: int
    startup_s: float  # from a trial's start to its first training step (process, model, data)
    eval_s: float  # one holdout evaluation and the round's checkpoint
    step_fixed_s: float = 0.0
    step_example_s: float = 0.0
    round_flat_s: float | None = None
    device: str = ""

    @classmethod
    def fit(cls, measured: list[dict], evals_per_epoch: int, overhead_s: float = 0.0) -> CostModel:
        """From `run_probe`'s measurements; `overhead_s`: what starting the probe cost beyond its shapes (a Ray
        task's process start), paid by every trial that starts in a fresh process."""
        rows, device = max(m["train_rows"] for m in measured), measured[0]["device"]
        if any(m["train_s"] is None for m in measured):
            return cls(rows, evals_per_epoch, overhead_s, 0.0, round_flat_s=max(m["first_report_s"] for m in measured),
                       device=device)
        eval_s = statistics.mean(m["eval_s"] for m in measured)
        # The start-up of the second shape has no first imports in it, as a reused worker's trials have none; the
        # first step's warm-up is part of it.
        startup_s = min(m["first_report_s"] - m["steps"] * m["step_s"] - m["eval_s"] for m in measured)
        fixed, per_example = step_line([(m["batch_size"], m["step_s"]) for m in measured])
        return cls(rows, evals_per_epoch, max(0.0, startup_s) + overhead_s, eval_s, fixed, per_example, device=device)

    def round_steps(self, batch_size: int) -> int:
        """Optimizer steps between two evaluations, as trainers/hf_loop.py schedules them."""
        return max(1, math.ceil(math.ceil(self.train_rows / batch_size) / self.evals_per_epoch))

    def step_s(self, batch_size: int) -> float:
        return self.step_fixed_s + self.step_example_s * batch_size

    def round_s(self, batch_size: int) -> float:
        if self.round_flat_s is not None:
            return self.round_flat_s
        return self.round_steps(batch_size) * self.step_s(batch_size) + self.eval_s

    def first_round_s(self, batch_size: int) -> float:
        return self.startup_s + self.round_s(batch_size)

    def trial_s(self, batch_size: int, epochs: int) -> float:
        """A trial that runs to its last round."""
        return self.startup_s + epochs * self.evals_per_epoch * self.round_s(batch_size)

    def rung_s(self, batch_size: int, grace: int, unit: str) -> float:
        """A trial's seconds to its first ASHA rung: `grace` rounds, or the first round at or past `grace` steps."""
        rounds = grace if unit == "rounds" else math.ceil(grace / self.round_steps(batch_size))
        return self.startup_s + rounds * self.round_s(batch_size)

    def to_dict(self) -> dict:
        return asdict(self)


def step_line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed, per-example) seconds of a step, through the (batch size, seconds a step) points: a line through two
    batch sizes, proportional through one. Neither part negative (a noisy probe must not make big batches free)."""
    by_batch: dict[int, list[float]] = {}
    for batch, seconds in points:
        by_batch.setdefault(batch, []).append(seconds)
    if len(by_batch) == 1:
        [(batch, seconds)] = by_batch.items()
        return 0.0, statistics.mean(seconds) / batch
    (low, low_s), (high, high_s) = [(b, statistics.mean(s)) for b, s in sorted(by_batch.items())][::len(by_batch) - 1]
    per_example = max(0.0, (high_s - low_s) / (high - low))
    fixed = max(0.0, low_s - per_example * low)
    if fixed == 0.0:  # the line went below zero at batch 0: proportional through the larger point instead
        per_example = high_s / high
    return fixed, per_example


# -- the plan ----------------------------------------------------------------------------------------------
def _weighted(spec: Spec, name: str) -> list[tuple[int, float]]:
    """(value, probability) of a hyperparameter under random sampling: fixed, a choice, or an int range."""
    if name in spec.fixed:
        return [(int(spec.fixed[name]), 1.0)]
    param = spec.space().params[name]
    if isinstance(param, CategoricalParam):
        values = [int(v) for v in param.choices]
    elif isinstance(param, (IntParam, FloatParam)):
        low, high = int(math.ceil(param.low)), int(param.high)
        values = sorted({round(low + (high - low) * i / (MAX_VALUES - 1)) for i in range(MAX_VALUES)}) \
            if high - low >= MAX_VALUES else list(range(low, high + 1))
    else:  # pragma: no cover - the space's types are the three above
        raise TypeError(name)
    if param.when:
        values.append(int(param.otherwise))  # some conditions unmet: weighed as one more value
    return [(v, 1.0 / len(values)) for v in values]


@dataclass
class Plan:
    """What the spec's budget buys, by the cost model; `lines()` says it, `warnings` what to change."""

    spec: Spec
    model: CostModel
    shapes: list[tuple[int, int, float]] = field(default_factory=list)  # (batch, epochs, probability)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, spec: Spec, model: CostModel) -> Plan:
        shapes = [(b, e, pb * pe) for b, pb in _weighted(spec, "batch_size") for e, pe in _weighted(spec, "num_epochs")]
        plan = cls(spec, model, shapes)
        plan.warnings = plan._warnings()
        return plan

    def _mean(self, cost) -> float:
        return sum(p * cost(b, e) for b, e, p in self.shapes)

    def _range(self, cost) -> tuple[float, float]:
        costs = [cost(b, e) for b, e, _ in self.shapes]
        return min(costs), max(costs)

    @property
    def trial_s(self) -> float:
        return self._mean(self.model.trial_s)

    @property
    def round_s(self) -> float:
        return self._mean(lambda b, e: self.model.round_s(b))

    def rung_s(self) -> float:
        """A trial's mean seconds to the first ASHA rung."""
        scheduler = self.spec.scheduler
        return self._mean(lambda b, e: min(self.model.rung_s(b, scheduler.grace_period, scheduler.rung_unit),
                                           self.model.trial_s(b, e)))

    def first_round_s(self, params: dict | None = None) -> float:
        """Seconds from a trial's start to its first round: of the trial with `params`; with None, of the quickest
        trial the space allows (admission then holds back no trial that could reach its first round)."""
        if params is None:
            return min(self.model.first_round_s(b) for b, _, _ in self.shapes)
        batch = params.get("batch_size", self.spec.fixed.get("batch_size"))
        return self.model.first_round_s(int(batch)) if batch else self.first_round_s()

    def fill_rung_s(self) -> float:
        """Wall seconds for `budget.trials` trials to reach the first rung at `budget.max_concurrent`."""
        budget = self.spec.budget
        return math.ceil(budget.trials / budget.max_concurrent) * self.rung_s()

    def _warnings(self) -> list[str]:
        budget, scheduler, warnings = self.spec.budget, self.spec.scheduler, []
        if scheduler.type == "asha" and scheduler.rung_unit == "steps":
            longest = max(e * self.model.evals_per_epoch * self.model.round_steps(b) for b, e, _ in self.shapes)
            if scheduler.grace_period >= longest:
                warnings.append(f"scheduler.grace_period: {scheduler.grace_period} steps, but the longest trial trains "
                                f"~{longest}: ASHA would never stop a trial; lower it")
        if not budget.time_budget_s:
            return warnings
        slowest = max(self.shapes, key=lambda s: self.model.first_round_s(s[0]))[0]
        if self.model.first_round_s(slowest) > budget.time_budget_s:
            warnings.append(f"budget.time_budget_s: a trial of batch size {slowest} needs ~{_s(self.model.first_round_s(slowest))} "
                            f"to reach its first round, more than the {_s(budget.time_budget_s)} budget: raise "
                            f"budget.time_budget_s, or raise scheduler.evals_per_epoch for shorter rounds")
        if scheduler.type != "asha":
            return warnings
        fill = self.fill_rung_s()
        if fill > budget.time_budget_s:
            reach = max(1, int(budget.time_budget_s / self.rung_s()) * budget.max_concurrent)
            cheaper = ("scheduler.grace_period (fewer steps)" if scheduler.rung_unit == "steps" else
                       f"scheduler.grace_period: {scheduler.grace_period} round(s), or measure it in steps "
                       "(scheduler.rung_unit: steps, a small grace_period) with more scheduler.evals_per_epoch")
            warnings.append(f"budget.time_budget_s: {_s(budget.time_budget_s)} cannot fill the first ASHA rung for "
                            f"budget.trials ({budget.trials}): a trial needs ~{_s(self.rung_s())} to reach it, "
                            f"{budget.trials} trials at {budget.max_concurrent} at a time ~{_s(fill)}, so only about "
                            f"{min(reach, budget.trials)} reach it and ASHA has little to compare. Raise "
                            f"budget.time_budget_s to at least {math.ceil(fill)}, lower budget.trials to "
                            f"{min(reach, budget.trials)}, or make the rung cheaper: {cheaper}")
        return warnings

    def lines(self) -> list[str]:
        model, spec, budget = self.model, self.spec, self.spec.budget
        batches = sorted({b for b, _, _ in self.shapes})
        low, high = self._range(model.trial_s)
        by_cost = sorted(dict.fromkeys((batches[0], batches[-1])), key=model.round_s)
        rounds = "a round " + " to ".join(f"{_s(model.round_s(b))} (batch {b})" for b in by_cost)
        probe = (f"probe on {model.device or 'this machine'}: start-up {_s(model.startup_s)}, "
                 + (f"a round {_s(model.round_flat_s)}" if model.round_flat_s is not None else
                    f"a training step {model.step_s(batches[0]):.3g} s (batch {batches[0]})"
                    + (f" to {model.step_s(batches[-1]):.3g} s (batch {batches[-1]})" if len(batches) > 1 else "")
                    + f", a holdout evaluation {_s(model.eval_s)}"))
        lines = [probe, f"estimate: {rounds}; a trial {_s(low)} to {_s(high)}, {_s(self.trial_s)} on average "
                        f"({spec.scheduler.evals_per_epoch} round(s) an epoch)"]
        if budget.time_budget_s:
            slots = budget.time_budget_s * budget.max_concurrent
            lines.append(f"budget: {_s(budget.time_budget_s)} x {budget.max_concurrent} at a time buys ~{slots / self.trial_s:.1f} "
                         f"whole trials ({slots / high:.1f} to {slots / low:.1f}) or ~{slots / self.round_s:.0f} rounds; "
                         f"budget.trials asks for {budget.trials}")
        else:
            total = math.ceil(budget.trials / budget.max_concurrent) * self.trial_s
            lines.append(f"no time budget: {budget.trials} trials at {budget.max_concurrent} at a time take ~{_s(total)} "
                         "if every trial runs to its last round (ASHA and patience stop some sooner)")
        if spec.scheduler.type == "asha":
            unit = "round(s)" if spec.scheduler.rung_unit == "rounds" else "training steps"
            lands = f"first ASHA rung at {spec.scheduler.grace_period} {unit}"
            if spec.scheduler.rung_unit == "steps":
                lands += " (" + ", ".join(f"round {math.ceil(spec.scheduler.grace_period / model.round_steps(b))} "
                                          f"of batch {b}" for b in dict.fromkeys((batches[0], batches[-1]))) + ")"
            lines.append(f"{lands}: ~{_s(self.rung_s())} a trial; {budget.trials} trials reach it in ~{_s(self.fill_rung_s())}")
        return lines + [f"warning: {w}" for w in self.warnings]


def _s(seconds: float) -> str:
    """Seconds as a person reads them: 42 s, 12.5 min, 3.1 h."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
