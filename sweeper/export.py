"""Export a sweep's winner so it can be re-run: resolved config, adapter, command, versions, data hashes.

`winner.yaml` / `winner.json` hold the same record. Its `trial:` section is a complete trial config
(hyperparameters included); `sweeper train <export>/winner.yaml` re-runs it without Ray and compares
the holdout metric with the one recorded here.
"""

from __future__ import annotations

import json
import platform
import shutil
from importlib import metadata
from pathlib import Path

import yaml

from sweeper.datasets import fingerprint, read_examples
from sweeper.store import TrialStore
from trainers.base import TrialConfig

PACKAGES = ("sweeper", "torch", "transformers", "peft", "accelerate", "ray", "optuna", "wandb", "SQLAlchemy")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "README.md")


class ExportError(RuntimeError):
    pass


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def trial_config(sweep_spec: dict, params: dict, model_path: str) -> dict:
    """The trial config the sweep ran this trial with (output_dir left for the re-run to choose)."""
    spec = sweep_spec
    return {
        "task": spec["task"],
        "model_path": model_path,
        "data": {k: spec["data"][k] for k in ("format", "train", "holdout", "test")},
        "hparams": {**spec.get("fixed", {}), **params},
        "seed": spec["seed"],
        "max_seq_length": spec["data"]["max_seq_length"],
        "evals_per_epoch": spec["scheduler"]["evals_per_epoch"],
        "patience": spec["early_stopping"]["patience"],
        "min_delta": spec["early_stopping"]["min_delta"],
        "max_micro_batch": spec["resources"]["max_micro_batch"],
        "torch_threads": spec["resources"]["torch_threads"],
        "generation_eval_examples": spec["generation_eval_examples"],
    }


def _hf_kwargs(trial: dict) -> tuple[dict, dict]:
    from trainers import hf_loop  # torch loads only when exporting, not for every CLI command

    config = TrialConfig.model_validate({**trial, "output_dir": "<output_dir>"})
    n_train = len(read_examples(config.data.train, config.data.format))
    micro, accumulation, round_steps = hf_loop.schedule(config, n_train)
    return hf_loop.training_kwargs(config, micro, accumulation, round_steps), hf_loop.lora_kwargs(config)


NO_PROMOTION = {"promoted": False, "status": "NOT PROMOTED",
                "note": "not promoted: no promotion was run for this sweep (`sweeper promote` checks the spec's gates)"}


def export_sweep(store: TrialStore, sweep_name: str, out: Path, model_path: str, promotion: dict | None = None) -> Path:
    """Write the best trial's export under `out` (the only trial a promotion may promote); returns the path of
    winner.yaml. The record says in itself whether the trial was promoted, and if not, why."""
    sweep = store.get_sweep(sweep_name)
    if sweep is None:
        raise ExportError(f"no sweep named {sweep_name!r} in the store")
    best = store.best_trial(sweep_name)
    if best is None:
        raise ExportError(f"sweep {sweep_name!r} has no trial with a {sweep.objective_metric} value yet")
    trial = trial_config(sweep.spec, best.params, model_path)
    best_round_metrics = store.best_round_metrics(sweep_name, best.trial_key).get(best.trial_key, {})
    training_args, lora = _hf_kwargs(trial)
    record = {
        "sweep": sweep_name,
        "trial": trial,
        "winner": {
            "trial_key": best.trial_key,
            "objective": {"metric": sweep.objective_metric, "mode": sweep.objective_mode, "value": best.best_value},
            "best_round": best.best_round,
            "holdout_metrics": best_round_metrics,
            "status": best.status,
            "stop_reason": best.stop_reason,
        },
        "promotion": promotion or NO_PROMOTION,
        "audit": sweep.audit,
        "training_arguments": training_args,
        "lora_config": lora,
        "reproduce": f"sweeper train {out / 'winner.yaml'} --rounds {best.best_round}",
        "data_fingerprints": {role: {"path": path, "sha256": fingerprint(path)}
                              for role, path in trial["data"].items() if role != "format" and path},
        "versions": package_versions(),
        "spec": sweep.spec,
    }
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _copy_adapter(store.best_checkpoint(best), staging / "adapter")
    (staging / "winner.yaml").write_text(yaml.safe_dump(record, sort_keys=False, width=1000))
    (staging / "winner.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # nothing half-written: the export appears whole or not at all
    return out / "winner.yaml"


def _copy_adapter(checkpoint: str, target: Path) -> None:
    source = Path(checkpoint) if checkpoint else None
    if source is None or not (source / "adapter_config.json").is_file():
        raise ExportError(f"the winning trial's checkpoint is missing ({checkpoint or 'never recorded'})")
    target.mkdir()
    for name in ADAPTER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
