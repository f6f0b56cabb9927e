"""The sweep controller: Ray Tune + Optuna (TPE) + ASHA. The only module of sweeper that imports Ray.

One sweep is one Tune experiment named after the sweep, under `storage.tune_path`. Its Optuna study
lives in the store's database, so `sweeper run` on an interrupted sweep restores the experiment (trials
continue from their last checkpoints) instead of starting again. Trial workers are the plain trainer
functions of `trainers/`, wrapped here with a reporter that speaks to Tune.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import psutil
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from sweeper.spec import Spec
from sweeper.store import TrialStore, full_url, remember_url
from sweeper.study import close_stopped_trials, study_storage
from sweeper.tracking import RUNS_FOLDER, TrialRuns, round_metrics, spec_mode
from trainers import trainer_for
from trainers.base import TrialConfig

BEST_FILE = "sweeper_best.json"  # the running best objective, kept with each checkpoint for resumes
# Tune warns whenever num_to_keep forces an experiment snapshot; with one checkpoint a round that is always.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
STATUS_BY_REASON = {"completed": "completed", "max_rounds": "completed", "patience": "early_stopped",
                    "asha": "stopped", "time_budget": "stopped"}


# -- the worker side ---------------------------------------------------------------------------------
class TuneReporter:
    """Reporter for trainers: sends each round to Tune as `objective` = best value so far.

    ASHA and Optuna then judge a trial by the best round it reached (its selectable checkpoint), not by
    its last round, which early stopping and overfitting make worse by design.
    """

    def __init__(self, metric: str, mode: str, workdir: str | None = None):
        self.metric, self.mode = metric, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.rss_start_mb = _rss_mb()  # what the worker holds before this trial: growth here is a leak
        self.checkpoint = tune.get_checkpoint()
        if self.checkpoint is not None:
            # Into the trial's own folder (removed when the trial ends), not Ray's default: a fresh
            # $TMPDIR/checkpoint_tmp_* per resume that nothing ever deletes.
            self.resume_dir = self.checkpoint.to_directory(os.path.join(workdir, "resumed-from") if workdir else None)
            best_file = Path(self.resume_dir) / BEST_FILE
            if best_file.is_file():
                self.best = json.loads(best_file.read_text())["objective"]
        else:
            self.resume_dir = None

    def report(self, metrics, checkpoint_dir):
        value = metrics.get(self.metric)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            self.best = min(self.best, value) if self.mode == "min" else max(self.best, value)
        metrics = {**metrics, "objective": self.best, "node": ray.get_runtime_context().get_node_id(),
                   "rss_mb": _rss_mb(), "rss_start_mb": self.rss_start_mb}
        checkpoint = None
        if checkpoint_dir:
            (Path(checkpoint_dir) / BEST_FILE).write_text(json.dumps({"objective": self.best}))
            checkpoint = tune.Checkpoint.from_directory(checkpoint_dir)
        tune.report(metrics, checkpoint=checkpoint)

    def resume_from(self):
        return self.resume_dir


def _rss_mb() -> float:
    """Resident memory of this worker process, in MiB."""
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def trial_worker(params: dict, job: dict) -> None:
    """A Tune function trainable: one trial of the sweep, run by the task's trainer."""
    trial_id = tune.get_context().get_trial_id()
    for stale in Path(tempfile.gettempdir()).glob(f"sweeper-{trial_id}-*"):  # left by an attempt that was killed
        shutil.rmtree(stale, ignore_errors=True)
    output_dir = tempfile.mkdtemp(prefix=f"sweeper-{trial_id}-")
    try:
        config = TrialConfig.model_validate({**job["trial"], "hparams": {**job["fixed"], **params},
                                             "output_dir": output_dir})
        trainer_for(config.task)(config, TuneReporter(job["metric"], job["mode"], workdir=output_dir))
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)  # Tune has copied every reported checkpoint
        release_memory()


def release_memory() -> None:
    """Give a finished trial's memory back to the OS before a reused actor starts the next trial.

    The trial's model, Trainer and optimizer are garbage once it returns, but in a Ray worker glibc kept
    the freed memory: a reused MiniLM worker grew ~50 MB a trial (520 MB to 1.4 GB before its 20th trial)
    with no Python object of earlier trials alive. malloc_trim hands it back (tests/reliability/test_resources.py).
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


# -- the driver side ---------------------------------------------------------------------------------
class StoreCallback(tune.Callback):
    """Mirrors Tune's trial events into the trial store (idempotent, so replays after a resume are safe)."""

    def __init__(self, database_url: str, sweep_name: str, time_budget_s: float | None):
        self.database_url = remember_url(database_url)  # pickled with the experiment: no password
        self.sweep_name, self.time_budget_s = sweep_name, time_budget_s
        self.started = time.monotonic()
        self._store: TrialStore | None = None

    def __getstate__(self):  # Tune pickles callbacks with the experiment state; an engine does not pickle
        return {**self.__dict__, "_store": None}

    @property
    def store(self) -> TrialStore:
        if self._store is None:
            self._store = TrialStore(full_url(self.database_url))
        return self._store

    def setup(self, **info):
        self.started = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.store.trial_started(self.sweep_name, trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # The worker persisted the round's checkpoint before reporting it. Tune's own checkpoint event comes
        # later, from a separate task, and never comes for a trial stopped at the time budget meanwhile.
        name = result.get("checkpoint_dir_name")
        self.store.round_reported(self.sweep_name, trial.trial_id, result, f"{trial.path}/{name}" if name else "")

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason = trial.last_result.get("stop_reason") or self._stopped_by()
        self.store.trial_finished(self.sweep_name, trial.trial_id, STATUS_BY_REASON[reason], reason)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.store.trial_finished(self.sweep_name, trial.trial_id, "failed", "error", _error_text(trial))

    def _stopped_by(self) -> str:
        over_time = self.time_budget_s and time.monotonic() - self.started >= self.time_budget_s
        return "time_budget" if over_time else "asha"


def _error_text(trial) -> str:
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        return Path(path).read_text(errors="replace")
    return str(getattr(trial, "error_msg", "") or "trial failed")


@dataclass
class SweepResult:
    finished: bool  # False: interrupted (Ctrl+C) or some trials did not end; run again to resume
    experiment_path: str
    resumed: bool


def _job(spec: Spec, model_path: str, threads: int) -> dict:
    return {
        "fixed": spec.fixed,
        "metric": spec.objective.metric,
        "mode": spec.objective.mode,
        "trial": {
            "task": spec.task,
            "model_path": model_path,
            "data": spec.data.model_dump(exclude={"max_seq_length"}),
            "seed": spec.seed,
            "max_seq_length": spec.data.max_seq_length,
            "evals_per_epoch": spec.scheduler.evals_per_epoch,
            "patience": spec.early_stopping.patience,
            "min_delta": spec.early_stopping.min_delta,
            "max_micro_batch": spec.resources.max_micro_batch,
            "torch_threads": threads,
            "generation_eval_examples": spec.generation_eval_examples,
        },
    }


def _searcher(spec: Spec, database_url: str) -> ConcurrencyLimiter:
    # A few random points first, then TPE; constant_liar keeps concurrent trials from proposing one point.
    startup = max(2, min(10, spec.budget.trials // 3))
    sampler = optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=startup, constant_liar=True)
    searcher = OptunaSearch(
        space=spec.space().sample,
        metric="objective",
        mode=spec.objective.mode,
        sampler=sampler,
        study_name=spec.name,
        storage=study_storage(database_url),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.budget.max_concurrent)


def _scheduler(spec: Spec):
    if spec.scheduler.type == "none":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="round", metric="objective", mode=spec.objective.mode, max_t=spec.max_rounds(), grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor)


def _trainable(spec: Spec, job: dict):
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    return tune.with_resources(tune.with_parameters(trial_worker, job=job), resources)


def start_ray(address: str | None, env: dict[str, str]) -> None:
    """Connect to a cluster (`auto`, `ray://host:10001`) or start a private local one."""
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": {**WORKER_ENV, **env}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        temp = os.environ.get("RAY_TMPDIR") or os.path.join(tempfile.gettempdir(), "sweeper-ray")
        ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=False, _temp_dir=temp)


class WandbCallback(tune.Callback):
    """One W&B run per trial, fed from Tune's events on the driver (see sweeper.tracking).

    Replaces Ray's WandbLoggerCallback, which logs only the sampled config, every Ray bookkeeping key
    and a last-round summary, and hands the API key to its logging actors' runtime env.
    """

    def __init__(self, spec: Spec, mode: str, directory: Path, database_url: str, job: dict):
        self.project, self.group, self.mode = spec.tracking.project, spec.name, mode
        self.directory, self.database_url = str(directory), remember_url(database_url)  # pickled: no password
        self.training, self.fixed = job["trial"], job["fixed"]
        self.objective = {"metric": job["metric"], "mode": job["mode"]}
        self._runs: TrialRuns | None = None
        self._started: set[str] = set()

    def __getstate__(self):  # Tune pickles callbacks; a thread and open runs do not pickle
        return {**self.__dict__, "_runs": None, "_started": set()}

    def setup(self, **info):
        self._runs = TrialRuns(self.project, self.group, self.mode, self.directory, full_url(self.database_url))
        _ACTIVE.append(self)

    def _config(self, trial) -> dict:
        params = dict(trial.config)
        return {**params, "sweep": self.group, "trial_id": trial.trial_id, "objective": self.objective,
                "training": {**self.training, "hparams": {**self.fixed, **params}}}

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._runs is not None:
            self._started.add(trial.trial_id)
            self._runs.start(trial.trial_id, self._config(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._runs is None:
            return
        if trial.trial_id not in self._started:
            self.on_trial_start(iteration, trials, trial)
        step = result.get("round")
        self._runs.log(trial.trial_id, round_metrics(result), int(step) if step is not None else None)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._runs is not None and trial.trial_id in self._started:
            self._runs.finish(trial.trial_id)  # after StoreCallback: the store holds the final status

    def on_trial_error(self, iteration, trials, trial, **info):
        if self._runs is not None and trial.trial_id in self._started:
            self._runs.finish(trial.trial_id, failed=True)

    def on_experiment_end(self, trials, **info):
        self.close()

    def close(self):
        if self._runs is not None:
            self._runs.close()
            self._runs = None


class ProgressCallback(tune.Callback):
    """Live progress on the driver: a rich live table on a terminal; otherwise one line per finished trial."""

    REFRESH_S = 0.5

    def __init__(self, spec: Spec):
        self.name, self.metric, self.mode = spec.name, spec.objective.metric, spec.objective.mode
        self.total, self.time_budget_s = spec.budget.trials, spec.budget.time_budget_s
        self._live = None
        self._reset()

    def _reset(self):
        self.started, self.interactive, self._last = time.monotonic(), False, 0.0
        self._done_at_start: int | None = None
        self._snapshot: dict = {"done": 0, "running": [], "counts": {}, "best": None}

    def __getstate__(self):  # Tune pickles callbacks; a live display does not pickle
        return {**self.__dict__, "_live": None}

    def setup(self, **info):
        self._reset()
        self.interactive = sys.stdout.isatty()
        _ACTIVE.append(self)
        if self.interactive:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=Console(), refresh_per_second=2, transient=True)
            self._live.start()

    def _update(self, trials, finishing: tuple[str, str] | None = None) -> None:
        """Count trials by state; `finishing` = (trial id, status) of a trial Tune has not marked ended yet."""
        counts = {"completed": 0, "early_stopped": 0, "stopped": 0, "failed": 0, "pending": 0}
        running, best = [], None
        for t in trials:
            result = t.last_result or {}
            value = result.get("objective")
            if isinstance(value, (int, float)) and math.isfinite(value):
                if best is None or (value < best[0] if self.mode == "min" else value > best[0]):
                    best = (value, t.trial_id)
            if finishing and t.trial_id == finishing[0]:
                counts[finishing[1]] += 1
            elif t.status in ("RUNNING", "PAUSED"):
                running.append((t.trial_id, result.get("round", 0), value, result.get("eval_loss"),
                                t.config.get("learning_rate")))
            elif t.status == "PENDING":
                counts["pending"] += 1
            elif t.status == "ERROR":
                counts["failed"] += 1
            elif t.status == "TERMINATED":
                reason = result.get("stop_reason") or "stopped"
                counts[STATUS_BY_REASON.get(reason, "stopped")] += 1
        done = counts["completed"] + counts["early_stopped"] + counts["stopped"] + counts["failed"]
        if self._done_at_start is None:
            self._done_at_start = done
        self._snapshot = {"done": done, "running": running, "counts": counts, "best": best}

    def _eta(self) -> float | None:
        elapsed = time.monotonic() - self.started
        done = self._snapshot["done"]
        finished_here = done - (self._done_at_start or 0)
        eta = elapsed / finished_here * max(self.total - done, 0) if finished_here > 0 else None
        if self.time_budget_s:
            left = max(self.time_budget_s - elapsed, 0.0)
            eta = left if eta is None else min(eta, left)
        return eta

    def _line(self) -> str:
        snap, counts = self._snapshot, self._snapshot["counts"]
        best = snap["best"]
        eta = self._eta()
        return (f"{snap['done']}/{self.total} done (completed {counts.get('completed', 0)}, early-stopped "
                f"{counts.get('early_stopped', 0)}, stopped {counts.get('stopped', 0)}, failed "
                f"{counts.get('failed', 0)}), {len(snap['running'])} running | best {self.metric} "
                + (f"{best[0]:.4f} ({best[1]})" if best else "-")
                + f" | elapsed {_clock(time.monotonic() - self.started)}, ETA {_clock(eta) if eta is not None else '-'}")

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        snap = self._snapshot
        table = Table("running trial", "round", f"best {self.metric}", "eval_loss", "lr", box=None, pad_edge=False)
        for key, round_, value, loss, lr in snap["running"]:
            table.add_row(key, str(round_ or "-"), _fmt(value), _fmt(loss), f"{lr:.2e}" if isinstance(lr, float) else "-")
        bar = ProgressBar(total=max(self.total, 1), completed=min(snap["done"], self.total), width=40)
        head, _, tail = self._line().partition(" | ")
        return Group(Text(f"sweep {self.name}: {head}"), bar, Text(tail), table)

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self._last >= self.REFRESH_S:
            self._last = now
            self._update(trials)

    def _finished(self, trials, trial, status: str) -> None:
        self._update(trials, (trial.trial_id, status))
        if not self.interactive:
            result = trial.last_result or {}
            value = result.get("objective")
            print(f"[{self.name}] trial {trial.trial_id} {status} after {result.get('round', 0)} rounds, "
                  f"best {self.metric} {_fmt(value)} | {self._line()}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason = (trial.last_result or {}).get("stop_reason") or "stopped"
        self._finished(trials, trial, STATUS_BY_REASON.get(reason, "stopped"))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trials, trial, "failed")

    def on_experiment_end(self, trials, **info):
        self._update(trials)
        self.close()

    def close(self):
        if self._live is not None:
            self._live.stop()
            self._live = None


_ACTIVE: list = []  # callbacks with open resources (W&B runs, a live display), closed when fit() returns


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def tracking_callbacks(spec: Spec, sweep_dir: Path, database_url: str, job: dict, mode: str | None = None) -> list:
    mode = mode or spec_mode(spec)
    if mode == "disabled":
        return []
    return [WandbCallback(spec, mode, sweep_dir / RUNS_FOLDER, database_url, job)]


def run_sweep(spec: Spec, database_url: str, tune_path: str, sweep_dir: Path, model_path: str,
              address: str | None = None, env: dict[str, str] | None = None,
              tracking_mode: str | None = None) -> SweepResult:
    """Run (or resume) the sweep to its budget; trial events land in the store as they happen."""
    threads = spec.resources.torch_threads or max(1, int(spec.resources.cpus))
    start_ray(address, env or {})
    remember_url(database_url)  # a resumed experiment's searcher and callbacks need the password back
    experiment_path = f"{tune_path.rstrip('/')}/{spec.name}"
    job = _job(spec, model_path, threads)
    trainable = _trainable(spec, job)
    resumed = tune.Tuner.can_restore(experiment_path)
    if resumed:
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(spec, database_url),
                scheduler=_scheduler(spec),
                num_samples=spec.budget.trials,
                time_budget_s=spec.budget.time_budget_s,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=tune_path,
                callbacks=[StoreCallback(database_url, spec.name, spec.budget.time_budget_s),  # first: the
                           *tracking_callbacks(spec, sweep_dir, database_url, job, tracking_mode),  # W&B summary
                           ProgressCallback(spec)],                                                # reads it
                failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=spec.objective.metric,
                                                        checkpoint_score_order=spec.objective.mode),
                verbose=0,
            ),
        )
    started = time.monotonic()
    try:
        results = tuner.fit()
    finally:
        while _ACTIVE:  # Ctrl+C ends fit() without on_experiment_end: finish W&B runs, restore the terminal
            _ACTIVE.pop().close()
    trials = results._experiment_analysis.trials
    ended = all(t.status in ("TERMINATED", "ERROR") for t in trials)  # Tune's view, after its clean-up
    budget = spec.budget.time_budget_s
    over_time = bool(budget and time.monotonic() - started >= budget)
    unfinished = _settle_unfinished_trials(spec.name, database_url, over_time)
    spent = over_time or (len(trials) >= spec.budget.trials and not unfinished)
    return SweepResult(finished=ended and spent, experiment_path=experiment_path, resumed=resumed)


def _settle_unfinished_trials(sweep_name: str, database_url: str, over_time: bool) -> bool:
    """Trials Tune ended without a trial-complete event are still `running` in the store. Past the time budget
    Tune stopped them: mark them so, in the store and the study. Otherwise a Ctrl+C did, and they resume.
    Returns whether any trial is left to resume."""
    store = TrialStore(database_url)
    try:
        if over_time:
            store.mark_unfinished(sweep_name, "stopped", "time_budget")
            close_stopped_trials(sweep_name, database_url)
        return store.trial_counts(sweep_name).get("running", 0) > 0
    finally:
        store.engine.dispose()


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
