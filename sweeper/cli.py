"""The `sweeper` command line: run, validate, trials, status, export, train, db."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from sweeper.datasets import DataError
from sweeper.export import ExportError
from sweeper.spec import SpecError, load_spec
from sweeper.store import StoreError, TrialStore, safe_url
from trainers.models import ModelNotFound

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would hang ~50 s on a machine with no network
app = typer.Typer(help="Hyperparameter sweeps for LoRA fine-tuning.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)  # locals may hold a database URL with its password
db_app = typer.Typer(help="Trial store schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
out = Console(width=None if sys.stdout.isatty() else 200)  # logs and pipes get the whole table
err = Console(stderr=True)

DEFAULT_DB = f"sqlite:///{Path('.sweeper/sweeper.db').resolve()}"
DbOption = Annotated[str, typer.Option("--db", envvar="SWEEPER_DATABASE_URL", show_default=False,
                                       help="SQLAlchemy URL of the trial store [default: .sweeper/sweeper.db]")]
KNOWN_ERRORS = (SpecError, StoreError, ExportError, DataError, ModelNotFound)


def _fail(exc: Exception, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    raise typer.Exit(code)


def _store(url: str | None) -> TrialStore:
    store = TrialStore(url or DEFAULT_DB)
    store.ensure_current()
    return store


@app.command()
def validate(spec_path: Annotated[Path, typer.Argument(help="the sweep spec (YAML)")]) -> None:
    """Check a spec without running anything."""
    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        _fail(exc)
    out.print(f"spec {spec.name!r} is valid: task {spec.task}, {spec.budget.trials} trials, "
              f"objective {spec.objective.metric} ({spec.objective.mode}), store {safe_url(spec.database_url())}")


@app.command()
def run(
    spec_path: Annotated[Path, typer.Argument(help="the sweep spec (YAML)")],
    address: Annotated[Optional[str], typer.Option(help="Ray cluster: 'auto' or ray://HOST:10001; "
                                                   "default: a local Ray")] = None,
) -> None:
    """Run a sweep; if the sweep was interrupted, resume it."""
    from sweeper import sweeps

    try:
        spec = load_spec(spec_path)
        outcome = sweeps.run(spec, address=address or os.environ.get("SWEEPER_RAY_ADDRESS"))
    except KNOWN_ERRORS as exc:
        _fail(exc)
    store = sweeps.open_store(spec)
    if outcome.status == "already_completed":
        out.print(f"sweep {spec.name!r} already completed; nothing to run.")
    _print_trials(store, spec.name)
    if outcome.status == "interrupted":
        out.print(f"sweep {spec.name!r} interrupted; run the same command again to resume.")
        raise typer.Exit(130)
    out.print(f"store:  {safe_url(spec.database_url())}")
    out.print(f"export: {outcome.export or 'none (no trial reported a value)'}")
    out.print(f"trials: sweeper trials {spec.name}" + ("" if spec.database_url() == DEFAULT_DB else " --db <url>"))


def _print_trials(store: TrialStore, name: str) -> None:
    sweep = store.get_sweep(name)
    if sweep is None:
        _fail(StoreError(f"no sweep named {name!r} in {safe_url(store.url)}"))
    rounds = store.rounds(name)
    best = store.best_trial(name)
    table = Table(title=f"sweep {name} ({sweep.status}) - objective {sweep.objective_metric} ({sweep.objective_mode})")
    for column in ("trial", "status", "stop", "rounds", "best", "holdout loss per round", "lr", "batch", "epochs",
                   "r", "time s"):
        table.add_column(column)
    for t in store.trials(name):
        losses = " ".join(f"{r.eval_loss:.3f}" for r in rounds.get(t.trial_key, []) if r.eval_loss is not None)
        best_cell = "-" if t.best_value is None else f"{t.best_value:.4f}@{t.best_round}"
        marker = " *" if best and t.id == best.id else ""
        p = t.params
        table.add_row(t.trial_key + marker, t.status, t.stop_reason, str(t.rounds), best_cell, losses,
                      f"{p.get('learning_rate', float('nan')):.2e}", str(p.get("batch_size", "")),
                      str(p.get("num_epochs", "")), str(p.get("lora_r", "")), f"{t.wall_time_s:.1f}")
    out.print(table)


@app.command()
def trials(name: Annotated[str, typer.Argument(help="sweep name")], db: DbOption = None) -> None:
    """Table of a sweep's trials: params, holdout loss per round, status, stop reason, time (* = best)."""
    try:
        _print_trials(_store(db), name)
    except StoreError as exc:
        _fail(exc)


@app.command()
def status(name: Annotated[Optional[str], typer.Argument(help="sweep name; all sweeps if omitted")] = None,
           db: DbOption = None) -> None:
    """Sweeps and their state: trials by status and the best value so far."""
    try:
        store = _store(db)
        sweeps = [store.get_sweep(name)] if name else store.list_sweeps()
        if name and sweeps[0] is None:
            raise StoreError(f"no sweep named {name!r} in {safe_url(store.url)}")
        table = Table("sweep", "status", "trials", "by status", "best", "updated")
        for sweep in sweeps:
            trial_rows = store.trials(sweep.name)
            counts: dict[str, int] = {}
            for t in trial_rows:
                counts[t.status] = counts.get(t.status, 0) + 1
            best = store.best_trial(sweep.name)
            table.add_row(sweep.name, sweep.status, str(len(trial_rows)),
                          ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                          f"{sweep.objective_metric}={best.best_value:.4f}" if best else "-",
                          sweep.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
        out.print(table)
    except StoreError as exc:
        _fail(exc)


@app.command()
def export(
    name: Annotated[str, typer.Argument(help="sweep name")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write the export to")] = Path("winner"),
    db: DbOption = None,
) -> None:
    """Export the best trial: config (YAML + JSON), adapter, reproduce command, versions, data hashes."""
    from sweeper.export import export_sweep
    from trainers.models import resolve_model

    try:
        store = _store(db)
        sweep = store.get_sweep(name)
        if sweep is None:
            raise ExportError(f"no sweep named {name!r} in {safe_url(store.url)}")
        path = export_sweep(store, name, out_dir.resolve(), resolve_model(sweep.spec["model"]))
    except KNOWN_ERRORS as exc:
        _fail(exc)
    out.print(f"exported {name!r} to {path}")


@app.command()
def train(
    winner: Annotated[Path, typer.Argument(help="an export's winner.yaml")],
    rounds: Annotated[Optional[int], typer.Option(help="stop after this many rounds (the winner's best round)")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="keep the checkpoints here")] = None,
) -> None:
    """Re-run an exported trial without Ray and compare its holdout metric with the recorded one."""
    from trainers import trainer_for
    from trainers.base import ListReporter, TrialConfig
    from trainers.models import resolve_model

    try:
        record = yaml.safe_load(winner.read_text())
        trial = {**record["trial"], "model_path": resolve_model(record["spec"]["model"]),
                 "output_dir": str(out_dir or tempfile.mkdtemp(prefix="sweeper-train-")), "max_rounds": rounds}
        config = TrialConfig.model_validate(trial)
    except (OSError, KeyError, TypeError, yaml.YAMLError, ModelNotFound) as exc:
        _fail(ValueError(f"{winner}: not a usable export ({exc})"))
    reporter = ListReporter()
    trainer_for(config.task)(config, reporter)
    objective = record["winner"]["objective"]
    metric = objective["metric"]
    for r in reporter.rounds:
        out.print(f"round {r['round']}: eval_loss={r['eval_loss']:.4f} {metric}={r.get(metric, float('nan')):.4f}")
    at_best = next((r for r in reporter.rounds if r["round"] == record["winner"]["best_round"]), None)
    if at_best is not None:
        out.print(json.dumps({"metric": metric, "recorded": objective["value"], "rerun": at_best.get(metric)}))


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create or migrate the trial store schema to the newest revision."""
    try:
        store = TrialStore(db or DEFAULT_DB)
        store.upgrade()
    except StoreError as exc:
        _fail(exc)
    out.print(f"store {safe_url(store.url)} is at the newest schema")


def main() -> None:  # pragma: no cover - console script entry
    sys.exit(app())
