"""The contract between the controller and a trial worker.

A trainer is a plain function `train(config: TrialConfig, reporter: Reporter) -> TrialOutcome`. It
evaluates on the holdout once per round, calls `reporter.report(record, checkpoint_dir)` with a `RoundRecord`
after every round, and stops by itself on holdout-loss patience. The controller wraps the reporter around Ray
Tune; tests pass `ListReporter`, so a trainer runs and is tested without Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from sweeper.datasets import Example, check_format, read_examples
from trainers import check_task

# Names checked against the registries (trainers/__init__.py, sweeper.datasets.FORMATS), never listed here.
Task = Annotated[str, AfterValidator(check_task)]
DataFormatName = Annotated[str, AfterValidator(check_format)]
StopReason = Literal["completed", "patience", "max_rounds"]


class HyperParams(BaseModel):
    """Every knob a trial trains with. No defaults: each comes from the search space or `fixed:`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1, description="effective batch size (micro-batch x accumulation)")
    num_epochs: int = Field(ge=1)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    lora_r: int = Field(ge=1)
    lora_alpha: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)


HYPERPARAMETERS: tuple[str, ...] = tuple(HyperParams.model_fields)


class ModelSettings(BaseModel):
    """How the base model is loaded and trained (the spec's `model:` block but its path and sequence length).

    `auto` dtype: bf16 where the CUDA device supports it, else fp16 on CUDA, fp32 on CPU (trainers/base_model.py).
    `auto` target modules: PEFT's default for the model's architecture (its `model_type`)."""

    model_config = ConfigDict(extra="forbid")

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    quantization: Literal["none", "4bit"] = Field(default="none", description="4bit: NF4 QLoRA (bitsandbytes, CUDA)")
    gradient_checkpointing: bool = False
    target_modules: Literal["auto"] | list[str] = "auto"

    @field_validator("target_modules", mode="before")
    @classmethod
    def _targets(cls, value):
        """One clear message instead of pydantic's one per branch of the union."""
        if value == "auto" or (isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
            return value
        raise ValueError("write `auto` (PEFT's default for the model's architecture) or a list of module names")


class DataFiles(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: DataFormatName
    train: str
    holdout: str
    test: str | None = None
    prompt_template: str | None = Field(default=None, description="causal LM: how a row with fields is asked")
    sha256: dict[str, str] | None = Field(default=None, description="role -> SHA-256 the sweep's data audit read")

    def read(self, role: str) -> list[Example]:
        """A split's examples; DataChanged if its file is not the one the data audit read."""
        return read_examples(getattr(self, role), self.format, (self.sha256 or {}).get(role))


class TrialConfig(BaseModel):
    """Everything one trial needs, resolved: absolute paths, concrete hyperparameters."""

    model_config = ConfigDict(extra="forbid")

    task: Task
    model_path: str
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataFiles
    hparams: HyperParams
    seed: int
    output_dir: str
    max_seq_length: int = Field(ge=8)
    evals_per_epoch: int = Field(ge=1)
    patience: int = Field(ge=1)
    min_delta: float = Field(ge=0)
    max_micro_batch: int | None = Field(default=None, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)
    max_rounds: int | None = Field(default=None, ge=1, description="stop after this many rounds (re-runs)")
    generation_eval_examples: int = Field(default=32, ge=0, description="causal LM: holdout rows decoded per round")
    max_new_tokens: int | None = Field(default=None, ge=1, description="causal LM: None = from the longest answer")


@dataclass
class RoundRecord:
    """One evaluation round as the worker reports it, in two namespaces so that nothing downstream sorts keys
    by name: `metrics` are the holdout metrics only (eval_loss, f1_*, accuracy, ...: what the objective, compare,
    the export and the gates read); `bookkeeping` is everything else known of the round (epoch, train_loss,
    examples_seen, tokens_seen, stop_reason, device, time_*_s, the worker's node, pid and memory, and for LoRA
    trainers what ran: `RAN_WITH` and `MEASURED` below)."""

    round: int
    metrics: dict[str, float]
    bookkeeping: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def steps(self, batch_size: int) -> int:
        """Optimizer steps so far: the trainer's own count, else from the examples it has seen (0 if neither)."""
        return int(self.bookkeeping.get("steps") or self.bookkeeping.get("examples_seen", 0) // batch_size)

    @classmethod
    def from_dict(cls, data: dict) -> RoundRecord:
        return cls(int(data["round"]), dict(data["metrics"]), dict(data.get("bookkeeping") or {}))


# What a LoRA worker really ran with, in every round's bookkeeping (trainers/hf_loop.py), and what it measured. The
# export and W&B take them from there: recomputed on the exporting machine they would describe that machine instead.
RAN_WITH = ("device", "dtype", "quantization", "gradient_checkpointing", "micro_batch", "gradient_accumulation",
            "training_arguments", "lora_config")
MEASURED = ("peak_memory_mb", "peak_memory_kind", "tokens_per_s")


def ran_with(bookkeeping: dict, keys: tuple[str, ...] = RAN_WITH) -> dict:
    """The `keys` a round's bookkeeping holds (a trial recorded before they were, or a synthetic one: fewer)."""
    return {k: bookkeeping[k] for k in keys if k in bookkeeping}


class Reporter(Protocol):
    """Where a trainer sends each round's record and checkpoint."""

    def report(self, record: RoundRecord, checkpoint_dir: str | None) -> None:
        """Called once per evaluation round, after the checkpoint of that round is written."""

    def resume_from(self) -> str | None:
        """A checkpoint directory to continue from (after a retry), or None to start fresh."""

    def stop_requested(self) -> bool:
        """Whether the controller has stopped this trial (a scheduler's decision): the trainer then ends at its next
        step instead of training on to its next report, holding the worker the next trial is waiting for."""


@dataclass
class ListReporter:
    """A reporter that keeps every round in memory: for tests, re-runs and benchmarks."""

    checkpoint: str | None = None
    rounds: list[RoundRecord] = field(default_factory=list)
    checkpoints: list[str | None] = field(default_factory=list)

    def report(self, record, checkpoint_dir):
        self.rounds.append(record)
        self.checkpoints.append(checkpoint_dir)

    def resume_from(self):
        return self.checkpoint

    def stop_requested(self):
        return False


@dataclass
class TrialOutcome:
    stop_reason: StopReason
    best_round: int
    best_eval_loss: float
    rounds: int
    device: str
