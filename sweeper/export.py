"""Export a sweep's winner so it can be re-run: resolved config, adapter, command, versions, data hashes.

`winner.yaml` / `winner.json` hold the same record. Its `trial:` section is the complete trial config
(hyperparameters and the audited SHA-256 of each data file included), built from the recorded `spec:` as the
sweep built it (sweeper.trial_config); `sweeper train <export>/winner.yaml` rebuilds it the same way, re-runs it
without Ray and compares the holdout metric with the one recorded here. Its `worker:`, `training_arguments:` and
`lora_config:` sections are what the winner's worker recorded at its best round (device, dtype, micro-batch after
any out-of-memory halving, peak memory, ...), never recomputed on the exporting machine.

An export never deletes what it did not write. It is staged beside its folder and then moved in whole: into a
new or empty folder, or swapped with a previous export (recognised by the `.sweeper-export` marker each export
writes) in one rename. A folder holding anything else is refused.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import shutil
import uuid
from importlib import metadata
from pathlib import Path

import yaml

from sweeper import checkpoints
from sweeper.datasets import DataChanged, check_fingerprint, fingerprint
from sweeper.spec import Spec, spec_from_store
from sweeper.store import TrialStore
from sweeper.trial_config import trial_config
from trainers import get_task
from trainers.base import MEASURED, RAN_WITH, ran_with

PACKAGES = ("sweeper", "torch", "transformers", "peft", "accelerate", "ray", "optuna", "wandb", "SQLAlchemy")
MARKER = ".sweeper-export"  # written by every export: what a later export may replace
EXPORT_FILES = ("adapter", "winner.json", "winner.yaml")  # what an export writes besides its marker


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


def worker_record(bookkeeping: dict, lora: bool) -> dict:
    """What the winner's worker ran with and measured at its best round, from its own record: recomputed here, the
    exporting machine (a CPU head, say) would describe itself instead of the GPU the trial ran on."""
    nested = ("training_arguments", "lora_config")  # exported as sections of their own
    worker = {k: v for k, v in ran_with(bookkeeping, RAN_WITH + MEASURED).items() if k not in nested}
    if lora and "training_arguments" not in bookkeeping:
        worker["note"] = ("not recorded: this trial ran before workers recorded their settings, so its "
                          "TrainingArguments and LoraConfig are not known")
    return worker


NO_PROMOTION = {"promoted": False, "status": "NOT PROMOTED",
                "note": "not promoted: no promotion was run for this sweep (`sweeper promote` checks the spec's gates)"}


def audited_data(sweep, spec: Spec) -> dict[str, dict]:
    """{role: {path, sha256}} of the data files as the sweep's audit read them. The winner was trained on those
    bytes: a file that differs on disk now is refused, not recorded under the audit's name."""
    recorded = (sweep.audit or {}).get("fingerprints")
    if not recorded:  # a sweep audited before fingerprints were recorded: the files as they are now
        return {role: {"path": path, "sha256": fingerprint(path)}
                for role in ("train", "holdout", "test") if (path := getattr(spec.data, role))}
    for role, entry in recorded.items():
        if not Path(entry["path"]).is_file():
            raise ExportError(f"data.{role}: {entry['path']}: file not found; the export records the audited data "
                              "files: put it back")
        try:
            check_fingerprint(entry["path"], entry["sha256"])
        except DataChanged as exc:
            raise ExportError(f"data.{role}: {exc}") from None
    return recorded


def export_sweep(store: TrialStore, sweep_name: str, out: Path, model_path: str, promotion: dict | None = None,
                 replace: bool = True) -> Path:
    """Write the best trial's export under `out` (the only trial a promotion may promote); returns the path of
    winner.yaml. The record says in itself whether the trial was promoted, and if not, why. `out` must be new,
    empty, or a previous export (`replace=False`, the CLI without --force, refuses that too); anything else is
    refused with ExportError."""
    problem = target_problem(out, replace)
    if problem:
        raise ExportError(problem)
    sweep = store.get_sweep(sweep_name)
    if sweep is None:
        raise ExportError(f"no sweep named {sweep_name!r} in the store")
    best = store.best_trial(sweep_name)
    if best is None:
        raise ExportError(f"sweep {sweep_name!r} has no trial with a {sweep.objective_metric} value yet")
    spec = spec_from_store(sweep.spec)
    data = audited_data(sweep, spec)
    sha256 = {role: entry["sha256"] for role, entry in data.items()}
    config = trial_config(spec, best.params, model_path, "<output_dir>", sha256)
    best_round_metrics = store.best_round_metrics(sweep_name, best.trial_key).get(best.trial_key, {})
    at_best = next((r.bookkeeping for r in store.trial_rounds(sweep_name, best.trial_key)
                    if r.round == best.best_round), None) or {}
    record = {
        "sweep": sweep_name,
        "trial": config.model_dump(mode="json", exclude={"output_dir", "max_rounds"}),  # the re-run chooses these
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
        "worker": worker_record(at_best, get_task(config.task).lora),
        "training_arguments": at_best.get("training_arguments", {}),
        "lora_config": at_best.get("lora_config", {}),
        "reproduce": f"sweeper train {out / 'winner.yaml'} --rounds {best.best_round}",
        "data_fingerprints": data,
        "versions": package_versions(),
        "spec": sweep.spec,
    }
    recorded = store.best_checkpoint(best)
    try:
        with checkpoints.local_copy(recorded, sweep.experiment_path or "") as checkpoint:  # s3:// downloaded
            _write(out, record, checkpoint, recorded, replace)
    except OSError as exc:
        raise ExportError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    return out / "winner.yaml"


# -- where the export goes: never over anything it did not write ------------------------------------------
def target_problem(out: Path, replace: bool) -> str | None:
    """Why an export may not be written to `out` now, or None: it must be new, empty, or a previous export."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out}: not a folder"
    names = {p.name for p in out.iterdir()}
    if not names:
        return None
    foreign = sorted(names - {*EXPORT_FILES, MARKER})
    if MARKER not in names and (foreign or "winner.yaml" not in names):  # no marker: one from before it existed
        return (f"{out}: the folder is not empty and holds no export (e.g. {', '.join(sorted(names)[:3])}); an "
                "export never writes over other files: name a new or empty folder")
    if foreign:
        return (f"{out}: holds a previous export and files it did not write ({', '.join(foreign[:3])}); move them "
                "away, or name a new or empty folder")
    if not replace:
        return f"{out}: holds a previous export; --force replaces it (only the files the export wrote)"
    return None


def _write(out: Path, record: dict, checkpoint: Path | None, recorded: str, replace: bool) -> None:
    """Stage the export beside `out`, then move it in whole: a crash leaves the old export or the new one.
    `checkpoint`: the winner's checkpoint on this machine (None: gone); `recorded`: where the store says it is."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.sweeper-partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _copy_adapter(checkpoint, recorded, staging / "adapter", get_task(record["trial"]["task"]).model_files)
        text = json.dumps(record, indent=2)
        plain = json.loads(text)  # no shared objects: YAML would write them as anchors, which sweeper's loader refuses
        (staging / "winner.yaml").write_text(yaml.safe_dump(plain, sort_keys=False, width=1000))
        (staging / "winner.json").write_text(text)
        (staging / MARKER).write_text(json.dumps({"sweep": record["sweep"], "files": list(EXPORT_FILES)}) + "\n")
        problem = target_problem(out, replace)  # again: the folder may have changed while the export was built
        if problem:
            raise ExportError(problem)
        if not out.exists():
            staging.rename(out)
        elif not any(out.iterdir()):  # the user's empty folder stays theirs: filled, the marker last
            for name in (*EXPORT_FILES, MARKER):
                shutil.move(staging / name, out / name)
        else:  # a previous export, and nothing else
            _swap(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a swap it holds the previous export


def _swap(staged: Path, out: Path) -> None:
    """Exchange two folders in one step where Linux can (renameat2 RENAME_EXCHANGE); elsewhere two renames, so a
    crash between them leaves the previous export beside `out` under a hidden name, never half of one."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_cwd, exchange = -100, 2
        if renameat2(at_cwd, os.fsencode(staged), at_cwd, os.fsencode(out), exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not "unsupported here": a real failure
            raise OSError(code, os.strerror(code), str(out))
    previous = staged.with_name(staged.name + "-previous")
    out.rename(previous)
    staged.rename(out)
    previous.rename(staged)


def _copy_adapter(source: Path | None, recorded: str, target: Path, files: tuple[str, ...]) -> None:
    if source is None or not (source / files[0]).is_file():
        raise ExportError(f"the winning trial's checkpoint is missing ({recorded or 'never recorded'})")
    target.mkdir()
    for name in files:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
