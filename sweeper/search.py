"""The sweep's search: what to try next and what a finished trial scored, on the sweep's Optuna study (no Ray).

The study and the trial store are the source of truth, never Tune's experiment state, which lags them by up to
a snapshot: every driver run starts a fresh Tune experiment, and `SweepSearch` first hands it the trials a killed
driver left unfinished (same Optuna trial, same parameters, continued from their last recorded checkpoint), then
new points until the study holds `budget.trials` trials. A trial's key is its Optuna number, so it stays the same
across driver runs, and each trial is counted once however often it is resumed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import TrialState

from sweeper.spec import Spec, SpecError, budget_extension_errors, spec_from_store, stored_spec
from sweeper.store import TrialStore, full_url, remember_url
from sweeper.study import study_storage
from sweeper.trial_status import FINISHED, STATUS_BY_REASON


def trial_key(number: int) -> str:
    return f"t{number:04d}"


@dataclass(frozen=True)
class Suggestion:
    key: str
    trial: optuna.Trial  # the Optuna trial it reports to
    params: dict
    resume_from: str = ""  # a checkpoint to continue from; '' starts the trial fresh


class SweepSearch:
    """Proposes the sweep's trials and records their outcome in the study; one instance per driver run."""

    def __init__(self, spec: Spec, database_url: str, checkpoint_exists: Callable[[str], bool] = os.path.isdir,
                 clock: Callable[[], float] = time.monotonic):
        self.spec, self.clock = spec, clock
        budget = spec.budget.time_budget_s
        self.deadline = clock() + budget if budget else None  # Tune's own deadline starts with fit(), just after
        self.out_of_time = False  # a trial started now could not reach its first round before the deadline
        self._first_round_s: list[float] = []  # from a trial's start to its first round, in this run
        self._ratios: list[float] = []  # measured / estimated first rounds, in this run
        self._started: dict[str, tuple[float, float | None]] = {}  # key -> (start, its estimated first round)
        self._estimate: Callable[[dict | None], float] | None = None
        self.study = load_study(spec, database_url)
        self.database_url = remember_url(database_url)  # pickled with Tune's state: no password
        started = self.study.get_trials(deepcopy=False, states=STARTED)
        self.count = len(started)  # enqueued configurations not yet asked for are not trials yet
        self.resumed = self.count > 0
        enqueue_known(self.study, spec)
        # A fresh sampler with the spec's seed would propose the same first points again on a resume, and one seeded by
        # the trial count alone repeats a run's draws when that run asked no trial (killed while it sampled a trial a
        # driver left unsampled: the next run's first new trial got that trial's very point). Trials plus earlier
        # runs grows with every run, so each run has its own seed; a sweep never interrupted keeps the spec's seed.
        runs = self.study.user_attrs.get(DRIVER_RUNS, 0)
        self.study.set_user_attr(DRIVER_RUNS, runs + 1)
        self.study.sampler = sampler(spec, seed=sampler_seed(spec) + self.count + runs)
        self.waiting_for_compute = False  # max_compute is held by running trials: ask again when one ends
        self._planned: dict[str, float] = {}  # live trial key -> the epochs it was started for
        store = TrialStore(database_url)
        try:  # unfinished trials first, in number order
            self.pending = [self._suggestion(trial, resume_from)
                            for trial, resume_from in reconcile(self.study, store, spec.name, checkpoint_exists)]
        finally:
            store.engine.dispose()
        self.live: dict[str, optuna.Trial] = {}  # the trials handed out in this run, by key

    def done(self) -> bool:
        """Nothing to resume and the budget is spent: this run has no trial to start."""
        return not self.pending and (self.count >= self.spec.budget.trials or self._compute_used(committed=False)
                                     >= (self.spec.budget.max_compute or math.inf))

    def running(self) -> int:
        """Trials the study holds open: after a run, any such trial is left to resume."""
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def admit_by(self, first_round_s: Callable[[dict | None], float]) -> None:
        """Admit trials by an estimate of their first round (sweeper.budget.Plan.first_round_s: of a trial's params,
        or with None of the quickest trial), so the first trials of a run are admitted by it too, not only those
        after a measured round. The deadline starts now: the estimate (a probe) is not the sweep's time."""
        self._estimate = first_round_s
        if self.deadline is not None:
            self.deadline = self.clock() + self.spec.budget.time_budget_s

    def suggest(self) -> Suggestion | None:
        """The next trial, or None when the budget is spent, or when the time left could not buy it one round."""
        if self._too_late(None):
            self.out_of_time = True
            return None
        if self.pending:  # a resumed trial goes on from its checkpoint: the quickest estimate above admitted it
            suggestion = self.pending.pop(0)
        elif self.count < self.spec.budget.trials and not self._compute_spent():
            self.count += 1
            suggestion = self._suggestion(self.study.ask())
            if self._too_late(suggestion.params):
                # Sampled a shape too slow for the time left: never started, closed as pruned (it reached no round).
                suggestion.trial.set_user_attr("not_started", "its first round could not end before the time budget")
                tell(self.study, suggestion.trial.number, None, error=False)
                self.out_of_time = True
                return None
        else:
            return None
        self.live[suggestion.key] = suggestion.trial
        self._planned[suggestion.key] = float(suggestion.params.get("num_epochs") or self.spec.fixed["num_epochs"])
        self._started[suggestion.key] = (self.clock(), self._estimate(suggestion.params) if self._estimate else None)
        return suggestion

    def first_round_needed(self, params: dict | None) -> float | None:
        """Seconds a trial with `params` (None: the quickest trial) needs to reach its first round, or None when
        nothing is known yet. With an estimate: scaled by the smallest measured/estimated ratio of this run's trials
        (measured rounds correct the probe); without: the quickest first round measured so far. The smallest, so a
        trial that could still reach a round is never held back."""
        if self._estimate is not None:
            return self._estimate(params) * min(self._ratios, default=1.0)
        return min(self._first_round_s) if self._first_round_s else None

    def _too_late(self, params: dict | None) -> bool:
        """A trial started with less time left than it needs to reach its first round would end with no round:
        compute spent for nothing."""
        needed = self.first_round_needed(params)
        if self.deadline is None or needed is None:
            return False
        return self.deadline - self.clock() < needed

    def _compute_spent(self) -> bool:
        """`budget.max_compute` is reached by what the trials spent and what the running ones are started for."""
        limit = self.spec.budget.max_compute
        self.waiting_for_compute = False
        if limit is None or self._compute_used(committed=True) < limit:
            return False
        self.waiting_for_compute = bool(self.live) and self._compute_used(committed=False) < limit
        return True

    def _compute_used(self, committed: bool) -> float:
        if self.spec.budget.max_compute is None:
            return 0.0
        store = TrialStore(full_url(self.database_url))
        try:
            rows = store.trials(self.spec.name)
        finally:
            store.engine.dispose()
        return compute_used(rows, self._planned if committed else {}, self.spec.scheduler.evals_per_epoch,
                            self.spec.budget.compute_unit)

    def _suggestion(self, trial: optuna.Trial, resume_from: str = "") -> Suggestion:
        """Sampling is define-by-run: on a trial a killed driver left half-sampled (or fully), each parameter it
        has keeps its value and the rest are sampled now; unmet conditions give their fixed values."""
        constants = self.spec.space().sample(trial)
        return Suggestion(trial_key(trial.number), trial, {**trial.params, **constants}, resume_from)

    def round_reported(self, key: str, round_: int, objective: float | None) -> None:
        if key in self._started:
            started, estimated = self._started.pop(key)
            self._first_round_s.append(self.clock() - started)
            if estimated:
                self._ratios.append(self._first_round_s[-1] / estimated)
        if key in self.live and _finite(objective):
            self.live[key].report(objective, step=round_)

    def finished(self, key: str, objective: float | None, error: bool) -> None:
        """Close the trial in the study: FAIL on error, else COMPLETE with the best objective it reached
        (PRUNED when it reached none, e.g. stopped at the time budget before its first round)."""
        trial = self.live.pop(key, None)
        self._planned.pop(key, None)
        if trial is not None:
            tell(self.study, trial.number, objective, error)


STARTED = tuple(s for s in TrialState if s != TrialState.WAITING)
ENQUEUED = "sweeper_enqueued"  # user attribute: the index in `search.enqueue` a trial was enqueued from
DRIVER_RUNS = "sweeper_driver_runs"  # study user attribute: how many driver runs have sampled from the study


def trial_compute(row, evals_per_epoch: int, unit: str) -> float:
    """What a trial of the store has spent: epochs (its rounds / evaluations per epoch) or input tokens."""
    return float(row.tokens_seen) if unit == "tokens" else row.rounds / evals_per_epoch


def compute_used(rows: list, planned: dict[str, float], evals_per_epoch: int, unit: str) -> float:
    """Compute the trials spent, plus what the running ones in `planned` (key -> epochs started for) will spend
    if they train to their end (tokens: at the rate per epoch they, or else the other trials, trained at)."""
    spent = {row.trial_key: trial_compute(row, evals_per_epoch, unit) for row in rows}
    epochs = {row.trial_key: row.rounds / evals_per_epoch for row in rows}
    rated, mean_rate = [], 0.0
    if unit == "tokens":
        rated = [k for k in spent if epochs[k] > 0 and spent[k] > 0]
        mean_rate = sum(spent[k] / epochs[k] for k in rated) / len(rated) if rated else 0.0
    total = sum(spent.values())
    for key, planned_epochs in planned.items():
        if unit == "tokens":
            rate = spent[key] / epochs[key] if key in rated else mean_rate
            total += max(0.0, planned_epochs * rate - spent.get(key, 0.0))
        else:
            total += max(0.0, planned_epochs - spent.get(key, 0.0))
    return total


def extend_budget(store: TrialStore, spec: Spec, token: str | None = None) -> bool:
    """A recorded sweep run again with only its budget raised (budget.trials, max_compute, time_budget_s) goes on
    with its study: the recorded spec becomes this one, and a completed sweep runs again. True when it did; a
    SpecError when the spec differs otherwise or gives less than the sweep has spent (the store's own check
    refuses any other spec change). Decided under the sweep's claim (`token`: one handed over by the service), so
    never under a driver running the sweep with its old budget."""
    sweep = store.get_sweep(spec.name)
    if sweep is None or sweep.spec_fingerprint == spec.fingerprint() or not sweep.spec:
        return False
    held = store.claim(spec.name, token=token or None)  # ClaimHeld while another driver runs the sweep
    try:
        return _extend_budget(store, spec, store.get_sweep(spec.name))
    finally:
        store.release(spec.name, held)


def _extend_budget(store: TrialStore, spec: Spec, sweep) -> bool:
    try:
        old = spec_from_store(sweep.spec)
    except SpecError:
        return False  # a stored spec this version cannot read: the store refuses the change as any other
    rows = store.trials(spec.name)
    spent = sum(trial_compute(r, old.scheduler.evals_per_epoch, spec.budget.compute_unit) for r in rows)
    errors = budget_extension_errors(old, spec, len(rows), spent)
    if errors:
        raise SpecError(errors, f"sweep {spec.name!r} already exists with a different spec")
    status = "interrupted" if sweep.status == "completed" else sweep.status
    store.update_sweep(spec.name, spec=stored_spec(spec), spec_fingerprint=spec.fingerprint(), status=status,
                       message="given more budget: continues its study")
    return True


def sampler_seed(spec: Spec) -> int:
    return spec.search.seed if spec.search.seed is not None else spec.seed


def startup_trials(spec: Spec) -> int:
    """Random trials before the model-based samplers take over."""
    if spec.search.startup_trials is not None:
        return spec.search.startup_trials
    return max(2, min(10, spec.budget.trials // 3))


def sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    """The spec's `search.sampler`, seeded; TPE's constant_liar keeps concurrent trials from proposing one point."""
    kind = spec.search.sampler
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler(grid(spec.space()), seed=seed)
    if kind == "gp":  # scipy-backed: Optuna imports it when the sampler is made
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(spec),
                                         warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec), constant_liar=True)


GRID_LEVELS = 4  # values per float range (and per int range wider than that)


def grid(space) -> dict[str, list]:
    """Every parameter on a few values: a categorical's choices, ranges at GRID_LEVELS even (or log-even) points."""
    from search_spaces.space import CategoricalParam, IntParam

    out = {}
    for name, p in space.params.items():
        if isinstance(p, CategoricalParam):
            out[name] = list(p.choices)
        elif isinstance(p, IntParam) and p.high - p.low < GRID_LEVELS:
            out[name] = list(range(p.low, p.high + 1))
        else:
            lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
            points = [lo + (hi - lo) * i / (GRID_LEVELS - 1) for i in range(GRID_LEVELS)]
            points = [p.low, *(math.exp(x) if p.log else x for x in points[1:-1]), p.high]  # the ends exact
            out[name] = sorted({int(round(x)) for x in points}) if isinstance(p, IntParam) else points
    return out


def enqueue_known(study: optuna.Study, spec: Spec) -> None:
    """`search.enqueue`'s configurations, tried first through Optuna's own queue; each once, however often the
    driver is restarted (a trial remembers the entry it came from, asked or still waiting)."""
    done = {t.user_attrs.get(ENQUEUED) for t in study.get_trials(deepcopy=False)}
    for i, params in enumerate(spec.search.enqueue):
        if i not in done:
            study.enqueue_trial(params, user_attrs={ENQUEUED: i})


def load_study(spec: Spec, database_url: str) -> optuna.Study:
    direction = "minimize" if spec.objective.mode == "min" else "maximize"
    return optuna.create_study(study_name=spec.name, storage=study_storage(database_url), direction=direction,
                               sampler=sampler(spec, sampler_seed(spec)), load_if_exists=True)


def tell(study: optuna.Study, number: int, objective: float | None, error: bool) -> None:
    if error:
        study.tell(number, state=TrialState.FAIL)
    elif _finite(objective):
        study.tell(number, objective)
    else:
        study.tell(number, state=TrialState.PRUNED)


def reconcile(study: optuna.Study, store: TrialStore, sweep: str,
              checkpoint_exists: Callable[[str], bool] = os.path.isdir) -> list[tuple[optuna.Trial, str]]:
    """Bring the study and the store into agreement after a driver died; return the trials to resume, each with
    its newest checkpoint ('' for none).

    A trial finished in one but not the other (the driver died between the two writes) is closed in the other;
    a trial unfinished in both is resumed from its newest checkpoint still on disk."""
    rows = {t.trial_key: t for t in store.trials(sweep)}
    by_key = {trial_key(t.number): t for t in study.get_trials(deepcopy=False)}
    pending = []
    for key, trial in by_key.items():
        row = rows.get(key)
        if trial.state != TrialState.RUNNING:
            if row is not None and row.status not in FINISHED:
                _settle_from_study(store, sweep, row, trial)
        elif row is not None and row.status in FINISHED:
            tell(study, trial.number, row.best_value, row.status == "failed")
        else:
            pending.append((optuna.Trial(study, trial._trial_id), _newest_checkpoint(store, sweep, key, checkpoint_exists)))
    for key, row in rows.items():  # a row without a study trial: not one this module keys (older sweeps)
        if key not in by_key and row.status not in FINISHED:
            store.trial_finished(sweep, key, "failed", "error", "lost: its driver died and the study has no record")
    return pending


def _settle_from_study(store: TrialStore, sweep: str, row, trial: optuna.trial.FrozenTrial) -> None:
    if trial.state == TrialState.FAIL:
        store.trial_finished(sweep, row.trial_key, "failed", "error", row.error or "failed (its driver died)")
        return
    last = store.trial_rounds(sweep, row.trial_key)[-1:] or [None]
    reason = (last[0].bookkeeping.get("stop_reason") if last[0] else "") or "asha"
    store.trial_finished(sweep, row.trial_key, STATUS_BY_REASON.get(reason, "stopped"), reason)


def _newest_checkpoint(store: TrialStore, sweep: str, key: str, exists: Callable[[str], bool]) -> str:
    """Tune keeps a trial's latest checkpoint and its best two; an older recorded one may be gone."""
    for round_ in reversed(store.trial_rounds(sweep, key)):
        if round_.checkpoint and exists(round_.checkpoint):
            return round_.checkpoint
    return ""


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def close_stopped_trials(study_name: str, database_url: str) -> None:
    """Close the Optuna trials that Tune stopped at the time budget: no completion reached the searcher, so
    they stay RUNNING. Closed as `tell` closes any: COMPLETE with the last objective they reported (the best so
    far), or PRUNED when they reported none."""
    study = optuna.load_study(study_name=study_name, storage=study_storage(database_url))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        values = trial.intermediate_values
        tell(study, trial.number, values[max(values)] if values else None, error=False)
