"""`sweeper compare`: the trials of one or more sweeps side by side, from the trial store.

One row per trial with its holdout metrics at its **best** round (the round the export would take), its
hyperparameters, status and stop reason. Rows can be filtered by status and sorted by any metric,
parameter or field; the best trial of each sweep is marked. Plain data in, plain data out: the CLI
renders rows as a table, CSV or JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from sweeper.store import StoreError, TrialStore, ranked, safe_url

FIELDS = ("sweep", "trial", "status", "stop_reason", "rounds", "best_round", "objective_metric", "objective",
          "is_best", "wall_time_s", "retries")
TrialStatus = Literal["running", "completed", "early_stopped", "stopped", "failed"]
STATUSES = get_args(TrialStatus)


class CompareError(ValueError):
    """A comparison that cannot be made as asked (unknown sweep, sort key or status)."""


def finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TrialRow:
    sweep: str
    trial: str
    status: str
    stop_reason: str
    rounds: int
    best_round: int | None
    objective_metric: str
    objective_mode: str
    objective: float | None  # the best value of the objective over the trial's rounds
    is_best: bool
    wall_time_s: float
    retries: int
    metrics: dict[str, float] = field(default_factory=dict)  # holdout metrics at the best round
    params: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def value(self, key: str) -> Any:
        """A field, a metric at the best round or a parameter (`param.NAME` or plain NAME), or None."""
        if key in FIELDS:
            return getattr(self, key)
        if key in self.metrics:
            return self.metrics[key]
        name = key.removeprefix("param.")
        return self.params.get(name)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["error"] = data["error"].strip().splitlines()[-1] if data["error"].strip() else ""
        return data


def sort_keys(rows: list[TrialRow]) -> list[str]:
    """Every key rows can be sorted by."""
    metrics = sorted({k for r in rows for k in r.metrics})
    params = sorted({k for r in rows for k in r.params})
    return [*FIELDS, *metrics, *(f"param.{p}" for p in params)]


def default_descending(key: str, rows: list[TrialRow]) -> bool:
    """Best first: the objective in its sweep's direction, losses ascending, other metrics descending."""
    if key == "objective":
        return any(r.objective_mode == "max" for r in rows)
    if any(key in r.metrics for r in rows):
        return not key.endswith("loss")
    return False


def sort_rows(rows: list[TrialRow], key: str = "objective", descending: bool | None = None) -> list[TrialRow]:
    """Rows sorted by `key`; rows without a value for it go last, whatever the direction."""
    if rows and key not in sort_keys(rows) and not any(r.value(key) is not None for r in rows):
        raise CompareError(f"cannot sort by {key!r}; known keys: {', '.join(sort_keys(rows))}")
    if descending is None:
        descending = default_descending(key, rows)
    present = [r for r in rows if r.value(key) is not None]
    missing = [r for r in rows if r.value(key) is None]
    numeric = all(finite_number(r.value(key)) or isinstance(r.value(key), bool) for r in present)
    present.sort(key=(lambda r: r.value(key)) if numeric else (lambda r: str(r.value(key))), reverse=descending)
    return present + missing


@dataclass
class SweepBest:
    """The best trial of one sweep (by its objective at any round); trial, value and params are None until one
    trial has a value."""

    sweep: str
    status: str
    trials: int
    objective_metric: str
    objective_mode: str
    trial: str | None
    value: float | None
    best_round: int | None
    params: dict[str, Any] | None


def _check_statuses(statuses: list[str] | None) -> None:
    unknown = [s for s in statuses or [] if s not in STATUSES]
    if unknown:
        raise CompareError(f"unknown status {', '.join(unknown)}; use one of {', '.join(STATUSES)}")


def _sweep_rows(store: TrialStore, name: str) -> tuple[list[TrialRow], SweepBest]:
    """Every trial of one sweep as a row (trial order), and the sweep's best trial: three queries, whatever the
    sweep's size (each trial's best round is joined in SQL, not picked from every round)."""
    sweep = store.get_sweep(name)
    if sweep is None:
        raise StoreError(f"no sweep named {name!r} in {safe_url(store.url)}")
    trials = store.trials(name)
    best = next(iter(ranked(trials, sweep.objective_mode)), None)
    at_best = store.best_round_metrics(name)
    rows = [TrialRow(sweep=name, trial=t.trial_key, status=t.status, stop_reason=t.stop_reason, rounds=t.rounds,
                     best_round=t.best_round, objective_metric=sweep.objective_metric,
                     objective_mode=sweep.objective_mode, objective=t.best_value, is_best=best is t,
                     wall_time_s=round(t.wall_time_s, 3), retries=t.retries,
                     metrics=at_best.get(t.trial_key, {}), params=dict(t.params),
                     error=t.error or "") for t in trials]
    summary = SweepBest(sweep=name, status=sweep.status, trials=len(trials), objective_metric=sweep.objective_metric,
                        objective_mode=sweep.objective_mode, trial=best.trial_key if best else None,
                        value=best.best_value if best else None, best_round=best.best_round if best else None,
                        params=dict(best.params) if best else None)
    return rows, summary


def trial_rows(store: TrialStore, sweeps: list[str], statuses: list[str] | None = None) -> list[TrialRow]:
    """Rows for every trial of the given sweeps (in sweep order, then trial order), optionally filtered."""
    return compare(store, sweeps, statuses, sort=None).trials


@dataclass
class Comparison:
    """What `sweeper compare` shows: the rows (filtered, sorted) and the best trial of each sweep. The service
    sends it as JSON (`to_dict`); the CLI's remote mode reads it back (`from_dict`) and renders it as locally."""

    trials: list[TrialRow]
    best: list[SweepBest]

    def to_dict(self) -> dict:
        return {"trials": [r.to_dict() for r in self.trials], "best": [asdict(b) for b in self.best]}

    @classmethod
    def from_dict(cls, data: dict) -> Comparison:
        return cls([TrialRow(**r) for r in data["trials"]], [SweepBest(**b) for b in data["best"]])

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def compare(store: TrialStore, sweeps: list[str], statuses: list[str] | None = None, sort: str | None = "objective",
            descending: bool | None = None) -> Comparison:
    """The trials of `sweeps` (duplicates ignored), filtered by status and sorted by `sort` (default: best
    first; None: sweep order, then trial order), with the best trial of each sweep."""
    _check_statuses(statuses)
    rows, best = [], []
    for name in dict.fromkeys(sweeps):
        sweep_rows, summary = _sweep_rows(store, name)
        rows += [r for r in sweep_rows if not statuses or r.status in statuses]
        best.append(summary)
    return Comparison(rows if sort is None else sort_rows(rows, sort, descending), best)


AGGREGATE_F1 = ("f1_micro", "f1_macro")


def field_columns(metric_sets) -> list[str]:
    """The per-field F1 metrics (`f1_<field>`) among some metric dicts: a table shows them when the task has
    fields, since a model can be good on average and fail one field."""
    return sorted({k for metrics in metric_sets for k in metrics if k.startswith("f1_") and k not in AGGREGATE_F1})


def metric_columns(rows: list[TrialRow]) -> list[str]:
    names = sorted({k for r in rows for k in r.metrics})
    return sorted(names, key=lambda n: (n != "eval_loss", n))


def to_csv(rows: list[TrialRow]) -> str:
    """One line per trial: fields, then holdout metrics at the best round, then `param.NAME` columns."""
    metrics = metric_columns(rows)
    params = sorted({k for r in rows for k in r.params})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*FIELDS, *metrics, *(f"param.{p}" for p in params)])
    for r in rows:
        writer.writerow([*("" if getattr(r, f) is None else getattr(r, f) for f in FIELDS),
                         *(r.metrics.get(m, "") for m in metrics), *(r.params.get(p, "") for p in params)])
    return buffer.getvalue()
