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

from sweeper.spec import Spec
from sweeper.store import TrialStore
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
        self._started: dict[str, float] = {}
        self.study = load_study(spec, database_url)
        self.count = len(self.study.get_trials(deepcopy=False))
        self.resumed = self.count > 0
        # A fresh sampler with the spec's seed would propose the same first points again on a resume.
        self.study.sampler = sampler(spec, seed=spec.seed + self.count)
        store = TrialStore(database_url)
        try:  # unfinished trials first, in number order
            self.pending = [self._suggestion(trial, resume_from)
                            for trial, resume_from in reconcile(self.study, store, spec.name, checkpoint_exists)]
        finally:
            store.engine.dispose()
        self.live: dict[str, optuna.Trial] = {}  # the trials handed out in this run, by key

    def done(self) -> bool:
        """Nothing to resume and the budget is spent: this run has no trial to start."""
        return not self.pending and self.count >= self.spec.budget.trials

    def running(self) -> int:
        """Trials the study holds open: after a run, any such trial is left to resume."""
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def suggest(self) -> Suggestion | None:
        """The next trial, or None when the budget is spent, or when the time left could not buy it one round."""
        if self._too_late():
            self.out_of_time = True
            return None
        if self.pending:
            suggestion = self.pending.pop(0)
        elif self.count < self.spec.budget.trials:
            self.count += 1
            suggestion = self._suggestion(self.study.ask())
        else:
            return None
        self.live[suggestion.key] = suggestion.trial
        self._started[suggestion.key] = self.clock()
        return suggestion

    def _too_late(self) -> bool:
        """A trial started with less time left than the quickest first round seen so far would end with no round:
        compute spent for nothing. (The quickest, so a trial that could still reach a round is never held back.)"""
        if self.deadline is None or not self._first_round_s:
            return False
        return self.deadline - self.clock() < min(self._first_round_s)

    def _suggestion(self, trial: optuna.Trial, resume_from: str = "") -> Suggestion:
        """Sampling is define-by-run: on a trial a killed driver left half-sampled (or fully), each parameter it
        has keeps its value and the rest are sampled now; unmet conditions give their fixed values."""
        constants = self.spec.space().sample(trial)
        return Suggestion(trial_key(trial.number), trial, {**trial.params, **constants}, resume_from)

    def round_reported(self, key: str, round_: int, objective: float | None) -> None:
        if key in self._started:
            self._first_round_s.append(self.clock() - self._started.pop(key))
        if key in self.live and _finite(objective):
            self.live[key].report(objective, step=round_)

    def finished(self, key: str, objective: float | None, error: bool) -> None:
        """Close the trial in the study: FAIL on error, else COMPLETE with the best objective it reached
        (PRUNED when it reached none, e.g. stopped at the time budget before its first round)."""
        trial = self.live.pop(key, None)
        if trial is not None:
            tell(self.study, trial.number, objective, error)


def sampler(spec: Spec, seed: int) -> optuna.samplers.BaseSampler:
    # A few random points first, then TPE; constant_liar keeps concurrent trials from proposing one point.
    startup = max(2, min(10, spec.budget.trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)


def load_study(spec: Spec, database_url: str) -> optuna.Study:
    direction = "minimize" if spec.objective.mode == "min" else "maximize"
    return optuna.create_study(study_name=spec.name, storage=study_storage(database_url), direction=direction,
                               sampler=sampler(spec, spec.seed), load_if_exists=True)


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
