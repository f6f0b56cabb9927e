"""The training loop every trainer shares: HF Trainer + LoRA, one report per evaluation round.

A round is one holdout evaluation (`evals_per_epoch` per epoch). After each round the adapter, optimizer
and scheduler are saved as an HF checkpoint and handed to the reporter, so a retried trial resumes from
its last round instead of from zero. Training stops by itself when the holdout loss has not improved by
`min_delta` for `patience` rounds. The sampled batch size is the effective batch: the micro-batch is what
fits the device, the rest is gradient accumulation, and a CUDA out-of-memory error halves the micro-batch.
Each round's record says what really ran (dtype, quantization, micro-batch and accumulation after any halving, the
TrainingArguments and LoraConfig) and what it cost (peak memory, tokens per second): the export and W&B read them
there, never recomputed on another machine.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass
from typing import Callable

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint, set_seed
from transformers.utils import logging as hf_logging

from trainers.base import Reporter, RoundRecord, TrialConfig, TrialOutcome
from trainers.base_model import check_target_modules, machine_dtype
from trainers.base_model import load_base as load_base  # the trainers load their base model through hf_loop

CPU_MICRO_BATCH = 32  # larger micro-batches bring nothing on a CPU but memory
PREDICT_BATCH = 32  # rows per forward pass when a trained adapter predicts (promotion)
IGNORE = -100  # label of positions that carry no loss


@dataclass
class Prepared:
    """What a task file hands to the loop."""

    model_factory: Callable[[], torch.nn.Module]
    train_dataset: object
    eval_dataset: object
    collator: Callable
    compute_metrics: Callable | None
    lora_task_type: TaskType
    preprocess_logits: Callable | None = None
    extra_metrics: Callable[[torch.nn.Module], dict[str, float]] | None = None
    timings: dict[str, float] | None = None


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def split_batch(effective: int, max_micro: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) whose product is exactly `effective`, micro <= max_micro."""
    micro = min(effective, max_micro)
    while effective % micro:
        micro -= 1
    return micro, effective // micro


def lora_kwargs(config: TrialConfig) -> dict:
    """The LoraConfig of a trial but its task type: the sampled rank, alpha, dropout; the model's target modules
    (None for `auto`: PEFT picks its default for the architecture)."""
    hp, targets = config.hparams, config.model.target_modules
    return {"r": hp.lora_r, "lora_alpha": hp.lora_alpha, "lora_dropout": hp.lora_dropout,
            "target_modules": None if targets == "auto" else list(targets)}


def lora_model(prepared: Prepared, config: TrialConfig) -> torch.nn.Module:
    base = prepared.model_factory()
    check_target_modules(base, config.model)
    model = get_peft_model(base, LoraConfig(task_type=prepared.lora_task_type, **lora_kwargs(config)))
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            # A head kept trainable beside the adapter (modules_to_save) is in the base's 16-bit dtype: fp16
            # gradients cannot be unscaled by the loss scaler, and bf16 weights lose small updates.
            param.data = param.data.float()
    return model


def lora_record(model: torch.nn.Module, config: TrialConfig) -> dict:
    """The LoraConfig a trial really used: its target modules as PEFT resolved them (`auto` included)."""
    targets = model.peft_config["default"].target_modules
    return {**lora_kwargs(config), "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets}


def schedule(config: TrialConfig, n_train: int, max_micro: int | None = None) -> tuple[int, int, int]:
    """(micro-batch, accumulation, steps per round) for a training set of n_train examples."""
    effective = config.hparams.batch_size
    default_micro = effective if torch.cuda.is_available() else CPU_MICRO_BATCH
    micro, accumulation = split_batch(effective, max_micro or config.max_micro_batch or default_micro)
    steps_per_epoch = max(1, math.ceil(n_train / effective))
    return micro, accumulation, max(1, math.ceil(steps_per_epoch / config.evals_per_epoch))


def training_kwargs(config: TrialConfig, micro: int, accumulation: int, round_steps: int) -> dict:
    """The TrainingArguments of a trial, as plain values (the export records them)."""
    hp = config.hparams
    cuda = torch.cuda.is_available()
    dtype = machine_dtype(config.model.dtype)
    return dict(
        output_dir=config.output_dir,
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=max(micro, 32),
        gradient_accumulation_steps=accumulation,
        max_steps=hp.num_epochs * config.evals_per_epoch * round_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler_type,
        warmup_steps=hp.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=hp.weight_decay,
        eval_strategy="steps",
        eval_steps=round_steps,
        save_strategy="steps",
        save_steps=round_steps,
        save_total_limit=2,  # the reporter copies each round's checkpoint out; keep the disk bounded
        logging_strategy="steps",
        logging_steps=round_steps,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        include_num_input_tokens_seen=True,
        report_to="none",
        disable_tqdm=True,
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not cuda,
        bf16=dtype == "bfloat16",  # mixed precision in the model's dtype
        fp16=dtype == "float16",
        activation_checkpointing=config.model.gradient_checkpointing,  # transformers 5's name for it
        activation_checkpointing_kwargs={"use_reentrant": False} if config.model.gradient_checkpointing else None,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def peak_memory() -> dict:
    """This process's peak memory so far: on CUDA what the allocator held at most (reset when a trial starts: a
    fractional GPU's trials are separate processes), else the resident set's peak over the process's life (in a
    reused Ray actor that includes the trials before)."""
    if torch.cuda.is_available():
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "peak_memory_kind": "cuda_max_allocated"}
    return {"peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
            "peak_memory_kind": "max_rss"}


class ObservingTrainer(Trainer):
    """A Trainer whose evaluation leaves the random generators as it found them. Creating a DataLoader iterator draws
    from torch's global generator, so otherwise each evaluation would shift the dropout draws of every training step
    after it, and how often a trial evaluates (`scheduler.evals_per_epoch`) would change the model it trains."""

    def evaluate(self, *args, **kwargs):
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            return super().evaluate(*args, **kwargs)


class RoundReporter(TrainerCallback):
    """Reports each evaluation round, with its checkpoint, once the checkpoint is on disk.

    The round's holdout metrics are the eval loss and what the task computed (`scored` keeps it), not the
    Trainer's evaluation log, which mixes in epoch, token counts and speeds."""

    def __init__(self, config: TrialConfig, reporter: Reporter, prepared: Prepared, round_steps: int, ran_with: dict):
        self.config, self.reporter, self.prepared, self.round_steps = config, reporter, prepared, round_steps
        self.ran_with = ran_with  # what this attempt runs with (trainers.base.RAN_WITH), recorded with every round
        self.tokens_mark = self.train_s_mark = 0.0  # where the round's tokens per second count from
        self.timings = dict(prepared.timings or {})
        self.timings.update(time_train_s=0.0, time_eval_s=0.0, time_checkpoint_s=0.0, time_report_s=0.0)
        self.pending: dict | None = None
        self.scores: dict[str, float] = {}
        self.best_loss, self.best_round = math.inf, 0
        self.model = None
        self.last_mark = time.perf_counter()

    def scored(self, compute_metrics: Callable | None) -> Callable | None:
        """The task's compute_metrics, keeping what it returns for the round's record."""
        if compute_metrics is None:
            return None

        def compute(eval_pred):
            self.scores = compute_metrics(eval_pred)
            return self.scores

        return compute

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        self.tokens_mark = int(getattr(state, "num_input_tokens_seen", 0) or 0)  # a resumed trial's count goes on

    def on_step_begin(self, args, state, control, **kwargs):
        self.step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self.step_started
        self.timings["time_train_s"] += seconds
        self.timings.setdefault("time_first_step_s", seconds)  # warm-up included: the budget probe sets it apart
        if self.reporter.stop_requested():
            control.should_training_stop = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        eval_started = time.perf_counter()
        extra = self.prepared.extra_metrics(self.model) if self.prepared.extra_metrics else {}
        self.timings["time_eval_s"] += metrics.get("eval_runtime", 0.0) + time.perf_counter() - eval_started
        self.pending = {"eval_loss": metrics["eval_loss"], **self.scores, **extra}
        self.scores = {}
        self.last_mark = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        if self.pending is None:  # a save with no evaluation before it (not expected with equal step counts)
            return
        self.timings["time_checkpoint_s"] += time.perf_counter() - self.last_mark
        round_ = state.global_step // self.round_steps
        if self.pending["eval_loss"] < self.best_loss:
            self.best_loss, self.best_round = self.pending["eval_loss"], round_
        if self.config.max_rounds and round_ >= self.config.max_rounds:
            control.should_training_stop = True
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        bookkeeping = {
            "epoch": round(state.epoch or 0.0, 4),
            "train_loss": _last_train_loss(state),
            "examples_seen": state.global_step * self.config.hparams.batch_size,
            "steps": state.global_step,  # optimizer steps so far: what ASHA counts with `scheduler.rung_unit: steps`
            "train_rows": len(self.prepared.train_dataset),  # after windowing: what a round's steps are counted on
            "tokens_seen": tokens,
            "stop_reason": _stop_reason(state, self.config, self.round_steps) if control.should_training_stop else "",
            **{k: round(v, 4) for k, v in self.timings.items()},
            **self.ran_with,
            **peak_memory(),
            "tokens_per_s": self._tokens_per_s(tokens),
        }
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        started = time.perf_counter()
        self.reporter.report(RoundRecord(round_, self.pending, bookkeeping), checkpoint)
        self.timings["time_report_s"] += time.perf_counter() - started
        self.pending = None

    def _tokens_per_s(self, tokens: int) -> float:
        """Input tokens (padding included: what the device computes) per second of training steps, this round."""
        seconds = self.timings["time_train_s"] - self.train_s_mark
        rate = (tokens - self.tokens_mark) / seconds if seconds > 0 else 0.0
        self.tokens_mark, self.train_s_mark = tokens, self.timings["time_train_s"]
        return round(rate, 1)


def _last_train_loss(state) -> float:
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return float(losses[-1]) if losses else float("nan")


def run(config: TrialConfig, reporter: Reporter, prepared: Prepared) -> TrialOutcome:
    """Train with LoRA until completed, out of patience or stopped by the controller."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    hf_logging.set_verbosity_error()  # head-initialisation notices would repeat in every trial's log
    hf_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # the peak of this trial, not of one before it in a reused actor
    dtype = machine_dtype(config.model.dtype)  # a dtype this device cannot run fails here, before any loading
    effective = config.hparams.batch_size
    micro, accumulation, round_steps = schedule(config, len(prepared.train_dataset))
    resume = reporter.resume_from()
    while True:
        started = time.perf_counter()
        set_seed(config.seed)
        model = lora_model(prepared, config)
        load_s = time.perf_counter() - started
        prepared.timings = {**(prepared.timings or {}), "time_load_s": round(load_s, 4)}
        arguments = training_kwargs(config, micro, accumulation, round_steps)
        ran_with = {"device": device_name(), "dtype": dtype, "quantization": config.model.quantization,
                    "gradient_checkpointing": config.model.gradient_checkpointing, "micro_batch": micro,
                    "gradient_accumulation": accumulation,
                    "training_arguments": {**arguments, "output_dir": "<output_dir>"},  # a worker's temporary folder
                    "lora_config": lora_record(model, config)}
        callback = RoundReporter(config, reporter, prepared, round_steps, ran_with)
        trainer = ObservingTrainer(
            model=model,
            args=TrainingArguments(**arguments),
            train_dataset=prepared.train_dataset,
            eval_dataset=prepared.eval_dataset,
            data_collator=prepared.collator,
            compute_metrics=callback.scored(prepared.compute_metrics),
            preprocess_logits_for_metrics=prepared.preprocess_logits,
            callbacks=[EarlyStoppingCallback(config.patience, config.min_delta), callback],
        )
        trainer.remove_callback(PrinterCallback)  # rounds are reported, not printed
        try:
            trainer.train(resume_from_checkpoint=resume)
            break
        except torch.OutOfMemoryError:
            if micro == 1:
                raise
            del trainer, model
            torch.cuda.empty_cache()
            micro, accumulation = split_batch(effective, micro // 2)  # halve, keep the effective batch
            resume = get_last_checkpoint(config.output_dir) or resume
    outcome = TrialOutcome(
        stop_reason=_stop_reason(trainer.state, config, round_steps),
        best_round=callback.best_round,
        best_eval_loss=callback.best_loss,
        rounds=trainer.state.global_step // round_steps,
        device=device_name(),
    )
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()  # free the GPU for the next trial in a reused actor
    return outcome


def _stop_reason(state, config: TrialConfig, round_steps: int) -> str:
    """Why training stopped at this step: every step done, the re-run's round limit, or holdout-loss patience."""
    if state.global_step >= state.max_steps:
        return "completed"
    if config.max_rounds and state.global_step // round_steps >= config.max_rounds:
        return "max_rounds"
    return "patience"


# -- prediction with a trained adapter (promotion re-evaluates the winner on the test split) -----------
def load_adapter(model_factory: Callable[[], torch.nn.Module], adapter_dir: str,
                 config: TrialConfig) -> torch.nn.Module:
    """The base model with a trial's LoRA adapter (and saved head) loaded from a checkpoint, in eval mode."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = PeftModel.from_pretrained(model_factory(), adapter_dir)
    model.eval()
    if config.model.quantization != "none":
        return model  # loaded onto the GPU already, as bitsandbytes quantized it
    return model.to("cuda" if torch.cuda.is_available() else "cpu")


def batches(rows: list, size: int = PREDICT_BATCH):
    """(start index, rows) chunks of a list."""
    for start in range(0, len(rows), size):
        yield start, rows[start : start + size]


def example_losses(logits: torch.Tensor, labels: torch.Tensor, shift: bool = False) -> list[tuple[float, int]]:
    """(summed cross-entropy, labelled positions) per row, so losses pool over any subset of examples.

    `shift`: a causal LM predicts position t+1 from t. Rows of a classifier (logits [B, C]) count one position.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    if logits.dim() == 3:
        logits = logits.transpose(1, 2)  # cross_entropy wants the classes second
    loss = torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="none")
    mask = labels != IGNORE
    if loss.dim() == 1:
        return list(zip(loss.tolist(), mask.int().tolist()))
    return list(zip((loss * mask).sum(1).tolist(), mask.sum(1).tolist()))
