"""The one way a spec becomes a trial config: for the sweep's trials, the export, promotion and `sweeper train`.

A trial's config is the spec's settings (task, data, seed, schedule, early stopping, resources), the model
folder and how to load it (the spec's `model:` block), the SHA-256 of each data file as the sweep's audit read
it (every trial checks its files against them), and the hyperparameters: the spec's `fixed:` values with the
trial's sampled ones over them.
"""

from __future__ import annotations

from sweeper.spec import Spec
from trainers.base import TrialConfig


def trial_threads(spec: Spec) -> int:
    """Torch threads of one trial (or of a step in its place: a probe, a promotion step): the spec's, else one per
    CPU the trial holds."""
    return spec.resources.torch_threads or max(1, int(spec.resources.cpus))


def template(spec: Spec, model_path: str, sha256: dict[str, str] | None = None, **overrides) -> dict:
    """Every trial's config but its sampled hyperparameters and its output folder, as plain values: it travels
    to the Ray workers, so it holds nothing of the spec that must stay on the driver (the database URL)."""
    return {
        "task": spec.task,
        "model_path": model_path,
        "model": spec.model.settings().model_dump(),
        "data": {**spec.data.model_dump(), "sha256": sha256},
        "hparams": dict(spec.fixed),
        "seed": spec.seed,
        "max_seq_length": spec.model.max_seq_length,
        "evals_per_epoch": spec.scheduler.evals_per_epoch,
        "patience": spec.early_stopping.patience,
        "min_delta": spec.early_stopping.min_delta,
        "max_micro_batch": spec.resources.max_micro_batch,
        "torch_threads": spec.resources.torch_threads,
        "generation_eval_examples": spec.generation_eval_examples,
        "max_new_tokens": spec.max_new_tokens,
        **overrides,
    }


def complete(template: dict, params: dict, output_dir: str, **overrides) -> TrialConfig:
    """A template with one trial's sampled hyperparameters: the config that trial trains with."""
    return TrialConfig.model_validate({**template, "hparams": {**template["hparams"], **params},
                                       "output_dir": output_dir, **overrides})


def trial_config(spec: Spec, params: dict, model_path: str, output_dir: str, sha256: dict[str, str] | None = None,
                 **overrides) -> TrialConfig:
    """The config of the trial with sampled `params`; `overrides`: fields a re-run changes (seed, max_rounds)."""
    return complete(template(spec, model_path, sha256), params, output_dir, **overrides)
