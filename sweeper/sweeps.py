"""What `sweeper run` does, in order: validate, audit the data, record, run (or resume) on Ray, export the
winner, and promote it when the spec asks (`promotion.on_run`).

Kept apart from the CLI so that the HTTP service and tests drive sweeps the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sweeper import tracking
from sweeper.audit import AuditRefused, audit, check_same_data
from sweeper.datasets import DataError
from sweeper.export import ExportError, export_sweep
from sweeper.promotion import PromotionError, PromotionResult, promote
from sweeper.spec import Spec, SpecError, keeping_recorded_defaults, stored_spec
from sweeper.store import CLAIM_TOKEN_ENV, StoreUnavailable, Sweep, TrialStore
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


def open_store(spec: Spec) -> TrialStore:
    store = TrialStore(spec.database_url())
    store.upgrade()
    return store


@dataclass
class RunOutcome:
    status: str  # completed | interrupted | failed | already_completed
    resumed: bool
    export: Path | None
    wandb_dir: Path | None = None  # where the W&B runs are (None: tracking off)
    promotion: PromotionResult | None = None  # when the spec asks to promote at the end of the run


def run(spec: Spec, address: str | None = None, allow: frozenset[str] = frozenset()) -> RunOutcome:
    """`allow`: audit refusal codes the user lets through (`--allow`); they are recorded with the sweep."""
    from sweeper import controller  # Ray loads only when a sweep really runs

    report = audit(spec, allow)  # bad data is refused here, before the store or Ray is touched
    if not report.passed:
        raise AuditRefused(report)
    mode = tracking.spec_mode(spec)  # offline | online | disabled; the API key stays in the environment only
    env = {"WANDB_MODE": mode}
    os.environ.update(env)
    controller.connect(spec, address, env)  # a trial that no node can hold is refused before anything is written
    layout = Layout(spec)
    problems = storage_problems(layout)  # before anything is written: an unwritable path fails now, not mid-sweep
    if problems:
        raise StorageError(problems, source="storage")
    store = open_store(spec)
    from sweeper.search import extend_budget  # Optuna loads only when a sweep really runs

    recorded = store.get_sweep(spec.name)
    spec = keeping_recorded_defaults(spec, recorded.spec if recorded else None)  # a default changed since it started
    extend_budget(store, spec, os.environ.get(CLAIM_TOKEN_ENV))  # more budget continues the study; else refused
    sweep = store.open_sweep(spec.name, stored_spec(spec), spec.fingerprint(), spec.objective.metric, spec.objective.mode)
    try:
        with store.driving(spec.name, os.environ.get(CLAIM_TOKEN_ENV)):  # one live driver per sweep, or ClaimHeld
            return _run_claimed(spec, address, report, layout, mode, env, store, sweep)
    finally:
        controller.shutdown()  # after the promotion, whose steps ran on this Ray


def _run_claimed(spec: Spec, address: str | None, report, layout: Layout, mode: str, env: dict[str, str],
                 store: TrialStore, sweep: Sweep) -> RunOutcome:
    """The rest of `run`, while this process holds the sweep's claim."""
    from sweeper import controller

    if sweep.status == "completed":
        return RunOutcome("already_completed", False, layout.export_dir if layout.export_dir.exists() else None)
    check_same_data(sweep.audit, report)  # a resume goes on with the data its trials started on, or refuses
    store.update_sweep(spec.name, audit=report.to_dict())  # what this run (or resume) was allowed to run on
    model_path = resolve_model(spec.model.path)  # converts a GGUF model once, before trials race for it
    store.update_sweep(spec.name, status="running", message="")
    try:
        result = controller.run_sweep(spec, spec.database_url(), layout.tune_path, layout.sweep_dir, model_path,
                                      address=address, env=env, tracking_mode=mode)
    except BaseException as exc:
        outage = _store_outage(exc)
        if outage is None:
            problems = storage_problems(layout) if isinstance(exc, Exception) else []
            message = f"{type(exc).__name__}: {exc}"
            if problems:  # a full or broken disk shows up as whatever Ray failed to write or read back
                message = f"{'; '.join(f'{field}: {text}' for field, text in problems)}; the sweep stopped ({message})"
            store.update_sweep(spec.name, status="failed", message=message[:2000])
            if problems:
                raise StorageError(problems, source=f"storage (the sweep stopped: {type(exc).__name__})") from exc
            raise
        # The database went away for longer than the retries: the sweep stops resumable, not failed.
        stopped = StoreUnavailable(f"{outage}; the sweep stopped, its trials' checkpoints are kept: run `sweeper run` "
                                   "again to resume once the database is back")
        store.retries = 0  # it was just unreachable through every retry: one more try, then say so
        try:
            store.update_sweep(spec.name, status="interrupted", message=str(stopped)[:2000])
        except StoreUnavailable:
            pass  # still down: the message above is all there is to say
        raise stopped from None
    store.update_sweep(spec.name, experiment_path=result.experiment_path)
    if not result.finished:
        store.update_sweep(spec.name, status="interrupted", message="run `sweeper run` again to resume")
        return RunOutcome("interrupted", result.resumed, None)
    failed = _all_trials_failed(store, spec.name)
    if failed and (problems := storage_problems(layout)):
        failed = f"{'; '.join(f'{field}: {text}' for field, text in problems)}; {failed}"
    if failed:
        store.update_sweep(spec.name, status="failed", message=failed)
        return RunOutcome("failed", result.resumed, None)
    export = _export(store, spec, layout, model_path) if store.best_trial(spec.name) else None
    on_run = export and spec.promotion and spec.promotion.on_run
    promoted = _promote(store, spec, model_path, layout, address, env) if on_run else None
    store.update_sweep(spec.name, status="completed")  # last: whoever sees `completed` finds the export there
    summary = promoted.to_dict() if promoted else None
    if mode != "disabled":  # W&B: after the fact
        tracking.log_summary(store, spec.name, summary, layout.export_dir, mode=mode, project=spec.tracking.project,
                             directory=layout.wandb_dir)
    wandb_dir = layout.wandb_dir if mode != "disabled" else None
    return RunOutcome("completed", result.resumed, export, wandb_dir, promoted)


class StorageError(SpecError):
    """`storage.root` or `storage.tune_path` cannot be written (missing, not a folder, read-only, full)."""


PROBE_BYTES = 1 << 20  # room for at least this much, or the storage counts as full


def storage_problems(layout: Layout) -> list[tuple[str, str]]:
    """(field, problem) for each local storage folder that cannot take a 1 MiB file right now."""
    tune_path = layout.tune_path
    places = [("storage.root", layout.root)]
    if "://" not in tune_path and not Path(tune_path).is_relative_to(layout.root):
        field = "storage.tune_path (SWEEPER_STORAGE_PATH)" if os.environ.get("SWEEPER_STORAGE_PATH") else "storage.tune_path"
        places.append((field, Path(tune_path)))
    problems = []
    for field, folder in places:
        probe = folder / f".sweeper-write-probe-{os.getpid()}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as handle:
                handle.write(bytes(PROBE_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            problems.append((field, f"cannot write to {folder}: {exc.strerror or exc}"))
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
    return problems


def _store_outage(exc: BaseException | None) -> StoreUnavailable | None:
    """The StoreUnavailable behind an exception, if any (Tune may raise it from a callback or the searcher)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StoreUnavailable):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _all_trials_failed(store: TrialStore, name: str) -> str:
    """A message when every trial failed (a broken setup, not a bad hyperparameter), else ''."""
    trials = store.trials(name)
    if not trials or any(t.status != "failed" for t in trials):
        return ""
    last_line = next((line for line in reversed(trials[0].error.strip().splitlines()) if line.strip()), "unknown")
    return f"all {len(trials)} trials failed; the first ended with: {last_line[:500]}"


def _export(store: TrialStore, spec: Spec, layout: Layout, model_path: str) -> Path:
    """The winner's export; if it cannot be written (its data changed, its checkpoint is gone) the sweep says why,
    never stays `running`: the trials are kept, and `sweeper export` can write it once the cause is fixed."""
    try:
        return export_sweep(store, spec.name, layout.export_dir, model_path)
    except (ExportError, DataError) as exc:
        store.update_sweep(spec.name, status="failed", message=f"the trials ended, but the export failed: {exc}"[:2000])
        raise


def _promote(store: TrialStore, spec: Spec, model_path: str, layout: Layout, address: str | None,
             env: dict[str, str]) -> PromotionResult:
    """The spec's gates (fixed before the sweep) on the test split; the export is rewritten to say the outcome.
    The re-evaluations and seed re-trainings run on the driver's Ray, on workers like the trials'."""
    from sweeper import controller

    try:
        return promote(store, spec.name, model_path, layout.export_dir, controller.Workers(spec, address, env))
    except (PromotionError, SpecError) as exc:  # the trials are done and kept; only the promotion could not run
        store.update_sweep(spec.name, status="completed", message=f"promotion failed: {exc}"[:2000])
        raise

