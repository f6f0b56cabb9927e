"""What `sweeper run` does, in order: validate, record, run (or resume) on Ray, export the winner.

Kept apart from the CLI so that the HTTP service and tests drive sweeps the same way.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sweeper import tracking
from sweeper.datasets import read_splits
from sweeper.export import export_sweep
from sweeper.spec import Spec
from sweeper.store import TrialStore, safe_url
from trainers.models import resolve_model


@dataclass
class Layout:
    """Where a sweep's files live: the store, Tune's experiment, W&B runs and the export."""

    spec: Spec

    @property
    def root(self) -> Path:
        return Path(self.spec.storage.root).resolve()

    @property
    def sweep_dir(self) -> Path:
        return self.root / "sweeps" / self.spec.name

    @property
    def tune_path(self) -> str:
        configured = os.environ.get("SWEEPER_STORAGE_PATH") or self.spec.storage.tune_path
        return configured if configured and "://" in configured else str(Path(configured or self.root / "ray").resolve())

    @property
    def export_dir(self) -> Path:
        return self.sweep_dir / "export"

    @property
    def wandb_dir(self) -> Path:
        return self.sweep_dir / tracking.RUNS_FOLDER


def stored_spec(spec: Spec) -> dict:
    """The spec as recorded in the store and exports: a database password never leaves the process."""
    data = spec.model_dump(mode="json")
    if data["storage"]["database_url"]:
        data["storage"]["database_url"] = safe_url(data["storage"]["database_url"])
    return data


def open_store(spec: Spec) -> TrialStore:
    store = TrialStore(spec.database_url())
    store.upgrade()
    return store


@dataclass
class RunOutcome:
    status: str  # completed | interrupted | already_completed
    resumed: bool
    export: Path | None
    wandb_dir: Path | None = None  # where the W&B runs are (None: tracking off)


def run(spec: Spec, address: str | None = None) -> RunOutcome:
    from sweeper import controller  # Ray loads only when a sweep really runs

    read_splits(spec.data)  # a bad data file is refused here, before the store or Ray is touched
    layout = Layout(spec)
    store = open_store(spec)
    sweep = store.open_sweep(spec.name, stored_spec(spec), spec.fingerprint(), spec.objective.metric, spec.objective.mode)
    if sweep.status == "completed":
        return RunOutcome("already_completed", False, layout.export_dir if layout.export_dir.exists() else None)
    model_path = resolve_model(spec.model)  # converts a GGUF model once, before trials race for it
    store.update_sweep(spec.name, status="running", message="")
    mode = tracking.spec_mode(spec)  # offline | online | disabled; the API key stays in the environment only
    env = {"WANDB_MODE": mode}
    os.environ.update(env)
    try:
        result = controller.run_sweep(spec, spec.database_url(), layout.tune_path, layout.sweep_dir, model_path,
                                      address=address, env=env, tracking_mode=mode)
    except BaseException as exc:
        store.update_sweep(spec.name, status="failed", message=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        controller.shutdown()
    store.update_sweep(spec.name, experiment_path=result.experiment_path)
    if not result.finished:
        store.update_sweep(spec.name, status="interrupted", message="run `sweeper run` again to resume")
        return RunOutcome("interrupted", result.resumed, None)
    export = export_sweep(store, spec.name, layout.export_dir, model_path) if store.best_trial(spec.name) else None
    wandb_dir = _log_summary(store, spec, mode, layout) if mode != "disabled" else None
    store.update_sweep(spec.name, status="completed")  # last: whoever sees `completed` finds the export there
    return RunOutcome("completed", result.resumed, export, wandb_dir)


def _log_summary(store: TrialStore, spec: Spec, mode: str, layout: Layout, promotion: dict | None = None) -> Path:
    """The sweep's W&B summary run (a table of all trials); a W&B failure is reported, never fatal."""
    try:
        tracking.log_sweep_summary(store, spec.name, promotion, mode=mode, project=spec.tracking.project,
                                   directory=layout.wandb_dir)
    except Exception as exc:
        print(f"sweeper: W&B summary run of {spec.name!r} failed: {type(exc).__name__}: "
              f"{tracking.redact(str(exc))}", file=sys.stderr)
    return layout.wandb_dir
