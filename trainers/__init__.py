"""Trial workers: one file per training method, each a plain `train(config, reporter)` function, with
`predict(config, adapter_dir, examples)` and `score(records)` to re-evaluate a trained adapter.

The registry maps a spec's `task:` to its trainer and refuses duplicate names. Trainers are imported
lazily so that reading the registry costs nothing (torch and transformers load only in the worker).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Callable

LORA_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")
_TRAINERS: dict[str, str] = {}
_MODEL_FILES: dict[str, tuple[str, ...]] = {}


def register_trainer(task: str, module: str, model_files: tuple[str, ...] = LORA_ADAPTER_FILES) -> None:
    """`model_files`: what a checkpoint holds of the trained model, the first one required (the export copies them)."""
    if task in _TRAINERS:
        raise ValueError(f"trainer for task {task!r} is already registered ({_TRAINERS[task]})")
    _TRAINERS[task] = module
    _MODEL_FILES[task] = model_files


def model_files(task: str) -> tuple[str, ...]:
    return _MODEL_FILES[task]


def trainer_for(task: str) -> Callable:
    return task_module(task).train


def task_module(task: str) -> ModuleType:
    """The module of a task: `train`, `predict` and `score`."""
    if task not in _TRAINERS:
        raise KeyError(f"no trainer for task {task!r}; registered: {', '.join(sorted(_TRAINERS))}")
    return importlib.import_module(_TRAINERS[task])


def registered_tasks() -> list[str]:
    return sorted(_TRAINERS)


register_trainer("token_tagging", "trainers.token_tagging")
register_trainer("sequence_classification", "trainers.sequence_classification")
register_trainer("causal_lm_sft", "trainers.causal_lm_sft")
register_trainer("synthetic", "trainers.synthetic", ("synthetic_state.json",))  # deterministic curves, no model
