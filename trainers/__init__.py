"""Trial workers: one file per training method, each a plain `train(config, reporter)` function, with
`predict(config, adapter_dir, examples)` and `score(records)` to re-evaluate a trained adapter.

Each task is registered once, below, as a `TaskDefinition`: its module and, as plain data, what the spec and
the CLI need to know of it (the formats it reads, the metrics it reports, what a checkpoint holds). The modules
LoRA adapts are the spec's `model.target_modules` (PEFT's default for the architecture unless listed). Adding a
task is its trainer file and one `register_task` call. Reading the registry imports no trainer: torch and
transformers load only where a trial trains or predicts.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

from sweeper.datasets import FORMATS

LORA_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")


@dataclass(frozen=True)
class TaskDefinition:
    name: str
    module: str  # import path of a module with train, predict and score
    formats: tuple[str, ...]  # the `data.format`s it reads (sweeper.datasets.FORMATS)
    metrics: tuple[str, ...]  # the holdout metrics it reports: what an objective or a gate may name
    per_field: bool = False  # it also reports `f1_<field>` for each field of the data
    model_files: tuple[str, ...] = LORA_ADAPTER_FILES  # what a checkpoint holds of the model, the first required
    lora: bool = True  # it fine-tunes with LoRA through trainers/hf_loop.py (its TrainingArguments are exported)
    prompted: bool = False  # it asks a language model for fields with a prompt (`data.prompt_template`)
    spans: bool = False  # it learns fields as spans of the text: extraction values must be found in it

    def reports(self, metric: str) -> bool:
        return metric in self.metrics or (self.per_field and metric.startswith("f1_"))

    def metric_names(self) -> tuple[str, ...]:
        """Its metrics as a spec writes them, `f1_<field>` standing for each field's F1."""
        return self.metrics + (("f1_<field>",) if self.per_field else ())

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


_TASKS: dict[str, TaskDefinition] = {}


def register_task(task: TaskDefinition) -> None:
    """Add a task; a second task of the same name, or a format no reader knows, is refused."""
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered ({_TASKS[task.name].module})")
    unknown = [f for f in task.formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"task {task.name!r} names unknown data formats {unknown}; known: {', '.join(FORMATS)}")
    _TASKS[task.name] = task


def check_task(name: str) -> str:
    """`name`, if it is a registered task; ValueError otherwise (pydantic reports it with its path)."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; use one of {', '.join(sorted(_TASKS))}")
    return name


def get_task(name: str) -> TaskDefinition:
    return _TASKS[check_task(name)]


def all_tasks() -> list[TaskDefinition]:
    return [_TASKS[name] for name in sorted(_TASKS)]


def task_module(task: str) -> ModuleType:
    """The module of a task: `train`, `predict` and `score`."""
    return get_task(task).load()


def trainer_for(task: str) -> Callable:
    return task_module(task).train


register_task(TaskDefinition(
    "token_tagging", "trainers.token_tagging", formats=("restaurant8k", "extraction"),
    metrics=("eval_loss", "f1_micro", "precision_micro", "recall_micro"), per_field=True, spans=True))
register_task(TaskDefinition(
    "sequence_classification", "trainers.sequence_classification", formats=("csv",),
    metrics=("eval_loss", "accuracy", "f1_macro")))
register_task(TaskDefinition(
    "causal_lm_sft", "trainers.causal_lm_sft", formats=("extraction", "restaurant8k", "jsonl"),
    metrics=("eval_loss", "f1_micro", "precision_micro", "recall_micro", "json_valid_rate", "exact_match"),
    per_field=True, prompted=True))
register_task(TaskDefinition(  # deterministic curves, no model: for testing the controller in seconds
    "synthetic", "trainers.synthetic", formats=("restaurant8k", "csv", "jsonl", "extraction"),
    metrics=("eval_loss", "accuracy"), model_files=("synthetic_state.json",), lora=False))
