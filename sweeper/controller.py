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
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import psutil
import ray
from ray import tune
from ray.air._internal import usage as ray_usage
from ray.train._internal import session as ray_session
from ray.tune.logger import TBXLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from sweeper import checkpoints
from sweeper.budget import CostModel, Plan, probe_shapes, run_probe
from sweeper.progress import LiveProgress, TrialView
from sweeper.search import SweepSearch, close_stopped_trials
from sweeper.spec import Spec, SpecError
from sweeper.store import TrialStore, full_url, remember_url
from sweeper.tracking import RUNS_FOLDER, TrialRuns, round_log, spec_mode, worker_config
from sweeper.trial_config import complete, template, trial_threads
from sweeper.trial_status import STATUS_BY_REASON
from trainers import trainer_for
from trainers.base import RoundRecord

BEST_FILE = "sweeper_best.json"  # the running best objective, kept with each checkpoint for resumes
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
              # A stopped trial ends at its next training step (TuneReporter.stop_requested), then cleans up; Tune's
              # default 2 s wait for that failed whenever a step took longer ("Could not re-use actor"), and the
              # trial meant to reuse the worker was lost.
              "TUNE_FUNCTION_THREAD_TIMEOUT_S": "300"}
TRIAL = "sweeper_trial"  # reserved config entry: the trial's stable key and the checkpoint it resumes from
RECORD = "sweeper_round"  # reserved result key: the worker's RoundRecord; Tune's own keys beside it are never read
ROUND_VALUE = "round_value"  # result key: the objective metric at this round; Tune ranks checkpoints by a top-level key
MAX_STEPS = 10**9  # ASHA's max_t when its rungs count optimizer steps (`scheduler.rung_unit: steps`)


# -- the worker side ---------------------------------------------------------------------------------
class TuneReporter:
    """Reporter for trainers: sends each round to Tune as `objective` = best value so far, `holdout_loss` = best
    holdout loss so far (what ASHA judges with `scheduler.rung_metric: holdout_loss`) and `round` (what ASHA
    and the searcher read), `ROUND_VALUE` (what checkpoints are kept by), and the trainer's record under `RECORD`.

    ASHA and Optuna then judge a trial by the best round it reached (its selectable checkpoint), not by
    its last round, which early stopping and overfitting make worse by design.
    """

    def __init__(self, metric: str, mode: str, workdir: str | None = None, resume: tune.Checkpoint | None = None,
                 batch_size: int = 1):
        self.metric, self.mode, self.batch_size = metric, mode, batch_size
        self.best = math.inf if mode == "min" else -math.inf
        self.best_loss = math.inf
        self.rss_start_mb = _rss_mb()  # what the worker holds before this trial: growth here is a leak
        # Tune's own checkpoint (a retry in this run) first, else the one an earlier driver run recorded.
        self.checkpoint = tune.get_checkpoint() or resume
        if self.checkpoint is not None:
            # Into the trial's own folder (removed when the trial ends), not Ray's default: a fresh
            # $TMPDIR/checkpoint_tmp_* per resume that nothing ever deletes.
            self.resume_dir = self.checkpoint.to_directory(os.path.join(workdir, "resumed-from") if workdir else None)
            best_file = Path(self.resume_dir) / BEST_FILE
            if best_file.is_file():
                saved = json.loads(best_file.read_text())
                self.best, self.best_loss = saved["objective"], saved.get("holdout_loss", math.inf)
        else:
            self.resume_dir = None

    def report(self, record: RoundRecord, checkpoint_dir):
        value = record.metrics.get(self.metric, math.nan)
        if not math.isnan(value):
            self.best = min(self.best, value) if self.mode == "min" else max(self.best, value)
        loss = record.metrics.get("eval_loss", math.nan)
        if not math.isnan(loss):
            self.best_loss = min(self.best_loss, loss)
        worker = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "rss_mb": _rss_mb(),
                  "rss_start_mb": self.rss_start_mb}
        record = replace(record, bookkeeping={**record.bookkeeping, **worker})
        checkpoint = None
        if checkpoint_dir:
            (Path(checkpoint_dir) / BEST_FILE).write_text(json.dumps({"objective": self.best,
                                                                       "holdout_loss": self.best_loss}))
            checkpoint = tune.Checkpoint.from_directory(checkpoint_dir)
        tune.report({"objective": self.best, "holdout_loss": self.best_loss, "round": record.round,
                     "steps": self._steps(record), ROUND_VALUE: value, RECORD: record.to_dict()}, checkpoint=checkpoint)

    def _steps(self, record: RoundRecord) -> int:
        """Optimizer steps so far (what ASHA counts with `scheduler.rung_unit: steps`); rounds for a trainer that
        counts neither steps nor examples."""
        return record.steps(self.batch_size) or record.round

    def resume_from(self):
        return self.resume_dir

    def stop_requested(self) -> bool:
        # Tune asks a function trainable to stop through its session's stop event, and checks it only when the
        # trainable reports; Ray 2.60 offers no public way to ask between reports.
        session = ray_session.get_session()
        return bool(session and session.stop_event.is_set())


def _rss_mb() -> float:
    """Resident memory of this worker process, in MiB."""
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def round_record(result: dict | None) -> RoundRecord | None:
    """The worker's record in a Tune result (None before a trial's first round)."""
    data = (result or {}).get(RECORD)
    return RoundRecord.from_dict(data) if data else None


def _stop_reason(record: RoundRecord | None) -> str:
    """Why the trainer itself stopped, from its last round ('' when it did not: Tune stopped it)."""
    return record.bookkeeping.get("stop_reason", "") if record else ""


def trial_worker(params: dict, job: dict) -> None:
    """A Tune function trainable: one trial of the sweep, run by the task's trainer."""
    params = dict(params)
    resume_from = params.pop(TRIAL)["resume_from"]
    resume = tune.Checkpoint(resume_from, filesystem=checkpoints.filesystem(job["storage"])) if resume_from else None
    trial_id = tune.get_context().get_trial_id()
    for stale in Path(tempfile.gettempdir()).glob(f"sweeper-{trial_id}-*"):  # left by an attempt that was killed
        shutil.rmtree(stale, ignore_errors=True)
    output_dir = tempfile.mkdtemp(prefix=f"sweeper-{trial_id}-")
    try:
        config = complete(job["trial"], params, output_dir)
        reporter = TuneReporter(job["metric"], job["mode"], output_dir, resume, config.hparams.batch_size)
        trainer_for(config.task)(config, reporter)
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
        self.store.trial_started(self.sweep_name, trial_key(trial), sampled(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # The worker persisted the round's checkpoint before reporting it. Tune's own checkpoint event comes
        # later, from a separate task, and never comes for a trial stopped at the time budget meanwhile.
        name = result.get("checkpoint_dir_name")
        self.store.round_reported(self.sweep_name, trial_key(trial), round_record(result),
                                  f"{trial.path}/{name}" if name else "", wall_time_s=result.get("time_total_s"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        reason = _stop_reason(round_record(trial.last_result)) or self._stopped_by()
        self.store.trial_finished(self.sweep_name, trial_key(trial), STATUS_BY_REASON[reason], reason,
                                  params=sampled(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.store.trial_finished(self.sweep_name, trial_key(trial), "failed", "error", _error_text(trial),
                                  params=sampled(trial))

    def close(self):
        if self._store is not None:
            self._store.engine.dispose()
            self._store = None

    def _stopped_by(self) -> str:
        over_time = self.time_budget_s and time.monotonic() - self.started >= self.time_budget_s
        return "time_budget" if over_time else "asha"


def trial_key(trial) -> str:
    """The trial's key in the store and W&B: stable across driver runs, unlike Tune's trial id."""
    return trial.config[TRIAL]["key"]


def sampled(trial) -> dict:
    """The trial's hyperparameters, without sweeper's reserved entry."""
    return {k: v for k, v in trial.config.items() if k != TRIAL}


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
    from sweeper.audit import recorded_sha256

    # Each trial checks its files against the SHA-256 the sweep's recorded audit read: a replaced file fails it.
    sha256 = recorded_sha256(spec.database_url(), spec.name)
    return {
        "fixed": spec.fixed,
        "metric": spec.objective.metric,
        "mode": spec.objective.mode,
        "trial": template(spec, model_path, sha256, torch_threads=threads),
    }


class StudySearcher(Searcher):
    """Tune's side of `SweepSearch`: Tune trial ids in, the sweep's stable trial keys out.

    Its state is the study in the store; Tune's searcher snapshots are not needed to resume (save is a no-op)."""

    def __init__(self, search: SweepSearch, mode: str):
        super().__init__(metric="objective", mode=mode)
        self.search = search
        self.keys: dict[str, str] = {}  # Tune trial id -> trial key

    def suggest(self, trial_id: str):
        suggestion = self.search.suggest()
        if suggestion is None:  # None: ask again later (running trials hold the compute budget until they end)
            return None if self.search.waiting_for_compute else Searcher.FINISHED
        self.keys[trial_id] = suggestion.key
        return {**suggestion.params, TRIAL: {"key": suggestion.key, "resume_from": suggestion.resume_from}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.search.round_reported(self.keys[trial_id], result.get("round"), result.get("objective"))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self.keys.pop(trial_id, None)
        if key is not None:
            self.search.finished(key, (result or {}).get("objective"), error)

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def _scheduler(spec: Spec):
    if spec.scheduler.type == "none":
        return FIFOScheduler()
    steps = spec.scheduler.rung_unit == "steps"
    # In steps, max_t only bounds the rungs: ASHA stops a trial at max_t, which none reaches (trials end by
    # themselves); rungs past a trial's last step are never reached, and cost nothing.
    on_loss = spec.scheduler.rung_metric == "holdout_loss"
    return ASHAScheduler(time_attr="steps" if steps else "round", metric="holdout_loss" if on_loss else "objective",
                         mode="min" if on_loss else spec.objective.mode,
                         max_t=MAX_STEPS if steps else spec.max_rounds(), grace_period=spec.scheduler.grace_period,
                         reduction_factor=spec.scheduler.reduction_factor)


def _trainable(spec: Spec, job: dict):
    resources = {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus}
    return tune.with_resources(tune.with_parameters(trial_worker, job=job), resources)


def start_ray(address: str | None, env: dict[str, str]) -> None:
    """Connect to a cluster (`auto`, `ray://host:10001`) or start a private local one."""
    if ray.is_initialized():
        return
    # Tune warns whenever num_to_keep forces an experiment snapshot; with one checkpoint a round that is always.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's usage tag of a run's callbacks imports wandb, mlflow and comet to compare their classes with ours:
    # 0.4 s of CPU at every driver start (0.7 s on a busy machine), tracking on or off, for a telemetry tag.
    ray_usage.tag_callbacks = lambda callbacks: False
    runtime_env = {"env_vars": {**WORKER_ENV, **env}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        temp = os.environ.get("RAY_TMPDIR") or os.path.join(tempfile.gettempdir(), "sweeper-ray")
        # Ray would start one idle worker a CPU for this driver, of no use to trials: they run in the job's runtime
        # env, which those workers do not have (each held ~155 MB and used 0.6 CPU-s here, for nothing).
        ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=False, _temp_dir=temp,
                 _system_config={"prestart_worker_first_driver": False})


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
        self._workers: dict[str, dict] = {}  # trial key -> the worker settings its run's config holds

    def __getstate__(self):  # Tune pickles callbacks; a thread and open runs do not pickle
        return {**self.__dict__, "_runs": None, "_started": set(), "_workers": {}}

    def setup(self, **info):
        self._runs = TrialRuns(self.project, self.group, self.mode, self.directory, full_url(self.database_url))

    def _config(self, trial) -> dict:
        params = sampled(trial)
        return {**params, "sweep": self.group, "trial_id": trial_key(trial), "objective": self.objective,
                "training": {**self.training, "hparams": {**self.fixed, **params}}}

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._runs is not None:
            self._started.add(trial_key(trial))
            self._runs.start(trial_key(trial), self._config(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._runs is None:
            return
        if trial_key(trial) not in self._started:
            self.on_trial_start(iteration, trials, trial)
        record = round_record(result)
        worker = worker_config(record)
        if worker and worker != self._workers.get(trial_key(trial)):  # its first round, or a halved micro-batch
            self._workers[trial_key(trial)] = worker
            self._runs.configure(trial_key(trial), {"worker": worker})
        self._runs.log(trial_key(trial), round_log(record), record.round)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._runs is not None and trial_key(trial) in self._started:
            self._runs.finish(trial_key(trial))  # after StoreCallback: the store holds the final status

    def on_trial_error(self, iteration, trials, trial, **info):
        if self._runs is not None and trial_key(trial) in self._started:
            self._runs.finish(trial_key(trial), failed=True)

    def on_experiment_end(self, trials, **info):
        self.close()

    def close(self):
        if self._runs is not None:
            self._runs.close()
            self._runs = None


class ProgressCallback(tune.Callback):
    """Feeds Tune's trial events to the live progress view (sweeper.progress)."""

    def __init__(self, spec: Spec):
        self.view = LiveProgress(spec)

    def setup(self, **info):
        self.view.start()

    def on_step_end(self, iteration, trials, **info):
        self.view.step(_views(trials))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.view.finished(_views(trials), _view(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.view.finished(_views(trials), _view(trial), "failed")

    def on_experiment_end(self, trials, **info):
        self.view.end(_views(trials))

    def close(self):
        self.view.close()


def _view(trial) -> TrialView:
    record = round_record(trial.last_result)
    shown = ({"round": record.round, "objective": trial.last_result.get("objective"),
              "eval_loss": record.metrics.get("eval_loss"), "stop_reason": _stop_reason(record)} if record else {})
    return TrialView(trial_key(trial), trial.status, shown, trial.config.get("learning_rate"))


def _views(trials) -> list[TrialView]:
    return [_view(t) for t in trials]


class NoTensorBoard(TBXLoggerCallback):
    """Takes the place of the TensorBoard logger Tune adds by default, and writes nothing: rounds are compared in
    the store and W&B, and Tune's writer warns on the nested values a round records (the worker's
    TrainingArguments and LoraConfig). Tune's JSON and CSV results per trial are still written."""

    def __init__(self):  # no tensorboardX writer
        pass

    def log_trial_start(self, trial):
        pass

    def log_trial_result(self, iteration, trial, result):
        pass

    def log_trial_end(self, trial, failed=False):
        pass


def tracking_callbacks(spec: Spec, sweep_dir: Path, database_url: str, job: dict, mode: str | None = None) -> list:
    mode = mode or spec_mode(spec)
    if mode == "disabled":
        return []
    return [WandbCallback(spec, mode, sweep_dir / RUNS_FOLDER, database_url, job)]


def run_sweep(spec: Spec, database_url: str, tune_path: str, sweep_dir: Path, model_path: str,
              address: str | None = None, env: dict[str, str] | None = None,
              tracking_mode: str | None = None) -> SweepResult:
    """Run the sweep, or resume it, to its budget; trial events land in the store as they happen.

    Every run is a fresh Tune experiment fed by `SweepSearch`, which resumes what the store and the study say is
    unfinished: Tune's saved experiment state may lag them and is not read back."""
    remember_url(database_url)  # the searcher's study storage and the callbacks are pickled without the password
    experiment_path = f"{tune_path.rstrip('/')}/{spec.name}"
    search = SweepSearch(spec, database_url, checkpoints.exists(tune_path))
    if search.done():  # every trial ended before the driver stopped (e.g. killed while exporting)
        return SweepResult(finished=True, experiment_path=experiment_path, resumed=True)
    start_ray(address, env or {})
    threads = trial_threads(spec)
    job = {**_job(spec, model_path, threads), "storage": tune_path}
    if spec.budget.time_budget_s:  # what the budget buys, and trials admitted by it; the deadline starts after
        plan = budget_plan(spec, job)
        if plan is not None:
            search.admit_by(plan.first_round_s)
    callbacks = [StoreCallback(database_url, spec.name, spec.budget.time_budget_s),  # first: the W&B summary
                 *tracking_callbacks(spec, sweep_dir, database_url, job, tracking_mode),  # reads it
                 ProgressCallback(spec)]
    tuner = tune.Tuner(
        _trainable(spec, job),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(StudySearcher(search, spec.objective.mode),
                                          max_concurrent=spec.budget.max_concurrent),
            scheduler=_scheduler(spec),
            num_samples=spec.budget.trials,
            time_budget_s=spec.budget.time_budget_s,
            reuse_actors=True,
            trial_name_creator=trial_key,
            trial_dirname_creator=lambda trial: f"{trial_key(trial)}_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=tune_path,
            callbacks=[*callbacks, NoTensorBoard()],  # a new list: Tune appends its own reporter to it
            failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=ROUND_VALUE,
                                                    checkpoint_score_order=spec.objective.mode),
            verbose=0,
        ),
    )
    started = time.monotonic()
    try:
        results = tuner.fit()
    finally:
        for callback in callbacks:  # Ctrl+C ends fit() without on_experiment_end: finish W&B runs, restore the terminal
            callback.close()
    ended = all(t.status in ("TERMINATED", "ERROR") for t in results._experiment_analysis.trials)  # after clean-up
    budget = spec.budget.time_budget_s
    over_time = bool(budget and (time.monotonic() - started >= budget or search.out_of_time))
    unfinished = _settle_unfinished_trials(spec.name, database_url, over_time)
    spent = over_time or search.done()
    finished = ended and spent and not unfinished and not search.running()  # the store and the study both agree
    return SweepResult(finished=finished, experiment_path=experiment_path, resumed=search.resumed)


def budget_plan(spec: Spec, job: dict, show=print) -> Plan | None:
    """Probe a round's cost where trials run (a Ray task with a trial's resources) and `show` what the budget buys;
    None, said, when the probe fails: the sweep then runs as without it (a broken trainer fails its trials)."""
    task = _on_worker.options(num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus, name="sweeper-probe")
    started = time.monotonic()
    try:
        measured, where = ray.get(task.remote(partial(run_probe, job["trial"]), probe_shapes(spec)))
    except ray.exceptions.RayError as exc:
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        show(f"budget: the probe failed ({type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[-1]}); "
             "no plan, trials are admitted by the rounds they report")
        return None
    overhead_s = max(0.0, time.monotonic() - started - where["seconds"])  # a fresh worker, as a trial's first start
    plan = Plan.make(spec, CostModel.fit(measured, spec.scheduler.evals_per_epoch, overhead_s))
    for line in plan.lines():
        show(line)
    return plan


def connect(spec: Spec, address: str | None, env: dict[str, str]) -> None:
    """Start or join Ray and check that a node can hold one trial; nothing of the sweep is written yet."""
    start_ray(address, env)
    try:
        check_schedulable(spec, address)
    except Unschedulable:
        shutdown()
        raise


class Unschedulable(SpecError):
    """A trial asks for more than any node of the cluster has: it would wait forever."""


def check_schedulable(spec: Spec, address: str | None) -> None:
    """Refuse a trial no node can hold. A cluster that adds nodes on demand (KubeRay's autoscaler) is trusted to,
    when it says so (SWEEPER_CLUSTER_AUTOSCALES=1, set by the shipped RayJob)."""
    if address and os.environ.get("SWEEPER_CLUSTER_AUTOSCALES") == "1":
        return
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    asked = {"CPU": spec.resources.cpus, "GPU": spec.resources.gpus}
    if any(all(node.get(name, 0) >= amount for name, amount in asked.items()) for node in nodes):
        return
    largest = {name: max((node.get(name, 0) for node in nodes), default=0) for name in asked}
    where = f"the Ray cluster at {address}" if address else "this machine"
    problems = [(f"resources.{field}", f"each trial asks for {asked[name]:g}, but no node of {where} has that many "
                 f"(the largest has {largest[name]:g}); lower it or add a node that has them")
                for field, name in (("cpus", "CPU"), ("gpus", "GPU")) if asked[name] > largest[name]]
    raise Unschedulable(problems or [("resources", f"no single node of {where} has {asked} at once")],
                        source="resources")


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


# -- promotion's heavy steps on the workers ------------------------------------------------------------
class Workers:
    """Runs promotion's heavy steps (a re-evaluation, a seed's re-training) as Ray tasks that hold one trial's
    resources (`resources.cpus`, `resources.gpus`), on the cluster's workers like the trials did: the process that
    asked (a sweep driver on a CPU-only head, the API) only coordinates. A step is a plain function of one job
    (picklable, Ray-free); its result comes back with where it ran."""

    def __init__(self, spec: Spec, address: str | None = None, env: dict[str, str] | None = None):
        start_ray(address, env or {})  # a sweep driver's own Ray is reused as is
        check_schedulable(spec, address)  # a step no node can hold would wait forever
        self.resources = {"num_cpus": spec.resources.cpus, "num_gpus": spec.resources.gpus}
        self.threads = trial_threads(spec)

    def run(self, step, jobs: list[dict]) -> list[tuple[object, dict]]:
        """step(job) for every job, side by side as far as the cluster has room; (result, where) per job.
        A job's `label` names it in an error."""
        task = _on_worker.options(**self.resources, name=f"sweeper-{step.__name__}")
        refs = [task.remote(step, job) for job in jobs]
        results = []
        for ref, job in zip(refs, jobs):
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayError as exc:
                for other in refs:  # the others' results are of no use now
                    ray.cancel(other, force=True)
                raise _step_failure(job.get("label") or step.__name__, exc) from None
        return results


# step(job) in a fresh worker process (max_calls=1): its GPU memory and RSS go with it; the caller sets its
# resources (a trial's). Ray retries a step whose worker or node died (idempotent: a step writes only its own
# temporary folder), never one that raised. Returns the result and where and how long it ran.
@ray.remote(max_calls=1, max_retries=1)
def _on_worker(step, job) -> tuple[object, dict]:
    started = time.monotonic()
    try:
        result = step(job)
    finally:
        release_memory()
    return result, {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "host": socket.gethostname(),
                    "seconds": round(time.monotonic() - started, 3)}


def _step_failure(label: str, exc: Exception):
    """A PromotionError saying which step failed, why and what to change: not a Ray traceback."""
    from sweeper.promotion import PromotionError

    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
    if isinstance(cause, PromotionError):  # the step's own message (a missing checkpoint, ...)
        return PromotionError(str(cause))
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    text = f"{type(cause).__name__}: {lines[0] if lines else ''}".strip()[:600]
    hint = ""
    if "OutOfMemory" in type(cause).__name__ or "out of memory" in str(cause).lower():
        hint = ("; it ran out of memory: lower resources.max_micro_batch, or give each trial more memory "
                "(resources.cpus, a larger GPU)")
    return PromotionError(f"{label} failed on a Ray worker: {text}{hint}")
