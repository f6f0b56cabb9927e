"""The `sweeper` command line: run, validate, audit, trials, status, export, promote, train, db, and more."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sweeper.audit import AuditRefused, AuditReport, allowances
from sweeper.datasets import DataError
from sweeper.export import ExportError
from sweeper.promotion import PromotionError, PromotionResult
from sweeper.spec import AUDIT_CODES, SpecError, Storage, load_spec, spec_from_store
from sweeper.store import StoreError, TrialStore, safe_url
from trainers.models import ModelNotFound

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would hang ~50 s on a machine with no network
app = typer.Typer(help="Hyperparameter sweeps for LoRA fine-tuning.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)  # locals may hold a database URL with its password
db_app = typer.Typer(help="Trial store schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
out = Console(width=None if sys.stdout.isatty() else 200)  # logs and pipes get the whole table
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)  # a long path in a log stays whole

ServerOption = Annotated[Optional[str], typer.Option(
    "--server", envvar="SWEEPER_SERVER", help="talk to a sweep service at this URL (token: SWEEPER_API_TOKEN) for "
                                              "run, status, trials, compare, promote, export and cancel")]


@app.callback()
def _main(ctx: typer.Context, server: ServerOption = None) -> None:
    if server:
        from sweeper.client import ServiceClient

        ctx.obj = ServiceClient(server, os.environ.get("SWEEPER_API_TOKEN"))


def _remote(ctx: typer.Context, action, *args):
    """Run the remote form of a command when `--server` was given; None means: run it locally."""
    if ctx.obj is None:
        return None
    from sweeper.client import ServiceError

    try:
        result = action(ctx.obj, *args, out)
    except (ServiceError, OSError) as exc:
        _fail(exc, 1)
    return True if result is None else result


DEFAULT_DB = f"sqlite:///{Path('.sweeper/sweeper.db').resolve()}"
DbOption = Annotated[str, typer.Option("--db", envvar="SWEEPER_DATABASE_URL", show_default=False,
                                       help="SQLAlchemy URL of the trial store [default: .sweeper/sweeper.db]")]
KNOWN_ERRORS = (SpecError, StoreError, ExportError, DataError, ModelNotFound, PromotionError)


def _fail(exc: Exception, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    raise typer.Exit(code)


def _store(url: str | None) -> TrialStore:
    store = TrialStore(url or DEFAULT_DB)
    store.ensure_current()
    return store


@app.command()
def validate(
    spec_path: Annotated[Path, typer.Argument(help="the sweep spec (YAML)")],
    probe: Annotated[bool, typer.Option("--probe", help="also time a few training steps of the real trainer here "
                                                        "(seconds to a minute) and say what the budget buys")] = False,
) -> None:
    """Check a spec without running anything (with --probe: but a few timed training steps)."""
    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        _fail(exc)
    out.print(f"spec {spec.name!r} is valid: task {spec.task}, {spec.budget.trials} trials, "
              f"objective {spec.objective.metric} ({spec.objective.mode}), store {safe_url(spec.database_url())}")
    if probe:
        _print_plan(spec)
    elif spec.budget.time_budget_s:
        out.print("what budget.time_budget_s buys: `sweeper validate --probe` (`sweeper run` probes it first)")


def _print_plan(spec) -> None:
    """Probe the spec's trainer in this process and print what its budget buys (sweeper.budget)."""
    from sweeper.budget import CostModel, Plan, probe_shapes, run_probe
    from sweeper.trial_config import template, trial_threads
    from trainers.models import resolve_model

    try:
        job = template(spec, resolve_model(spec.model.path), torch_threads=trial_threads(spec))
        plan = Plan.make(spec, CostModel.fit(run_probe(job, probe_shapes(spec)), spec.scheduler.evals_per_epoch))
    except KNOWN_ERRORS as exc:
        _fail(exc)
    except Exception as exc:  # noqa: BLE001 - the trainer failed: say how, as a trial would
        _fail(RuntimeError(f"the probe's training failed: {type(exc).__name__}: {exc}"), 1)
    for line in plan.lines():
        out.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def tasks() -> None:
    """The tasks a spec may name, the data formats each reads and the metrics it reports; then the formats."""
    from sweeper.datasets import FORMATS
    from trainers import all_tasks

    table = Table("task", "data.format", "metrics (objective.metric, promotion gates)", title="tasks")
    for task in all_tasks():
        gates = ", per_field_f1" if task.per_field else ""
        table.add_row(task.name, ", ".join(task.formats), ", ".join(task.metric_names()) + gates)
    out.print(table)
    formats = Table("data.format", "a file holds", title="data formats")
    for name, fmt in FORMATS.items():
        formats.add_row(name, escape(fmt.holds))
    out.print(formats)


AllowOption = Annotated[Optional[list[str]], typer.Option(
    "--allow", metavar="CODE", help=f"let an audit refusal through, recorded with the sweep (repeatable): "
                                    f"{', '.join(AUDIT_CODES)}; overlap and near-duplicate for one pair of splits "
                                    "only as e.g. near-duplicate:train-test")]


def _allowed(codes: list[str] | None) -> frozenset[str]:
    try:
        return allowances(codes or [])
    except ValueError as exc:
        _fail(exc)


def _print_audit(report: AuditReport, console: Console) -> None:
    for line in report.lines():  # plain text: `[overlap]` is a code, not rich markup; long rows stay whole
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def audit(
    spec_path: Annotated[Path, typer.Argument(help="the sweep spec (YAML)")],
    allow: AllowOption = None,
) -> None:
    """Audit a spec's data splits (what `sweeper run` does first). Exit 0: it passes; 2: refused."""
    from sweeper.audit import audit as audit_data

    allowed = _allowed(allow)
    try:
        report = audit_data(load_spec(spec_path), allowed)
    except KNOWN_ERRORS as exc:
        _fail(exc)
    _print_audit(report, out if report.passed else err)
    if not report.passed:
        raise typer.Exit(2)


@app.command()
def run(
    ctx: typer.Context,
    spec_path: Annotated[Path, typer.Argument(help="the sweep spec (YAML)")],
    address: Annotated[Optional[str], typer.Option(help="Ray cluster: 'auto' or ray://HOST:10001; "
                                                   "default: a local Ray")] = None,
    allow: AllowOption = None,
) -> None:
    """Run a sweep; if the sweep was interrupted, resume it. The data audit runs first (exit 2 if refused)."""
    from sweeper import remote, sweeps

    if _remote(ctx, remote.run, spec_path) is not None:
        return

    allowed = _allowed(allow)
    try:
        spec = load_spec(spec_path)
        outcome = sweeps.run(spec, address=address or os.environ.get("SWEEPER_RAY_ADDRESS"), allow=allowed)
    except AuditRefused as exc:
        _print_audit(exc.report, err)
        raise typer.Exit(2) from None
    except KNOWN_ERRORS as exc:
        _fail(exc)
    store = sweeps.open_store(spec)
    if outcome.status == "already_completed":
        out.print(f"sweep {spec.name!r} already completed; nothing to run.")
    _print_trials(store, spec.name)
    if outcome.status == "failed":
        err.print(f"[red]error:[/red] sweep {spec.name!r} failed: {store.get_sweep(spec.name).message}")
        raise typer.Exit(1)
    if outcome.status == "interrupted":
        out.print(f"sweep {spec.name!r} interrupted; run the same command again to resume.")
        raise typer.Exit(130)
    out.print(f"store:  {safe_url(spec.database_url())}")
    out.print(f"export: {outcome.export or 'none (no trial reported a value)'}")
    if getattr(outcome, "wandb_dir", None):
        out.print(f"wandb:  {outcome.wandb_dir} (offline runs: upload with `wandb sync "
                  f"{outcome.wandb_dir}/wandb/offline-run-*`)", soft_wrap=True)
    out.print(f"trials: sweeper trials {spec.name}" + ("" if spec.database_url() == DEFAULT_DB else " --db <url>"))
    if outcome.promotion is not None:
        _print_promotion(outcome.promotion)
        if not outcome.promotion.promoted:
            raise typer.Exit(NOT_PROMOTED)


def _print_trials(store: TrialStore, name: str) -> None:
    sweep = store.get_sweep(name)
    if sweep is None:
        _fail(StoreError(f"no sweep named {name!r} in {safe_url(store.url)}"))
    from sweeper.compare import field_columns

    rounds = store.rounds(name)
    best = store.best_trial(name)
    at_best = store.best_round_metrics(name)
    fields = field_columns(at_best.values())  # per-field F1 at each trial's best round
    table = Table(title=f"sweep {name} ({sweep.status}) - objective {sweep.objective_metric} ({sweep.objective_mode})")
    for column in ("trial", "status", "stop", "rounds", "best", *fields, "holdout loss per round", "lr", "batch",
                   "epochs", "r", "time s", "ep/tokens"):
        table.add_column(column)
    per_epoch = int(((sweep.spec or {}).get("scheduler") or {}).get("evals_per_epoch") or 1)
    rows = store.trials(name)
    # The compute each trial spent (what budget.max_compute counts): epochs (its rounds) and input tokens.
    table.caption = (f"compute: {sum(t.rounds for t in rows) / per_epoch:g} trial-epochs, "
                     f"{sum(t.tokens_seen for t in rows):,} training tokens")
    for t in rows:
        losses = " ".join(f"{r.eval_loss:.3f}" for r in rounds.get(t.trial_key, []) if r.eval_loss is not None)
        best_cell = "-" if t.best_value is None else f"{t.best_value:.4f}@{t.best_round}"
        marker = " *" if best and t.id == best.id else ""
        p, metrics = t.params, at_best.get(t.trial_key) or {}
        table.add_row(t.trial_key + marker, t.status, t.stop_reason, str(t.rounds), best_cell,
                      *(f"{metrics[f]:.3f}" if f in metrics else "-" for f in fields), losses,
                      f"{p.get('learning_rate', float('nan')):.2e}", str(p.get("batch_size", "")),
                      str(p.get("num_epochs", "")), str(p.get("lora_r", "")), f"{t.wall_time_s:.1f}",
                      f"{t.rounds / per_epoch:g}/{_short(t.tokens_seen)}")
    out.print(table)


def _short(count: int) -> str:
    return next((f"{count / 10 ** p:.3g}{unit}" for p, unit in ((9, "G"), (6, "M"), (3, "k")) if count >= 10 ** p),
                str(count))


@app.command()
def trials(ctx: typer.Context, name: Annotated[str, typer.Argument(help="sweep name")], db: DbOption = None) -> None:
    """Table of a sweep's trials: params, holdout loss per round, status, stop reason, time (* = best)."""
    from sweeper import remote

    if _remote(ctx, remote.trials, name) is not None:
        return
    try:
        _print_trials(_store(db), name)
    except StoreError as exc:
        _fail(exc)


@app.command()
def status(ctx: typer.Context,
           name: Annotated[Optional[str], typer.Argument(help="sweep name; all sweeps if omitted")] = None,
           db: DbOption = None) -> None:
    """Sweeps and their state: trials by status and the best value so far."""
    from sweeper import remote

    if _remote(ctx, remote.status, name) is not None:
        return
    try:
        store = _store(db)
        sweeps = [store.get_sweep(name)] if name else store.list_sweeps()
        if name and sweeps[0] is None:
            raise StoreError(f"no sweep named {name!r} in {safe_url(store.url)}")
        table = Table("sweep", "status", "trials", "by status", "best", "updated")
        for sweep in sweeps:
            counts = store.trial_counts(sweep.name)
            best = store.best_trial(sweep.name)
            table.add_row(sweep.name, store.shown_status(sweep)[0], str(sum(counts.values())),  # no live driver: interrupted
                          ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                          f"{sweep.objective_metric}={best.best_value:.4f}" if best else "-",
                          sweep.updated_at.strftime("%Y-%m-%d %H:%M:%S"))
        out.print(table)
    except StoreError as exc:
        _fail(exc)


@app.command()
def cancel(ctx: typer.Context, name: Annotated[str, typer.Argument(help="sweep name")]) -> None:
    """Cancel a sweep that a sweep service runs (needs --server): its driver stops, the sweep ends `cancelled`."""
    from sweeper import remote

    if _remote(ctx, remote.cancel, name) is None:
        _fail(ValueError("cancel asks a sweep service (--server URL) to stop a sweep it runs; a local `sweeper run` "
                         "stops with Ctrl+C and resumes with the same command"))


@app.command()
def export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="sweep name")],
    out_dir: Annotated[Path, typer.Option("--out", help="a new or empty folder for the export")] = Path("winner"),
    force: Annotated[bool, typer.Option("--force", help="replace a previous export in --out (only what it wrote; "
                                                        "any other file there still refuses)")] = False,
    db: DbOption = None,
) -> None:
    """Export the best trial: config (YAML + JSON), adapter, reproduce command, versions, data hashes.

    The file also holds the data audit and the latest `sweeper promote` outcome: it says NOT PROMOTED, and
    why, when the trial was not promoted. A folder holding other files is refused (exit 2), never written over.
    """
    from sweeper import remote
    from sweeper.export import export_sweep, target_problem
    from trainers.models import resolve_model

    problem = target_problem(out_dir.resolve(), force)
    if problem:
        _fail(ExportError(problem))
    if _remote(ctx, remote.export, name, out_dir.resolve()) is not None:
        return

    try:
        store = _store(db)
        sweep = store.get_sweep(name)
        if sweep is None:
            raise ExportError(f"no sweep named {name!r} in {safe_url(store.url)}")
        promotion = store.latest_promotion(name)
        path = export_sweep(store, name, out_dir.resolve(), resolve_model(spec_from_store(sweep.spec).model.path),
                            promotion=promotion.result if promotion else None, replace=force)
    except KNOWN_ERRORS as exc:
        _fail(exc)
    out.print(f"exported {name!r} to {path} ({promotion.result['status'] if promotion else 'no promotion was run'})")


@app.command()
def delete(
    name: Annotated[str, typer.Argument(help="sweep name")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="delete without asking")] = False,
    db: DbOption = None,
) -> None:
    """Delete a sweep: its store rows, its Optuna study, its Tune experiment and its folder (exports, W&B runs).

    Asks first unless --yes. Refused (exit 2) while the sweep runs. The name is then free for a new spec.
    """
    try:
        store = _store(db)
        sweep = store.get_sweep(name)
        if sweep is None:
            raise StoreError(f"no sweep named {name!r} in {safe_url(store.url)}")
        status, _ = store.shown_status(sweep)  # `running` with no live driver behind it shows as interrupted
        if status in ("running", "queued"):
            raise StoreError(f"sweep {name!r} is {status}; stop it first (Ctrl+C its `sweeper run`, or cancel it on "
                             "the service), then delete it")
    except StoreError as exc:
        _fail(exc)
    folders, left = _sweep_folders(sweep)
    out.print(f"sweep {name!r} ({status}) in {safe_url(store.url)}: delete its store rows and Optuna study"
              + (", and:" if folders else ""), markup=False, highlight=False, soft_wrap=True)
    for folder in folders:
        out.print(f"  {folder}", markup=False, highlight=False, soft_wrap=True)
    for place in left:
        out.print(f"  not removed: {place}", markup=False, highlight=False, soft_wrap=True)
    if not yes:
        typer.confirm(f"delete sweep {name!r}?", abort=True)
    for folder in folders:  # files first, rows last: a delete cut short can be run again
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            _fail(OSError(f"cannot remove {folder}: {exc.strerror or exc}; the sweep's rows and study are kept: "
                          "fix that and run `sweeper delete` again"), 1)
        out.print(f"removed {folder}", markup=False, highlight=False, soft_wrap=True)
    try:
        study = _delete_study(store.url, name)
        counts = store.delete_sweep(name) or {}
    except StoreError as exc:
        _fail(exc, 1)
    out.print(f"removed the Optuna study {name!r}" if study else f"no Optuna study named {name!r}", markup=False)
    out.print(f"removed sweep {name!r} from the store: {counts.get('trials', 0)} trial(s), {counts.get('rounds', 0)} "
              f"round(s), {counts.get('promotions', 0)} promotion(s)", markup=False)


def _sweep_folders(sweep) -> tuple[list[Path], list[str]]:
    """(the sweep's local folders that exist, places it used that `delete` leaves, with why). Tune's experiment
    is removed only when it is a local folder named after the sweep under the sweep's own storage."""
    # Only the storage section: a sweep whose whole spec no longer loads (a task since removed) can still be deleted.
    storage = Storage.model_validate(sweep.spec.get("storage") or {})
    root = Path(storage.root).resolve()
    tune_path = os.environ.get("SWEEPER_STORAGE_PATH") or storage.tune_path or str(root / "ray")
    experiment = sweep.experiment_path or f"{tune_path.rstrip('/')}/{sweep.name}"
    bases = [root] + [Path(p).resolve() for p in (tune_path, storage.tune_path) if p and "://" not in p]
    folders, left = [], []
    if "://" in experiment:
        left.append(f"{experiment} (Tune's experiment on remote storage: remove it with that storage's tools)")
    elif Path(experiment).name == sweep.name and any(b in Path(experiment).resolve().parents for b in bases):
        folders.append(Path(experiment).resolve())
    else:
        left.append(f"{experiment} (Tune's experiment, outside the sweep's storage)")
    folders.append(root / "sweeps" / sweep.name)
    return [f for f in dict.fromkeys(folders) if f.exists()], left


def _delete_study(url: str, name: str) -> bool:
    """Delete the sweep's Optuna study (named after it, in the store's database); False if there is none."""
    import optuna

    from sweeper.study import study_storage

    storage = study_storage(url)
    try:
        optuna.delete_study(study_name=name, storage=storage)
        return True
    except KeyError:
        return False
    finally:
        storage.engine.dispose()


NOT_PROMOTED = 3  # exit code of `promote` (and of `run` with promotion.on_run) when a gate fails


@app.command()
def promote(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="sweep name")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="folder for the export [default: the sweep's "
                                                    "export folder under storage.root]")] = None,
    db: DbOption = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster the re-evaluation and seed re-training run on "
                                                   "(as trials do): 'auto' or ray://HOST:10001; default: "
                                                   "$SWEEPER_RAY_ADDRESS, $RAY_ADDRESS, else a local Ray")] = None,
) -> None:
    """Check the spec's gates on the best trial, re-evaluated on the test split; record and export the outcome.

    The re-evaluation and seed re-training run as Ray tasks with a trial's resources (`resources.cpus/gpus`).
    Exit 0: PROMOTED. Exit 3: NOT PROMOTED (the table says which gate failed). Exit 2: promotion could not run.
    """
    from sweeper import remote, tracking
    from sweeper.promotion import promote as promote_sweep
    from trainers.models import resolve_model

    promoted = _remote(ctx, remote.promote, name)
    if promoted is not None:
        raise typer.Exit(0 if promoted else 3)

    try:
        store = _store(db)
        sweep = store.get_sweep(name)
        if sweep is None:
            raise StoreError(f"no sweep named {name!r} in {safe_url(store.url)}")
        if sweep.status != "completed":
            raise StoreError(f"sweep {name!r} is {sweep.status}; promote it once it has completed "
                             "(`sweeper run SPEC` resumes it)")
        spec = spec_from_store(sweep.spec)
        target = out_dir.resolve() if out_dir else Path(spec.storage.root).resolve() / "sweeps" / name / "export"
        model_path = resolve_model(spec.model.path)
    except KNOWN_ERRORS as exc:
        _fail(exc)
    from sweeper import controller  # Ray loads only when a promotion really runs here

    try:
        # Inside a Ray job (the service's promotion on a cluster) Ray sets RAY_ADDRESS: join that cluster.
        address = address or os.environ.get("SWEEPER_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
        workers = controller.Workers(spec, address)
        result = promote_sweep(store, name, model_path, target, workers,
                               log=lambda line: err.print(line, markup=False, highlight=False))
    except KNOWN_ERRORS as exc:
        _fail(exc)
    finally:
        controller.shutdown()
    tracking.log_summary(store, name, result.to_dict(), target)  # the outcome (and a promoted winner) in W&B
    _print_promotion(result)
    if not result.promoted:
        raise typer.Exit(NOT_PROMOTED)


def _print_promotion(result: PromotionResult) -> None:
    table = Table(title=f"promotion of {result.sweep}: {'PROMOTED' if result.promoted else 'NOT PROMOTED'}")
    bound = f"{result.confidence:.0%} interval"
    for column in ("trial", "gate", "metric", "holdout", result.split, bound, "threshold", "seeds mean", "result"):
        table.add_column(column)
    for check in result.checked:
        for g in check.gates:
            seeds = "-" if not g.seed_values else f"{g.seed_mean:.4f} ({len(g.seed_values) + 1} seeds)"
            table.add_row(check.trial_key, g.gate, g.metric, _num(g.holdout), _num(g.value),
                          f"[{_num(g.low)}, {_num(g.high)}]", f"{g.op} {g.threshold:g}", seeds,
                          "pass" if g.passed else "FAIL" + (f": {g.note}" if g.note else ""))
    out.print(table, markup=False)
    out.print(result.note(), markup=False, highlight=False, soft_wrap=True)
    if result.selection_only:
        out.print("checked on the selection data only: the spec has no test split", markup=False)
    out.print(f"{result.bootstrap_samples} bootstrap resamples of {result.checked[0].examples} {result.split} rows; "
              f"a gate passes only if the interval's bound clears it", markup=False, highlight=False)
    if result.runner_up:
        out.print(f"runner-up: trial {result.runner_up} clears every gate; it is not promoted (choosing it now would "
                  "select on the test split): fix what fails and run a new sweep", markup=False, soft_wrap=True)
    out.print(f"export: {result.export}", soft_wrap=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def train(
    winner: Annotated[Path, typer.Argument(help="an export's winner.yaml")],
    rounds: Annotated[Optional[int], typer.Option(help="stop after this many rounds (the winner's best round)")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="keep the checkpoints here")] = None,
) -> None:
    """Re-run an exported trial without Ray and compare its holdout metric with the recorded one.

    Its config is rebuilt from the export's spec and hyperparameters, as the sweep built it."""
    with tempfile.TemporaryDirectory(prefix="sweeper-train-") as scratch:  # the checkpoints, unless --out keeps them
        _retrain(winner, rounds, str(out_dir or scratch))


def _retrain(winner: Path, rounds: int | None, out_dir: str) -> None:
    from sweeper.trial_config import trial_config
    from trainers import trainer_for
    from trainers.base import ListReporter
    from trainers.models import resolve_model

    try:
        record = yaml.safe_load(winner.read_text())
        spec = spec_from_store(record["spec"])
        # The audited hashes; an export from before trial configs carried them recorded them beside the config.
        sha256 = record["trial"]["data"].get("sha256") or \
            {role: entry["sha256"] for role, entry in (record.get("data_fingerprints") or {}).items()}
        config = trial_config(spec, record["trial"]["hparams"], resolve_model(spec.model.path),
                              out_dir, sha256, max_rounds=rounds)
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as exc:  # ValueError: a spec, config, model
        _fail(ValueError(f"{winner}: not a usable export ({exc})"))
    reporter = ListReporter()
    try:
        trainer_for(config.task)(config, reporter)  # refuses a data file that is not the one the sweep audited
    except DataError as exc:
        _fail(exc)
    objective = record["winner"]["objective"]
    metric = objective["metric"]
    for r in reporter.rounds:
        value = r.metrics.get(metric, float("nan"))
        out.print(f"round {r.round}: eval_loss={r.metrics['eval_loss']:.4f} {metric}={value:.4f}")
    at_best = next((r for r in reporter.rounds if r.round == record["winner"]["best_round"]), None)
    if at_best is not None:
        out.print(json.dumps({"metric": metric, "recorded": objective["value"], "rerun": at_best.metrics.get(metric)}))


@app.command()
def compare(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="one or more sweep names", show_default=False)],
    sort: Annotated[str, typer.Option(help="sort by a metric (at each trial's best round), a parameter "
                                           "(param.NAME) or a field (rounds, wall_time_s, ...)")] = "objective",
    ascending: Annotated[Optional[bool], typer.Option("--ascending/--descending", show_default=False,
                                                      help="sort direction [default: best first]")] = None,
    status_filter: Annotated[Optional[list[str]], typer.Option("--status", show_default=False,
                                                               help="keep trials with this status (repeat, or "
                                                                    "comma-separate: completed,early_stopped)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    db: DbOption = None,
) -> None:
    """Compare the trials of one or more sweeps: metrics at each trial's best round, the best per sweep."""
    from sweeper import compare as cmp
    from sweeper import remote

    if fmt not in ("table", "csv", "json"):
        _fail(ValueError(f"--format {fmt!r}: use table, csv or json"))
    statuses = [s.strip() for item in status_filter or [] for s in item.split(",") if s.strip()] or None
    descending = None if ascending is None else not ascending
    comparison = _remote(ctx, remote.compare, names, statuses, sort, descending)
    if comparison is None:
        try:
            comparison = cmp.compare(_store(db), names, statuses, sort, descending)
        except (StoreError, cmp.CompareError) as exc:
            _fail(exc)
    if fmt == "csv":
        sys.stdout.write(cmp.to_csv(comparison.trials))
    elif fmt == "json":
        sys.stdout.write(comparison.to_json() + "\n")
    else:
        _print_comparison(comparison, sort)


def _print_comparison(comparison, sort: str) -> None:
    from sweeper import compare as cmp

    rows, many = comparison.trials, len(comparison.best) > 1

    def num(value, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec) if isinstance(value, float) else str(value)

    shown = {"objective", "eval_loss", "trial", "status", "stop_reason", "rounds", "best_round", "wall_time_s",
             "learning_rate", "batch_size", "num_epochs", "lora_r"}
    fields = cmp.field_columns(r.metrics for r in rows)  # per-field F1, when the task has fields
    extra = sort.removeprefix("param.") if sort.removeprefix("param.") not in shown | set(fields) else None
    table = Table(title=f"{len(rows)} trial(s), sorted by {sort} (* = best of its sweep)")
    columns = (["sweep"] if many else []) + ["trial", "status", "stop", "rounds", "best@round", "eval_loss"] + \
        fields + ([extra] if extra else []) + ["lr", "batch", "epochs", "r", "time s"]
    for column in columns:
        table.add_column(column)
    for r in rows:
        p = r.params
        cells = ([r.sweep] if many else []) + [
            r.trial + (" *" if r.is_best else ""), r.status, r.stop_reason, str(r.rounds),
            "-" if r.objective is None else f"{r.objective:.4f}@{r.best_round}", num(r.metrics.get("eval_loss"))]
        cells += [num(r.metrics.get(f), ".3f") for f in fields]
        if extra:
            cells.append(num(r.value(sort), ".4g"))
        cells += [num(p.get("learning_rate"), ".2e"), num(p.get("batch_size")), num(p.get("num_epochs")),
                  num(p.get("lora_r")), f"{r.wall_time_s:.1f}"]
        table.add_row(*cells)
    out.print(table)
    summary = Table("sweep", "status", "trials", "objective", "best trial", "value@round", title="best per sweep")
    for b in comparison.best:
        summary.add_row(b.sweep, b.status, str(b.trials), f"{b.objective_metric} ({b.objective_mode})",
                        b.trial or "-", "-" if b.value is None else f"{b.value:.4f}@{b.best_round}")
    out.print(summary)


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="sweep name")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the PNGs and report.html")] = Path("report"),
    db: DbOption = None,
) -> None:
    """Plots of a sweep (history, holdout loss curves, parallel coordinates, importance) as PNG + one HTML page."""
    from sweeper.report import build_report, dashboard_command

    try:
        store = _store(db)
        result = build_report(store, name, out_dir.resolve())
    except StoreError as exc:
        _fail(exc)
    for key, path in result.images.items():
        out.print(f"{key}: {path}")
    for key, note in result.notes.items():
        out.print(f"{key}: not drawn ({note})")
    out.print(f"page: {result.html}")
    out.print(f"study: {dashboard_command(store.url)}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
) -> None:
    """Run the sweep service (HTTP API) on the store and data roots set in SWEEPER_* variables."""
    import uvicorn

    from sweeper.service import create_app
    from sweeper.settings import ServiceSettings, SettingsError

    try:
        settings = ServiceSettings.from_env()
        settings.check_bind(host)
    except (SettingsError, ValueError) as exc:
        _fail(exc)
    if not settings.tokens:
        err.print("[yellow]warning:[/yellow] no SWEEPER_API_TOKENS: the API is open to anyone on this machine")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")


@app.command()
def openapi(out: Annotated[Path, typer.Option("--out", help="where to write the schema")] = Path("openapi.json")) -> None:
    """Write the service's OpenAPI schema (the repository keeps a copy: openapi.json)."""
    from sweeper.service import create_app
    from sweeper.settings import ServiceSettings

    schema = create_app(ServiceSettings.from_env({})).openapi()
    out.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create or migrate the trial store schema to the newest revision."""
    try:
        store = TrialStore(db or DEFAULT_DB)
        store.upgrade()
    except StoreError as exc:
        _fail(exc)
    out.print(f"store {safe_url(store.url)} is at the newest schema")

