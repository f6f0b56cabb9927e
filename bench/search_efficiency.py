"""Search efficiency on real data: how much training compute each search method needs to find a good model.

    .venv/bin/python bench/search_efficiency.py --task restaurant8k --seeds 5 --budget 16      # the full setting
    .venv/bin/python bench/search_efficiency.py --smoke --results /tmp/r.md                      # CI smoke (~2 min)

Methods (every one trains through the SAME trainer, `trainers.<task>.train` / its data preparation, on the
same data, LoRA MiniLM, the same search space (`--space`, default `lora-quick`), one torch thread per trial):

  sweeper      (a) sweeper's real path: `sweeper.sweeps.run` on a generated spec (TPE + ASHA + holdout-loss
               patience, 2 trials at a time, `tracking: none`); compute is read back from the trial store.
  random       (b) random search (Optuna RandomSampler over the same space), no early stopping, sequential.
  grid         (c) grid over the same space (learning rate x4 log levels, batch size, epochs {low, high},
               LR schedule; the other parameters at their midpoint), visited in a seeded random order.
  sweeper_objective  (a') as (a), with ASHA ranking trials by the objective (`scheduler.rung_metric:
               objective`, and reduction factor 2), the default before issue 13 changed it to holdout loss.
  sweeper_rf2  (a'') as (a), with ASHA's `scheduler.reduction_factor: 2`, the default before issue 13's ninth pass.
  tune_optuna  (d) plain Ray Tune: `OptunaSearch(space, metric, mode, seed)` (Optuna's default TPE), no
               scheduler (FIFO), no early stopping, 2 trials at a time.
  hf_optuna    (e) `transformers.Trainer.hyperparameter_search(backend="optuna")` with a LoRA `model_init`
               (LoRA parameters sampled from the trial: transformers#29391), Optuna's defaults (TPE, the
               MedianPruner that `optuna.create_study` installs), evaluation every epoch, sequential.

Compute is counted in trial-epochs: the epochs of training every trial ran (HF `state.epoch` at each holdout
evaluation), summed over trials. Each method runs until it has spent `--budget` trial-epochs; sweeper has
no compute budget of its own, so `budget.trials` is set to the budget (a trial costs >= 1 epoch, so the trial
count never binds first) and a Tune `Stopper` on summed epochs is added to the RunConfig its controller
builds (the only thing changed on sweeper's path). A method's trajectory is the best holdout metric
found so far against the compute spent so far; only evaluations reached within the budget count.
Test metric: the single best (trial, round) by holdout metric within the budget, its adapter reloaded and
scored on the untouched test split with the task's own `predict` + `score`.

Each (method, seed) runs in its own process; Ray methods run alone (2 trials at once on 2 cores), the
sequential methods two at a time. Seeds and methods are interleaved so machine noise spreads evenly.
Results (table + exact command + machine + date) are appended to bench/RESULTS.md (or --results).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = {
    "sweeper": "(a) sweeper default: TPE + ASHA (rungs on holdout loss) + patience",
    "sweeper_objective": "(a') sweeper with `scheduler.rung_metric: objective` (the default until issue 13)",
    "sweeper_rf2": "(a'') sweeper with `scheduler.reduction_factor: 2` (the default until issue 13's ninth pass)",
    "random": "(b) random search, no early stopping",
    "grid": "(c) grid, same space",
    "tune_optuna": "(d) plain Ray Tune OptunaSearch, no scheduler",
    "hf_optuna": "(e) HF Trainer.hyperparameter_search (optuna)",
}
RAY_METHODS = {"sweeper", "sweeper_objective", "sweeper_rf2", "tune_optuna"}
# The scheduler settings each sweeper method adds to the spec's block; sweeper itself takes the product's defaults.
SWEEPER_SCHEDULERS = {"sweeper": {}, "sweeper_objective": {"rung_metric": "objective", "reduction_factor": 2},
                      "sweeper_rf2": {"reduction_factor": 2}}
TASKS = {
    "restaurant8k": dict(task="token_tagging", format="restaurant8k", folder="examples/data/restaurant8k",
                         ext="json", metric="f1_micro", max_seq_length=48, patience=1, min_delta=0.005),
    "restaurant8k-small": dict(task="token_tagging", format="restaurant8k", folder="examples/data/restaurant8k-small",
                               ext="json", metric="f1_micro", max_seq_length=32, patience=1, min_delta=0.005),
    "banking77": dict(task="sequence_classification", format="csv", folder="examples/data/banking77",
                      ext="csv", metric="f1_macro", max_seq_length=64, patience=2, min_delta=0.001),
    # the data bench/record_curves.py recorded its banking77-10 table on: to check the replay against live runs
    "banking77-10": dict(task="sequence_classification", format="csv", folder="bench/results/curves/data/banking77-10",
                         ext="csv", metric="f1_macro", max_seq_length=64, patience=2, min_delta=0.001),
}
SPACE = "lora-quick"  # the default --space
NO_EARLY_STOPPING = 1_000_000  # patience in rounds: never reached
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
              "PYTHONWARNINGS": "ignore", "WANDB_MODE": "disabled"}


class BudgetSpent(Exception):
    """Raised from a trainer callback once the method has spent its compute budget."""


# -- shared pieces of a job ------------------------------------------------------------------------------
def data_files(ctx: dict) -> dict:
    folder = ROOT / TASKS[ctx["task_key"]]["folder"]
    ext = TASKS[ctx["task_key"]]["ext"]
    return {"format": TASKS[ctx["task_key"]]["format"], "train": str(folder / f"train.{ext}"),
            "holdout": str(folder / f"holdout.{ext}")}


def trial_config(ctx: dict, hparams: dict, output_dir: str, patience: int, min_delta: float = 0.0):
    from trainers.base import TrialConfig

    t = TASKS[ctx["task_key"]]
    return TrialConfig.model_validate(dict(
        task=t["task"], model_path=ctx["model_path"], data=data_files(ctx), hparams=hparams, seed=ctx["seed"],
        output_dir=output_dir, max_seq_length=t["max_seq_length"], evals_per_epoch=1, patience=patience,
        min_delta=min_delta, torch_threads=1))


DUMMY_HPARAMS = dict(learning_rate=1e-3, batch_size=16, num_epochs=1, lr_scheduler_type="linear", warmup_ratio=0.0,
                     weight_decay=0.0, lora_r=8, lora_alpha=16, lora_dropout=0.0)


def copy_adapter(source: str | Path, target: Path) -> str:
    target.mkdir(parents=True, exist_ok=True)
    for name in ADAPTER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, target / name)
    return str(target)


def test_metric(ctx: dict, adapter_dir: str) -> float | None:
    """The task's metric on the test split, for an adapter (the task's own predict + score)."""
    from sweeper.datasets import read_examples
    from trainers import task_module

    if not adapter_dir or not (Path(adapter_dir) / "adapter_config.json").is_file():
        return None
    t = TASKS[ctx["task_key"]]
    folder = ROOT / t["folder"]
    module = task_module(t["task"])
    config = trial_config(ctx, DUMMY_HPARAMS, tempfile.mkdtemp(prefix="bse-test-", dir=ctx["workdir"]), 1)
    examples = read_examples(folder / f"test.{t['ext']}", t["format"])
    return float(module.score(module.predict(config, adapter_dir, examples))[t["metric"]])


class Recorder:
    """Compute accounting for in-process methods: trial-epochs summed over trials, one event per evaluation."""

    def __init__(self, ctx: dict):
        self.ctx, self.budget = ctx, ctx["budget"]
        self.done, self.current, self.key = 0.0, 0.0, ""
        self.events: list[dict] = []
        self.trials = 0

    def start_trial(self, key: str) -> None:
        self.key, self.current = key, 0.0
        self.trials += 1

    def end_trial(self) -> None:
        self.done += self.current
        self.current = 0.0

    def record(self, round_: int, epoch: float, value: float, save) -> None:
        self.current = float(epoch)
        compute = self.done + self.current
        path = save(Path(self.ctx["workdir"]) / "ckpt" / self.key / str(round_))
        self.events.append({"trial": self.key, "round": int(round_), "compute": round(compute, 4),
                            "value": float(value), "ckpt": str(path), "t": time.time()})
        if compute >= self.budget - 1e-9:
            raise BudgetSpent()


class RecordingReporter:
    """A trainer Reporter (like trainers.base.ListReporter) that feeds the Recorder."""

    def __init__(self, recorder: Recorder, metric: str):
        self.recorder, self.metric, self.best = recorder, metric, -math.inf

    def report(self, record, checkpoint_dir):
        value = float(record.metrics.get(self.metric, float("nan")))
        if not math.isnan(value):
            self.best = max(self.best, value)
        self.recorder.record(record.round, record.bookkeeping["epoch"], value,
                             lambda target: copy_adapter(checkpoint_dir, target))

    def resume_from(self):
        return None

    def stop_requested(self):
        return False


def run_sequential(ctx: dict, configs) -> Recorder:
    """Train the hyperparameters `configs` yields, one after another, until the budget is spent."""
    from trainers import trainer_for

    t = TASKS[ctx["task_key"]]
    recorder = Recorder(ctx)
    train = trainer_for(t["task"])
    try:
        for hparams, tell in configs:
            recorder.start_trial(f"t{recorder.trials:03d}")
            reporter = RecordingReporter(recorder, t["metric"])
            out = tempfile.mkdtemp(prefix="bse-trial-", dir=ctx["workdir"])
            try:
                train(trial_config(ctx, hparams, out, NO_EARLY_STOPPING), reporter)
            finally:
                recorder.end_trial()
                shutil.rmtree(out, ignore_errors=True)
            tell(reporter.best)
    except BudgetSpent:
        pass
    return recorder


# -- (b) random -----------------------------------------------------------------------------------------
def method_random(ctx: dict) -> dict:
    import optuna

    from search_spaces import get_search_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_search_space(ctx["space"])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=ctx["seed"]))

    def configs():
        while True:
            trial = study.ask()
            constants = space.sample(trial)
            yield {**trial.params, **(constants or {})}, lambda value, trial=trial: study.tell(trial, value)

    recorder = run_sequential(ctx, configs())
    return {"events": recorder.events, "trials": recorder.trials}


# -- (c) grid -------------------------------------------------------------------------------------------
def grid_points(seed: int, space, middle_choice: bool = False) -> list[dict]:
    """Learning rate at 4 log-spaced levels x batch sizes x epochs {low, high} x LR schedules; the rest at
    the middle of its range (for categoricals the first choice, or the middle one with `middle_choice`), in a
    seeded random order."""
    from search_spaces.space import CategoricalParam, IntParam

    axes: dict[str, list] = {}
    for name, p in space.params.items():
        if name == "learning_rate":
            lo, hi = math.log(p.low), math.log(p.high)
            axes[name] = [float(f"{math.exp(lo + (hi - lo) * i / 3):.3g}") for i in range(4)]
        elif name in ("batch_size", "lr_scheduler_type"):
            axes[name] = list(p.choices)
        elif name == "num_epochs":
            axes[name] = [p.low, p.high]
        elif isinstance(p, CategoricalParam):
            axes[name] = [p.choices[len(p.choices) // 2 if middle_choice else 0]]
        else:
            mid = (p.low + p.high) / 2
            axes[name] = [int(round(mid)) if isinstance(p, IntParam) else mid]
    points = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    random.Random(seed).shuffle(points)
    return points


def method_grid(ctx: dict) -> dict:
    from search_spaces import get_search_space

    points = grid_points(ctx["seed"], get_search_space(ctx["space"]))
    recorder = run_sequential(ctx, ((p, lambda value: None) for p in itertools.cycle(points)))
    return {"events": recorder.events, "trials": recorder.trials, "grid_size": len(points)}


# -- (e) transformers Trainer.hyperparameter_search(backend="optuna") ----------------------------------
def prepared_for(ctx: dict, hparams: dict):
    """The trainer's own data preparation (tokenization, model factory, metrics), captured before training."""
    from trainers import hf_loop, task_module

    captured = {}
    original = hf_loop.run

    def capture(config, reporter, prepared):
        captured["prepared"] = prepared
        raise BudgetSpent()  # stop before any training

    hf_loop.run = capture
    try:
        task_module(TASKS[ctx["task_key"]]["task"]).train(
            trial_config(ctx, hparams, tempfile.mkdtemp(prefix="bse-prep-", dir=ctx["workdir"]), 1), None)
    except BudgetSpent:
        pass
    finally:
        hf_loop.run = original
    return captured["prepared"]


def method_hf_optuna(ctx: dict) -> dict:
    import optuna
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from search_spaces import get_search_space

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric = TASKS[ctx["task_key"]]["metric"]
    space = get_search_space(ctx["space"])
    prepared = prepared_for(ctx, DUMMY_HPARAMS)
    recorder = Recorder(ctx)

    def sample(trial) -> dict:
        constants = space.sample(trial)  # repeated suggestions of a name return the same value
        return {**trial.params, **(constants or {})}

    def model_init(trial):
        hp = sample(trial) if trial is not None else DUMMY_HPARAMS
        lora = LoraConfig(task_type=prepared.lora_task_type, target_modules=None,  # PEFT's default, as sweeper's `auto`
                          r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"])
        return get_peft_model(prepared.model_factory(), lora)

    def hp_space(trial) -> dict:
        hp = sample(trial)
        return {"learning_rate": hp["learning_rate"], "per_device_train_batch_size": hp["batch_size"],
                "num_train_epochs": float(hp["num_epochs"]), "lr_scheduler_type": hp["lr_scheduler_type"],
                "warmup_steps": float(hp["warmup_ratio"]), "weight_decay": hp["weight_decay"]}

    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            recorder.start_trial(f"t{recorder.trials:03d}")

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            value = metrics.get(f"eval_{metric}", float("nan"))
            recorder.record(round(state.epoch or 0), state.epoch or 0.0, value,
                            lambda target: (model.save_pretrained(target), str(target))[1])

        def on_train_end(self, args, state, control, **kwargs):
            recorder.end_trial()

    args = TrainingArguments(
        output_dir=os.path.join(ctx["workdir"], "hf"), per_device_train_batch_size=16, per_device_eval_batch_size=32,
        num_train_epochs=2.0, warmup_steps=0.0, eval_strategy="epoch", save_strategy="no", logging_strategy="epoch",
        report_to="none", disable_tqdm=True, seed=ctx["seed"], data_seed=ctx["seed"], use_cpu=True,
        dataloader_num_workers=0, remove_unused_columns=False)
    trainer = Trainer(model_init=model_init, args=args, train_dataset=prepared.train_dataset,
                      eval_dataset=prepared.eval_dataset, data_collator=prepared.collator,
                      compute_metrics=prepared.compute_metrics,
                      preprocess_logits_for_metrics=prepared.preprocess_logits, callbacks=[Budget()])
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.hyperparameter_search(
            hp_space=hp_space, compute_objective=lambda m: m[f"eval_{metric}"], n_trials=10_000,
            direction="maximize", backend="optuna", sampler=optuna.samplers.TPESampler(seed=ctx["seed"]))
    except BudgetSpent:
        pass
    return {"events": recorder.events, "trials": recorder.trials}


# -- Ray methods ----------------------------------------------------------------------------------------
def budget_stopper(budget: float):
    from ray import tune

    from sweeper.controller import round_record

    class BudgetStopper(tune.Stopper):
        """Stops the experiment once the trials' epochs, summed, reach the budget."""

        def __init__(self):
            self.epochs: dict[str, float] = {}

        def __call__(self, trial_id, result):
            record = round_record(result)  # sweeper's trials; a plain trainable (tune_optuna) reports `epoch` itself
            epoch = float(record.bookkeeping.get("epoch", 0.0)) if record else float(result.get("epoch", 0.0))
            self.epochs[trial_id] = max(self.epochs.get(trial_id, 0.0), epoch)
            return False

        def stop_all(self):
            return sum(self.epochs.values()) >= budget - 1e-9

    return BudgetStopper()


def events_by_arrival(rows: list[tuple[float, str, int, float, float, str]]) -> list[dict]:
    """(time, trial, round, epoch, value, ckpt) in arrival order -> events with cumulative compute."""
    latest: dict[str, float] = {}
    events = []
    for t, trial, round_, epoch, value, ckpt in sorted(rows, key=lambda r: r[0]):
        latest[trial] = max(latest.get(trial, 0.0), epoch)
        events.append({"trial": trial, "round": round_, "compute": round(sum(latest.values()), 4),
                       "value": value, "ckpt": ckpt, "t": t})
    return events


def method_sweeper(ctx: dict) -> dict:
    import ray.tune

    from sweeper import sweeps
    from sweeper.spec import parse_spec
    from sweeper.store import TrialStore

    t = TASKS[ctx["task_key"]]
    files = data_files(ctx)
    folder = ROOT / t["folder"]
    name = f"bse-{ctx['method']}-{ctx['seed']}"
    raw = {
        "name": name, "task": t["task"], "model": "minilm-l6",
        "data": {**files, "test": str(folder / f"test.{t['ext']}"), "max_seq_length": t["max_seq_length"]},
        "search_space": ctx["space"], "objective": {"metric": t["metric"], "direction": "maximize"},
        "budget": {"trials": int(math.ceil(ctx["budget"])), "max_concurrent": 2, "max_failures": 0},
        "scheduler": {"type": "asha", "grace_period": 1, "evals_per_epoch": 1, **SWEEPER_SCHEDULERS[ctx["method"]]},
        "early_stopping": {"patience": t["patience"], "min_delta": t["min_delta"]},
        "resources": {"cpus": 1, "torch_threads": 1}, "seed": ctx["seed"],
        "storage": {"root": str(Path(ctx["workdir"]) / "state")}, "tracking": {"mode": "none"},
    }
    spec = parse_spec(raw, ROOT)
    original = ray.tune.RunConfig

    class BudgetRunConfig(original):  # sweeper has no compute budget: add a stopper to the config it builds
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("stop", budget_stopper(ctx["budget"]))
            super().__init__(*args, **kwargs)

    ray.tune.RunConfig = BudgetRunConfig
    try:
        status = sweeps.run(spec).status
    except Exception as exc:  # noqa: BLE001 - e.g. the export of a sweep whose last checkpoints were dropped
        status = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        ray.tune.RunConfig = original
    store = TrialStore(spec.database_url())
    experiment = Path(ctx["workdir"]) / "state" / "ray" / name
    rows = []
    for key, rounds in store.rounds(name).items():
        for r in rounds:
            rows.append((r.recorded_at.timestamp(), key, r.round, float(r.bookkeeping.get("epoch", r.round)),
                         float(r.metrics.get(t["metric"], float("nan"))),
                         r.checkpoint or _on_disk_checkpoint(experiment, key, r.round)))
    trials = store.trials(name)
    return {"events": events_by_arrival(rows), "trials": len([x for x in trials if x.rounds]),
            "sweep_status": status,
            "stops": {s: sum(1 for x in trials if x.stop_reason == s) for s in {x.stop_reason for x in trials}}}


def _on_disk_checkpoint(experiment: Path, trial_key: str, round_: int) -> str:
    """A round's checkpoint that Tune persisted but never announced (a stop_all ends the experiment before
    the driver processes the trial's last save, so the store never hears of it): checkpoint_<round - 1>."""
    for trial_dir in experiment.glob(f"*_{trial_key}_*"):
        candidate = trial_dir / f"checkpoint_{round_ - 1:06d}"
        if (candidate / "adapter_config.json").is_file():
            return str(candidate)
    return ""


def _plain_trainable(params: dict, ctx: dict) -> None:
    """What a plain Ray Tune user writes: train, report every epoch's metrics, no scheduler, no patience."""
    from ray import tune

    from trainers import trainer_for

    class Reporter:
        def report(self, record, checkpoint_dir):
            trial = tune.get_context().get_trial_id()
            target = Path(ctx["workdir"]) / "ckpt" / trial / str(record.round)
            path = copy_adapter(checkpoint_dir, target)
            tune.report({**record.metrics, "round": record.round, "epoch": record.bookkeeping["epoch"],
                         "adapter": path})

        def resume_from(self):
            return None

        def stop_requested(self):
            return False

    out = tempfile.mkdtemp(prefix="bse-trial-", dir=ctx["workdir"])
    try:
        trainer_for(TASKS[ctx["task_key"]]["task"])(trial_config(ctx, params, out, NO_EARLY_STOPPING), Reporter())
    finally:
        shutil.rmtree(out, ignore_errors=True)


method_sweeper_objective = method_sweeper_rf2 = method_sweeper  # the scheduler block differs by ctx["method"]


def method_tune_optuna(ctx: dict) -> dict:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import get_search_space

    metric = TASKS[ctx["task_key"]]["metric"]
    rows: list = []

    class Events(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            rows.append((time.time(), trial.trial_id, int(result["round"]), float(result.get("epoch", 0.0)),
                         float(result.get(metric, float("nan"))), result.get("adapter", "")))

    ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=os.environ["RAY_TMPDIR"],
             runtime_env={"env_vars": WORKER_ENV})
    try:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_plain_trainable, ctx=ctx), {"cpu": 1}),
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(space=get_search_space(ctx["space"]).sample, metric=metric, mode="max",
                                        seed=ctx["seed"]),
                num_samples=int(math.ceil(ctx["budget"])), max_concurrent_trials=2, reuse_actors=True),
            run_config=tune.RunConfig(name="plain", storage_path=str(Path(ctx["workdir"]) / "ray"),
                                      stop=budget_stopper(ctx["budget"]), callbacks=[Events()], verbose=0),
        )
        tuner.fit()
    finally:
        ray.shutdown()
    events = events_by_arrival(rows)
    return {"events": events, "trials": len({e["trial"] for e in events})}


# -- one job = one (method, seed) -----------------------------------------------------------------------
def run_job(ctx: dict) -> dict:
    from trainers.models import resolve_model

    ctx["model_path"] = resolve_model("minilm-l6")
    started = time.perf_counter()
    result = globals()[f"method_{ctx['method']}"](ctx)
    search_s = time.perf_counter() - started
    within = [e for e in result["events"] if e["compute"] <= ctx["budget"] + 1e-9 and not math.isnan(e["value"])]
    best = max(within, key=lambda e: e["value"], default=None)
    result.update(method=ctx["method"], seed=ctx["seed"], search_s=round(search_s, 1), best=best,
                  test=test_metric(ctx, best["ckpt"]) if best else None,
                  spent=max((e["compute"] for e in result["events"]), default=0.0))
    return result


# -- the driver -----------------------------------------------------------------------------------------
def ray_cleanup(marker: str) -> None:
    """Kill (by id) any process left by a job's private Ray instance (found by its temp folder)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []):
                proc.send_signal(signal.SIGKILL)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def run_all(args, workdir: Path) -> list[dict]:
    jobs = [(m, s) for s in range(args.seeds) for m in args.methods]
    # Interleave so the Ray jobs (2 cores) alternate with pairs of sequential jobs (1 core each).
    pending = list(jobs)
    running: list[tuple] = []
    results: list[dict] = []
    capacity = args.parallel

    def used():
        return sum(2 if r[0][0] in RAY_METHODS else 1 for r in running)

    def launch(job):
        method, seed = job
        jobdir = workdir / f"{method}-{seed}"
        jobdir.mkdir(parents=True, exist_ok=True)
        ray_dir = f"/tmp/bse{os.getpid() % 100000}-{method[:3]}{seed}"
        ctx = {"task_key": args.task, "method": method, "seed": seed + args.seed_base, "budget": args.budget,
               "space": args.space, "workdir": str(jobdir)}
        (jobdir / "job.json").write_text(json.dumps(ctx))
        env = {**os.environ, **WORKER_ENV, "RAY_TMPDIR": ray_dir, "PYTHONUNBUFFERED": "1"}
        log = open(jobdir / "log.txt", "w")
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--job", str(jobdir / "job.json")],
                                cwd=str(jobdir), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        running.append((job, proc, jobdir, ray_dir, time.perf_counter(), log))
        print(f"[search_efficiency] start {method} seed {seed}", flush=True)

    while pending or running:
        launched = True
        while launched:
            launched = False
            for job in list(pending):
                need = 2 if job[0] in RAY_METHODS else 1
                if used() + need <= capacity or used() == 0:
                    pending.remove(job)
                    launch(job)
                    launched = True
                    break
                if need == 1 or used() == 0:
                    break  # keep the order: wait for room rather than skipping far ahead
        time.sleep(1.0)
        for item in list(running):
            job, proc, jobdir, ray_dir, started, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            ray_cleanup(ray_dir)
            shutil.rmtree(ray_dir, ignore_errors=True)
            out = jobdir / "result.json"
            if proc.returncode != 0 or not out.is_file():
                tail = (jobdir / "log.txt").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"job {job} failed (exit {proc.returncode}):\n{tail}")
            result = json.loads(out.read_text())
            result["job_wall_s"] = round(time.perf_counter() - started, 1)
            results.append(result)
            print(f"[search_efficiency] done {job[0]} seed {job[1]}: {result['trials']} trials, best "
                  f"{(result['best'] or {}).get('value')}, test {result['test']}, {result['job_wall_s']} s", flush=True)
    return results


def best_so_far(events: list[dict], compute: float) -> float | None:
    values = [e["value"] for e in events if e["compute"] <= compute + 1e-9 and not math.isnan(e["value"])]
    return max(values) if values else None


def compute_to_target(events: list[dict], target: float, budget: float) -> float:
    for e in sorted(events, key=lambda e: e["compute"]):
        if e["compute"] <= budget + 1e-9 and e["value"] >= target:
            return e["compute"]
    return math.inf


def _mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _compute(value: float) -> str:
    return "not reached" if math.isinf(value) else f"{value:.1f}"


def paired_lines(by_method: dict, budget: float, metric: str) -> tuple[list[str], list[str]]:
    """Per seed, sweeper against each method at the budget (same seed = the same first random points).
    Also returns the methods against which sweeper's mean holdout margin is not above its paired sd."""
    mine = {r["seed"]: r for r in by_method.get("sweeper", [])}
    weak: list[str] = []
    lines = [f"- Paired by seed at {budget:g} trial-epochs (sweeper minus the other; wins / ties / losses over seeds):"]
    for m, runs in by_method.items():
        if m == "sweeper":
            continue
        hold, test, record = [], [], [0, 0, 0]
        for r in runs:
            if r["seed"] not in mine:
                continue
            a, b = best_so_far(mine[r["seed"]]["events"], budget), best_so_far(r["events"], budget)
            hold.append(a - b)
            record[0 if a > b + 1e-9 else 1 if abs(a - b) <= 1e-9 else 2] += 1
            if mine[r["seed"]]["test"] is not None and r["test"] is not None:
                test.append(mine[r["seed"]]["test"] - r["test"])
        if hold:
            sd = statistics.stdev(hold) if len(hold) > 1 else 0.0
            tsd = statistics.stdev(test) if len(test) > 1 else 0.0
            lines.append(f"  - vs {METHODS[m]}: holdout {metric} {statistics.mean(hold):+.3f} ± {sd:.3f}, "
                         f"test {statistics.mean(test) if test else float('nan'):+.3f} ± {tsd:.3f}; "
                         f"{record[0]} / {record[1]} / {record[2]}")
            if statistics.mean(hold) <= sd:
                weak.append(m)
    return lines, weak


def render(results: list[dict], args, wall_s: float) -> tuple[str, dict]:
    budget = args.budget
    metric = TASKS[args.task]["metric"]
    best_any = max(r["best"]["value"] for r in results if r["best"])
    target = 0.9 * best_any
    by_method = {m: [r for r in results if r["method"] == m] for m in args.methods}
    summary = {}
    lines = [
        f"## Search efficiency: {args.task} ({date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
        "CPU only, shared machine)",
        "",
        f"Command: `{args.command}`",
        "",
        f"Task {TASKS[args.task]['task']}, LoRA MiniLM-L6, search space `{args.space}`, objective holdout `{metric}`, "
        f"{args.seeds} seed(s) per method, budget {budget:g} trial-epochs per run (compute = epochs trained, summed "
        f"over trials). Target = 90% of the best holdout {metric} any method found within budget "
        f"({best_any:.4f}) = **{target:.4f}**. Sweep wall time {wall_s / 60:.1f} min.",
        "",
        f"| method | trials / run | compute to target (median; per seed) | reached | best holdout @ {budget / 4:g} | "
        f"@ {budget / 2:g} | @ {budget:g} (mean ± sd) | test {metric} @ {budget:g} (mean ± sd) | wall s / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, runs in by_method.items():
        if not runs:
            continue
        ctt = [compute_to_target(r["events"], target, budget) for r in runs]
        median = statistics.median(ctt)
        at = {f: [best_so_far(r["events"], budget * f) for r in runs] for f in (0.25, 0.5, 1.0)}
        tests = [r["test"] for r in runs]
        summary[m] = {"ctt_median": median, "ctt": ctt, "holdout_mean": statistics.mean([v for v in at[1.0] if v is not None]),
                      "test_mean": statistics.mean([v for v in tests if v is not None]) if any(v is not None for v in tests) else None,
                      "holdout_sd": statistics.stdev(at[1.0]) if len(at[1.0]) > 1 else 0.0}
        lines.append(
            f"| {METHODS[m]} | {statistics.mean(r['trials'] for r in runs):.1f} | {_compute(median)}; "
            f"{', '.join(_compute(c) for c in ctt)} | {sum(not math.isinf(c) for c in ctt)}/{len(runs)} | "
            f"{_mean_sd(at[0.25])} | {_mean_sd(at[0.5])} | {_mean_sd(at[1.0])} | {_mean_sd(tests)} | "
            f"{statistics.mean(r['search_s'] for r in runs):.0f} |")
    lines.append("")
    paired, weak = paired_lines(by_method, budget, metric) if len(summary) > 1 and "sweeper" in summary else ([], [])
    if "sweeper" in summary and "random" in summary:
        s, r = summary["sweeper"], summary["random"]
        ratio = s["ctt_median"] / r["ctt_median"] if not math.isinf(r["ctt_median"]) and r["ctt_median"] else math.nan
        goal1 = (not math.isinf(s["ctt_median"])) and (math.isinf(r["ctt_median"]) or s["ctt_median"] <= r["ctt_median"] / 3)
        others = [m for m in summary if m != "sweeper"]
        beats_holdout = all(s["holdout_mean"] > summary[m]["holdout_mean"] for m in others)
        beats_test = all(s["test_mean"] is not None and summary[m]["test_mean"] is not None
                         and s["test_mean"] > summary[m]["test_mean"] for m in others)
        lines += [
            f"- Goal 1, sweeper reaches the target with at most 1/3 of random search's compute: sweeper median "
            f"{_compute(s['ctt_median'])} vs random {_compute(r['ctt_median'])} trial-epochs (ratio "
            f"{ratio:.2f}): **{'met' if goal1 else 'NOT met'}**.",
            f"- Goal 2, sweeper beats every other method at equal compute ({budget:g} trial-epochs), mean best holdout "
            f"{metric}: **{'met' if beats_holdout else 'NOT met'}**; mean test {metric} of the selected model: "
            f"**{'met' if beats_test else 'NOT met'}**.",
        ]
        if weak and (beats_holdout or beats_test):
            lines[-1] += (f" On the mean only: against {', '.join(weak)} the paired margin is smaller than its "
                          "seed-to-seed spread, so this is not a reliable win.")
    lines += paired
    stops = {}
    for r in by_method.get("sweeper", []):
        for k, v in (r.get("stops") or {}).items():
            stops[k] = stops.get(k, 0) + v
    if stops:
        ended = ", ".join(f"{k or 'budget stop'} {v}" for k, v in sorted(stops.items()))
        lines.append(f"- sweeper's trials ended by: {ended} (summed over seeds).")
    lines.append("")
    return "\n".join(lines), summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="restaurant8k")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--space", default=SPACE, help="search space (lora-default: the replay tables' space)")
    parser.add_argument("--seed-base", type=int, default=0)
    parser.add_argument("--budget", type=float, default=16.0, help="trial-epochs per (method, seed) run")
    parser.add_argument("--methods", default=None, help="comma-separated (default: all; with --smoke: all but "
                                                         "sweeper_objective and sweeper_rf2, sweeper's code path)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--raw", default=None, help="also write every run's trajectory as JSON here")
    parser.add_argument("--parallel", type=int, default=2, help="cores to fill: a Ray job takes 2, the others 1")
    parser.add_argument("--smoke", action="store_true", help="CI setting: restaurant8k-small, 1 seed, budget 1 "
                                                              "(jobs scheduled as --parallel says)")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--from-raw", help="render the table again from a --raw file of an earlier run (no training)")
    args = parser.parse_args()
    if args.from_raw:
        raw = json.loads(Path(args.from_raw).read_text())
        for key in ("task", "seeds", "budget", "methods", "command"):
            setattr(args, key, raw["args"][key])
        args.space = raw["args"].get("space", SPACE)
        text, _ = render(raw["runs"], args, raw.get("wall_s", math.nan))
        print(text)
        with open(args.results, "a") as fh:
            fh.write("\n" + text)
        return 0
    if args.job:
        ctx = json.loads(Path(args.job).read_text())
        result = run_job(ctx)
        (Path(args.job).parent / "result.json").write_text(json.dumps(result))
        return 0
    args.command = " ".join([".venv/bin/python", "bench/search_efficiency.py", *sys.argv[1:]])
    if args.smoke:
        # --parallel as given (default 2): a Ray job alone, never two Rays starting at once on 2 cores
        args.task, args.seeds, args.budget = "restaurant8k-small", 1, 1.0
    if args.methods:
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    else:  # --smoke leaves out sweeper's variants: the same code path as sweeper
        args.methods = [m for m in METHODS if not (args.smoke and m in SWEEPER_SCHEDULERS and m != "sweeper")]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    os.environ.update(WORKER_ENV)
    workdir = Path(tempfile.mkdtemp(prefix="bse-"))
    started = time.perf_counter()
    try:
        results = run_all(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall_s = time.perf_counter() - started
    text, _ = render(results, args, wall_s)
    print(text)
    if args.raw:
        Path(args.raw).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "runs": results,
                                              "wall_s": wall_s}, indent=1))
    with open(args.results, "a") as fh:
        fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
