"""Weights & Biases tracking: one run per trial, grouped by sweep, and one summary run per sweep.

- Each trial is a run: `group` = the sweep name, `job_type` = "trial", `config` = the sampled parameters
  (top level) plus the resolved trial config (`training`) and, from its first round on, what its worker ran with
  (`worker`: device, dtype, micro-batch, TrainingArguments, LoraConfig, as the worker recorded them), one `log`
  per evaluation round (`step` = the round: its holdout metrics under `metrics/`, its bookkeeping numbers under
  `bookkeeping/`), and a summary with the holdout metrics of the trial's best round (`best/<metric>`), its status
  and stop reason, read from the trial store.
- The sweep ends with a run of `job_type` "summary" in the same group: a `wandb.Table` of every trial
  and the promotion result, if any.

Offline by default: runs land in `<storage.root>/sweeps/<sweep>/wandb-runs/wandb/offline-run-*` and are
uploaded later with `wandb sync`. Online when `tracking.mode: online`, or when the spec leaves the mode
unset and `WANDB_API_KEY` is set. `tracking.mode: none` turns W&B off. wandb reads the API key from the
environment itself; nothing here copies it anywhere, and any string that contains it is redacted.

No Ray here: the controller's Tune callback feeds `TrialRuns`, which writes from one background thread
so that Tune's event loop never waits on W&B.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
from pathlib import Path
from typing import Any

from sweeper.compare import finite_number, trial_rows
from sweeper.spec import spec_from_store
from sweeper.store import TrialStore
from trainers.base import ran_with

RUNS_FOLDER = "wandb-runs"
MODES = {"offline": "offline", "dryrun": "offline", "online": "online", "run": "online", "disabled": "disabled"}


def resolve_mode(mode: str, explicit: bool = True, environ: dict | None = None) -> str:
    """The W&B mode (`offline` | `online` | `disabled`) for a spec's `tracking.mode`.

    `none` is off and an explicit mode wins. A spec that does not set the mode follows `WANDB_MODE` if
    set, else goes online when `WANDB_API_KEY` is set, else offline.
    """
    environ = os.environ if environ is None else environ
    if mode == "none":
        return "disabled"
    if mode == "online" or explicit:
        return MODES[mode]
    if environ.get("WANDB_MODE", "").lower() in MODES:
        return MODES[environ["WANDB_MODE"].lower()]
    return "online" if environ.get("WANDB_API_KEY") else "offline"


def spec_mode(spec) -> str:
    """`resolve_mode` for a Spec: its mode counts as explicit only if the YAML wrote it."""
    return resolve_mode(spec.tracking.mode, "mode" in spec.tracking.model_fields_set)


def runs_dir(root: str | Path, sweep_name: str) -> Path:
    """The `dir` given to wandb.init for a sweep's runs (wandb adds `wandb/` below it)."""
    return Path(root).resolve() / "sweeps" / sweep_name / RUNS_FOLDER


def offline_runs(directory: Path) -> list[Path]:
    """The offline run folders under a runs dir, oldest first (`latest-run` links left out)."""
    base = Path(directory) / "wandb"
    return sorted(p for p in base.glob("offline-run-*") if p.is_dir() and not p.is_symlink()) if base.is_dir() else []


def redact(value: Any, secret: str | None = None) -> Any:
    """`value` with any string that contains the W&B API key replaced by '***' (defence in depth)."""
    secret = os.environ.get("WANDB_API_KEY") if secret is None else secret
    if not secret:
        return value
    if isinstance(value, str):
        return "***" if secret in value else value
    if isinstance(value, dict):
        return {redact(k, secret): redact(v, secret) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secret) for v in value]
    return value


def round_log(record) -> dict[str, float]:
    """What one round (a trainers.base.RoundRecord) logs: its holdout metrics as `metrics/<name>`, and the numbers
    of its bookkeeping (train loss, examples and tokens seen, timings, memory) as `bookkeeping/<name>`."""
    return {f"{space}/{k}": v for space, values in (("metrics", record.metrics), ("bookkeeping", record.bookkeeping))
            for k, v in values.items() if finite_number(v)}


def worker_config(record) -> dict:
    """What a round's worker ran with (trainers.base.RAN_WITH: device, dtype, quantization, micro-batch and
    accumulation after any out-of-memory halving, TrainingArguments, LoraConfig), for the run's config under
    `worker`: the worker's own record, which the driver's machine cannot know."""
    return ran_with(record.bookkeeping)


def trial_summary(store: TrialStore, sweep_name: str, key: str) -> dict:
    """A trial's W&B summary from the store: status, stop reason, and holdout metrics at its best round."""
    trial = store.trial(sweep_name, key)
    if trial is None:
        return {}
    sweep = store.get_sweep(sweep_name)
    at_best = store.best_round_metrics(sweep_name, key).get(key, {})
    summary = {"status": trial.status, "stop_reason": trial.stop_reason, "rounds": trial.rounds,
               "best_round": trial.best_round, "objective_metric": sweep.objective_metric,
               "wall_time_s": trial.wall_time_s, "retries": trial.retries,
               **{f"best/{k}": v for k, v in at_best.items()}}
    if trial.best_value is not None:
        summary[f"best/{sweep.objective_metric}"] = trial.best_value
    if trial.error.strip():
        summary["error"] = trial.error.strip().splitlines()[-1][:500]
    return summary


def _settings():
    import wandb

    # console="off": never capture the driver's terminal (the live progress display, other trials' lines).
    return wandb.Settings(console="off", silent=True, x_disable_stats=True, save_code=False)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class TrialRuns:
    """One W&B run per trial of a sweep, written from a single background thread.

    `start`, `log` and `finish` only queue work; a W&B failure is reported once on stderr and never
    fails the sweep. `close` finishes every open run and waits for the writer.
    """

    def __init__(self, project: str, group: str, mode: str, directory: str | Path, database_url: str):
        self.project, self.group, self.mode = project, group, mode
        self.directory, self.database_url = Path(directory), database_url
        self._queue: queue.Queue = queue.Queue()
        self._runs: dict[str, Any] = {}
        self._steps: dict[str, int] = {}
        self._failed: set[str] = set()
        self._store: TrialStore | None = None
        self._thread = threading.Thread(target=self._work, name="sweeper-wandb", daemon=True)
        self._thread.start()

    # -- the driver's side -------------------------------------------------------------------------
    def start(self, key: str, config: dict) -> None:
        self._queue.put(("start", key, config))

    def log(self, key: str, metrics: dict, step: int | None) -> None:
        self._queue.put(("log", key, (metrics, step)))

    def configure(self, key: str, values: dict) -> None:
        """Add to (or change in) a started run's config."""
        self._queue.put(("configure", key, values))

    def finish(self, key: str, failed: bool = False) -> None:
        self._queue.put(("finish", key, failed))

    def close(self, timeout: float = 120.0) -> None:
        self._queue.put(("close", None, None))
        self._thread.join(timeout)

    # -- the writer thread -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            op, key, arg = self._queue.get()
            if op == "close":
                for open_key in list(self._runs):
                    self._guard(open_key, self._finish, open_key, False)
                if self._store is not None:
                    self._store.engine.dispose()
                return
            self._guard(key, getattr(self, f"_{op}"), key, arg)

    def _guard(self, key: str, work, *args) -> None:
        try:
            work(*args)
        except Exception as exc:  # tracking must never fail a sweep
            if key not in self._failed:
                self._failed.add(key)
                print(f"sweeper: W&B logging of trial {key} failed: {type(exc).__name__}: {redact(str(exc))}",
                      file=sys.stderr, flush=True)

    def _start(self, key: str, config: dict) -> None:
        if key in self._runs:
            return  # a retried trial keeps its run
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        self._runs[key] = wandb.init(
            project=self.project, group=self.group, job_type="trial", name=key, id=f"{self.group}-{key}",
            dir=str(self.directory), mode=self.mode, config=redact(_jsonable(config)), reinit="create_new",
            settings=_settings())

    def _log(self, key: str, arg) -> None:
        metrics, step = arg
        run = self._runs.get(key)
        if run is None:
            return
        if step is not None:
            if step <= self._steps.get(key, 0):
                return  # a retried trial re-reports rounds from its checkpoint; W&B steps only grow
            self._steps[key] = step
        run.log(metrics, step=step)

    def _configure(self, key: str, values: dict) -> None:
        run = self._runs.get(key)
        if run is not None:
            run.config.update(redact(_jsonable(values)), allow_val_change=True)  # a halved micro-batch changes it

    def _finish(self, key: str, failed: bool) -> None:
        run = self._runs.pop(key, None)
        if run is None:
            return
        try:
            if self._store is None:
                self._store = TrialStore(self.database_url)
            run.summary.update(redact(_jsonable(trial_summary(self._store, self.group, key))))
        finally:
            run.finish(exit_code=1 if failed else 0)


def winner_artifact(sweep_name: str, export_dir: Path, promotion: dict):
    """The promoted winner's export as a W&B model artifact: what a deployment pulls by the `promoted` alias."""
    import wandb

    artifact = wandb.Artifact(f"{sweep_name}-winner", type="model",
                              metadata=redact({"trial": promotion.get("trial_key"), "status": promotion.get("status"),
                                               "note": promotion.get("note")}))
    artifact.add_dir(str(export_dir))  # adapter/, winner.yaml, winner.json: the database URL in them is redacted
    return artifact


def log_sweep_summary(store: TrialStore, sweep_name: str, promotion: dict | None = None, *,
                      mode: str | None = None, project: str | None = None,
                      directory: str | Path | None = None, export_dir: str | Path | None = None) -> Path | None:
    """Log the sweep's summary run (job_type "summary", group = the sweep): a table of every trial, the
    best trial and the promotion result; a promoted winner's export (adapter, winner.yaml/json) as a model
    artifact of that run. Mode, project and folder default to the sweep's stored spec.

    Returns the run's folder, or None when tracking is off.
    """
    import wandb

    sweep = store.get_sweep(sweep_name)
    if sweep is None:
        raise ValueError(f"no sweep named {sweep_name!r} in the store")
    spec = spec_from_store(sweep.spec)
    mode = mode or resolve_mode(spec.tracking.mode, explicit=False)
    if mode == "disabled":
        return None
    directory = Path(directory) if directory else runs_dir(spec.storage.root, sweep_name)
    directory.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(store, [sweep_name])
    metrics = sorted({k for r in rows for k in r.metrics}, key=lambda n: (n != "eval_loss", n))
    params = sorted({k for r in rows for k in r.params})
    columns = ["trial", "status", "stop_reason", "rounds", "best_round", "objective", "is_best",
               "wall_time_s", *(f"best/{m}" for m in metrics), *params]
    data = [[r.trial, r.status, r.stop_reason, r.rounds, r.best_round, r.objective, r.is_best, r.wall_time_s,
             *(r.metrics.get(m) for m in metrics), *(_jsonable(r.params.get(p)) for p in params)] for r in rows]
    best = next((r for r in rows if r.is_best), None)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = {"sweep_status": sweep.status, "n_trials": len(rows), **{f"n_trials_{k}": v for k, v in counts.items()},
               "objective_metric": sweep.objective_metric, "objective_mode": sweep.objective_mode,
               "best_trial": best.trial if best else None, f"best/{sweep.objective_metric}": best.objective if best else None,
               "best_round": best.best_round if best else None, "promotion": _jsonable(promotion) if promotion else {}}
    run = wandb.init(project=project or spec.tracking.project, group=sweep_name, job_type="summary",
                     name=f"{sweep_name}-summary", dir=str(directory), mode=mode, reinit="create_new",
                     config=redact({"sweep": sweep_name, "spec": _jsonable(sweep.spec)}), settings=_settings())
    try:
        run.log({"trials": wandb.Table(columns=columns, data=redact(data))})
        run.summary.update(redact(summary))
        if promotion and promotion.get("promoted") and export_dir and Path(export_dir, "winner.json").is_file():
            run.log_artifact(winner_artifact(sweep_name, Path(export_dir), promotion), aliases=["promoted"])
        folder = Path(run.dir).parent
    finally:
        run.finish()
    return folder


def log_summary(store: TrialStore, name: str, promotion: dict | None, export_dir: Path, **where) -> None:
    """`log_sweep_summary` at the end of a run or a promotion; `where`: mode, project, directory (default: the
    stored spec's). A W&B failure is reported, never fatal: the sweep's results are in the store either way."""
    try:
        log_sweep_summary(store, name, promotion, export_dir=export_dir, **where)
    except Exception as exc:
        print(f"sweeper: W&B summary run of {name!r} failed: {type(exc).__name__}: {redact(str(exc))}",
              file=sys.stderr)
