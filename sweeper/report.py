"""`sweeper report`: a sweep as plots, PNG files and one self-contained HTML page.

- optimisation history: each trial's best objective in start order, and the best so far;
- holdout loss per round of every trial (and the objective per round when it is another metric), with
  early-stopped and ASHA-stopped trials drawn in their own line styles and their last round marked;
- parallel coordinates of the sampled parameters, coloured by the objective;
- parameter importance from the sweep's Optuna study (`optuna.importance.get_param_importances`).

Trials and rounds come from the trial store; the importance comes from the Optuna study in the same
database (study name = sweep name). A plot that cannot be drawn yet (too few trials, no study) becomes
a note in the page instead of an error. The HTML embeds every image as a data URI and loads nothing
from anywhere else. Matplotlib is used through `Figure` objects only (no pyplot, no global backend).
"""

from __future__ import annotations

import base64
import html
import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sweeper.compare import SweepBest, TrialRow, compare
from sweeper.store import StoreError, TrialStore, safe_url

MIN_IMPORTANCE_TRIALS = 4  # below this, importances are noise (with 1 trial every parameter gets 1/n)
PLOTS = {  # file stem -> title, in page order
    "optimisation_history": "Optimisation history",
    "holdout_loss": "Holdout loss per round",
    "parallel_coordinates": "Parallel coordinates",
    "param_importance": "Parameter importance",
}
STYLES = {  # status -> line style, marker of the last round, legend text
    "completed": ("-", "o", "completed"),
    "early_stopped": ("--", "x", "early-stopped (patience)"),
    "stopped": (":", "x", "stopped (ASHA / time budget)"),
    "failed": ("-.", "X", "failed"),
    "running": ("-", ">", "running"),
}
DPI = 110


@dataclass
class Report:
    html: Path
    images: dict[str, Path] = field(default_factory=dict)  # plot name -> PNG
    notes: dict[str, str] = field(default_factory=dict)  # plot name -> why it is not drawn


class _Skip(Exception):
    """A plot that cannot be drawn from this sweep; the message goes into the page."""


def _figure(width: float = 8.0, height: float = 4.5) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _label(row: TrialRow) -> str:
    return row.trial + (" *" if row.is_best else "")


# -- the plots -----------------------------------------------------------------------------------------
def plot_history(rows: list[TrialRow], metric: str, mode: str) -> Figure:
    points = [(i, r) for i, r in enumerate(rows, start=1) if r.objective is not None]
    if not points:
        raise _Skip(f"no trial has reported {metric} yet")
    fig = _figure()
    ax = fig.add_subplot()
    for status, (_, marker, text) in STYLES.items():
        chosen = [(i, r.objective) for i, r in points if r.status == status]
        if chosen:
            ax.scatter(*zip(*chosen), marker=marker if marker != "x" else "X", s=40, label=text, zorder=3)
    best, xs, ys = None, [], []
    for i, r in points:
        if best is None or (r.objective < best if mode == "min" else r.objective > best):
            best = r.objective
        xs.append(i)
        ys.append(best)
    ax.step(xs, ys, where="post", color="black", linewidth=1.5, label="best so far")
    winner = next(((i, r) for i, r in points if r.is_best), None)
    if winner:
        ax.annotate(f"best: {winner[1].trial}", (winner[0], winner[1].objective), xytext=(6, 6),
                    textcoords="offset points", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.08, y=0.12)
    ax.set_xlabel("trial (in start order)")
    ax.set_ylabel(f"best {metric} of the trial")
    ax.set_title(f"Optimisation history: {metric} ({'minimise' if mode == 'min' else 'maximise'})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_curves(rows: list[TrialRow], rounds: dict[str, list], metric: str) -> Figure:
    drawn = [r for r in rows if any(x.eval_loss is not None for x in rounds.get(r.trial, []))]
    if not drawn:
        raise _Skip("no trial has reported a round yet")
    panels = ["eval_loss"] + ([metric] if metric != "eval_loss" else [])
    fig = _figure(8.0 * len(panels) / 1.4 if len(panels) > 1 else 8.0, 4.8)
    colours = colormaps["tab10"]
    axes = [fig.add_subplot(1, len(panels), n + 1) for n in range(len(panels))]
    for k, row in enumerate(drawn):
        colour = "black" if row.is_best else colours(k % 10)
        style, marker, _ = STYLES.get(row.status, STYLES["completed"])
        for ax, name in zip(axes, panels):
            pts = [(x.round, x.eval_loss if name == "eval_loss" else x.metrics.get(name))
                   for x in rounds.get(row.trial, [])]
            pts = [(a, b) for a, b in pts if isinstance(b, (int, float)) and math.isfinite(b)]
            if not pts:
                continue
            ax.plot(*zip(*pts), linestyle=style, color=colour, linewidth=2.4 if row.is_best else 1.3, alpha=0.9)
            ax.plot(*pts[-1], marker=marker, color=colour, markersize=8 if marker != "o" else 4)
            if len(drawn) <= 12:
                ax.annotate(_label(row), pts[-1], xytext=(4, 0), textcoords="offset points", fontsize=7,
                            color=colour, va="center")
    for ax, name in zip(axes, panels):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round (holdout evaluation)")
        ax.set_ylabel(f"holdout {name}")
        ax.grid(alpha=0.3)
    axes[0].set_title("Holdout loss per round")
    if len(axes) > 1:
        axes[1].set_title(f"Holdout {metric} per round")
    statuses = [s for s in STYLES if any(r.status == s for r in drawn)]
    handles = [Line2D([], [], color="grey", linestyle=STYLES[s][0], marker=STYLES[s][1], label=STYLES[s][2])
               for s in statuses]
    handles.append(Line2D([], [], color="black", linewidth=2.4, label="best trial (*)"))
    axes[0].legend(handles=handles, fontsize=8)
    return fig


def _distributions(study) -> dict:
    out = {}
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                out.setdefault(name, dist)
    return out


def _axis(values: list, dist) -> tuple[list[float | None], list[float], list[str]]:
    """Positions in [0, 1] (None where missing), tick positions and tick labels for one parameter."""
    present = [v for v in values if v is not None]
    choices = getattr(dist, "choices", None)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if choices is not None or not numeric:
        cats = list(choices) if choices is not None else sorted({str(v) for v in present})
        index = {str(c): i for i, c in enumerate(cats)}
        span = max(len(cats) - 1, 1)
        pos = [None if v is None else index.get(str(v), 0) / span for v in values]
        return pos, [i / span for i in range(len(cats))], [str(c) for c in cats]
    lo, hi = (dist.low, dist.high) if dist is not None and hasattr(dist, "low") else (min(present), max(present))
    log = bool(getattr(dist, "log", False)) or (dist is None and lo > 0 and hi / lo > 50)
    f = (lambda v: math.log10(v)) if log and lo > 0 else (lambda v: v)
    a, b = f(lo), f(hi)
    scale = (b - a) or 1.0
    pos = [None if v is None else (f(v) - a) / scale for v in values]
    return pos, [0.0, 1.0], [f"{lo:.3g}", f"{hi:.3g}" + (" (log)" if log else "")]


def plot_parallel(rows: list[TrialRow], metric: str, mode: str, study, order: list[str] | None = None) -> Figure:
    scored = [r for r in rows if r.objective is not None]
    params = sorted({k for r in scored for k in r.params})
    if order:
        params = [p for p in order if p in params] + [p for p in params if p not in order]
    if len(scored) < 2 or not params:
        raise _Skip("parallel coordinates need at least 2 trials with a value of the objective")
    dists = _distributions(study)
    columns = [_axis([r.params.get(p) for r in scored], dists.get(p)) for p in params]
    values = [r.objective for r in scored]
    objective_axis = _axis(values, None)
    columns.append((objective_axis[0], objective_axis[1], [f"{min(values):.4g}", f"{max(values):.4g}"]))
    names = params + [metric]
    fig = _figure(max(8.0, 1.25 * len(names)), 4.8)
    ax = fig.add_subplot()
    cmap = colormaps["viridis" if mode == "max" else "viridis_r"]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-12)
    for row in sorted(range(len(scored)), key=lambda j: scored[j].is_best):
        ys = [columns[c][0][row] for c in range(len(names))]
        ys = [math.nan if y is None else y for y in ys]
        best = scored[row].is_best
        ax.plot(range(len(names)), ys, color="red" if best else cmap(norm(scored[row].objective)),
                linewidth=2.6 if best else 1.2, alpha=1.0 if best else 0.8, zorder=3 if best else 2)
    for c, (_, ticks, labels) in enumerate(columns):
        ax.axvline(c, color="grey", linewidth=0.8, zorder=1)
        for t, text in zip(ticks, labels):
            ax.annotate(text, (c, t), xytext=(3, 0), textcoords="offset points", fontsize=7, va="center")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(names) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"Parallel coordinates (colour: {metric}; red: best trial)")
    fig.colorbar(_mappable(cmap, norm), ax=ax, label=metric)
    return fig


def _mappable(cmap, norm):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances of the study's complete trials; raises _Skip when too few."""
    import optuna

    if study is None:
        raise _Skip("no Optuna study for this sweep in the store")
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        raise _Skip(f"parameter importance needs at least {MIN_IMPORTANCE_TRIALS} complete trials; the study "
                    f"has {len(complete)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(study)
    except Exception as exc:  # optuna refuses some studies (e.g. one distinct value per parameter)
        raise _Skip(f"optuna could not compute importances: {type(exc).__name__}: {exc}") from None
    if not result:
        raise _Skip("optuna found no parameter to rank")
    return result


def plot_importance(ranked: dict[str, float], n_trials: int) -> Figure:
    names = list(ranked)[::-1]
    fig = _figure(8.0, max(2.5, 0.45 * len(names) + 1.2))
    ax = fig.add_subplot()
    bars = ax.barh(names, [ranked[n] for n in names], color="tab:blue")
    ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=3)
    ax.set_xlabel("importance (PED-ANOVA, normalised to sum 1)")
    ax.set_title(f"Parameter importance ({n_trials} complete trials)")
    ax.set_xlim(0, max(ranked.values()) * 1.15 or 1.0)
    ax.grid(axis="x", alpha=0.3)
    return fig


# -- the study -----------------------------------------------------------------------------------------
def load_study(store: TrialStore, name: str):
    """The sweep's Optuna study, or None. Never creates Optuna's tables in a store that lacks them."""
    import optuna
    from sqlalchemy import inspect

    if "studies" not in inspect(store.engine).get_table_names():
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(store.url, skip_table_creation=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


# -- the page ------------------------------------------------------------------------------------------
CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta td { padding: 0.1rem 1rem 0.1rem 0; }
table.trials { border-collapse: collapse; font-size: 0.85rem; margin: 1rem 0; }
table.trials th, table.trials td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
table.trials th:first-child, table.trials td:first-child { text-align: left; }
tr.best { background: #fff3cd; } img { max-width: 100%; border: 1px solid #eee; }
.note { background: #f4f4f4; border-left: 4px solid #999; padding: 0.5rem 1rem; }
pre { background: #f4f4f4; padding: 0.6rem 1rem; overflow-x: auto; }
"""


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {safe_url(url)}"


def _page(store: TrialStore, name: str, rows: list[TrialRow], best: SweepBest, images: dict[str, Path],
          notes: dict[str, str]) -> str:
    e = html.escape
    sweep = store.get_sweep(name)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    params = sorted({k for r in rows for k in r.params})
    metrics = sorted({k for r in rows for k in r.metrics}, key=lambda n: (n != "eval_loss", n != sweep.objective_metric, n))
    out = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>sweep {e(name)}</title>",
           f"<style>{CSS}</style>\n</head>\n<body>", f"<h1>Sweep {e(name)}</h1>", "<table class=\"meta\">"]
    meta = [("status", sweep.status), ("objective", f"{sweep.objective_metric} "
                                                    f"({'minimise' if sweep.objective_mode == 'min' else 'maximise'})"),
            ("trials", f"{len(rows)}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))),
            ("best trial", f"{best.trial}: {sweep.objective_metric} = {_fmt(best.value)} at round "
                           f"{best.best_round}" if best.trial else "none yet"),
            ("store", safe_url(store.url)),
            ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))]
    out += [f"<tr><td><b>{e(k)}</b></td><td>{e(str(v))}</td></tr>" for k, v in meta]
    out.append("</table>")
    for key, title in PLOTS.items():
        out.append(f"<h2 id=\"{key}\">{e(title)}</h2>")
        if key in images:
            data = base64.b64encode(images[key].read_bytes()).decode("ascii")
            out.append(f"<img alt=\"{e(title)}\" src=\"data:image/png;base64,{data}\">")
        else:
            out.append(f"<p class=\"note\">Not drawn: {e(notes.get(key, 'no data'))}.</p>")
    out.append("<h2 id=\"trials\">Trials</h2>")
    out.append("<p>Holdout metrics at each trial's best round; * marks the best trial.</p>")
    head = ["trial", "status", "stop", "rounds", "best round", *metrics, *params, "time s"]
    out.append("<table class=\"trials\"><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for r in rows:
        cells = [_label(r), r.status, r.stop_reason, r.rounds, r.best_round, *(r.metrics.get(m) for m in metrics),
                 *(r.params.get(p) for p in params), f"{r.wall_time_s:.1f}"]
        row_class = ' class="best"' if r.is_best else ""
        out.append(f"<tr{row_class}>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    out.append("<h2 id=\"study\">The Optuna study</h2>")
    out.append(f"<p>The study <code>{e(name)}</code> is in the trial store's database. Browse it with:</p>")
    out.append(f"<pre>{e(dashboard_command(store.url))}</pre>")
    out.append("</body>\n</html>\n")
    return "\n".join(out)


def build_report(store: TrialStore, name: str, out_dir: str | Path) -> Report:
    """Write the PNGs and `report.html` for a sweep under `out_dir`; returns what was written."""
    sweep = store.get_sweep(name)
    if sweep is None:
        raise StoreError(f"no sweep named {name!r} in {safe_url(store.url)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    comparison = compare(store, [name], sort=None)
    rows = comparison.trials
    rounds = store.rounds(name)
    metric, mode = sweep.objective_metric, sweep.objective_mode
    study = load_study(store, name)
    report = Report(html=out_dir / "report.html")
    ranked: dict[str, float] = {}
    try:
        ranked = importances(study)
    except _Skip as skip:
        report.notes["param_importance"] = str(skip)
    n_complete = 0
    if ranked:
        import optuna

        n_complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    builders = {
        "optimisation_history": lambda: plot_history(rows, metric, mode),
        "holdout_loss": lambda: plot_curves(rows, rounds, metric),
        "parallel_coordinates": lambda: plot_parallel(rows, metric, mode, study, list(ranked) or None),
        "param_importance": lambda: plot_importance(ranked, n_complete),
    }
    for key, build in builders.items():
        if key in report.notes:
            continue
        try:
            fig = build()
        except _Skip as skip:
            report.notes[key] = str(skip)
            continue
        path = out_dir / f"{key}.png"
        fig.savefig(path, format="png")
        report.images[key] = path
    report.html.write_text(_page(store, name, rows, comparison.best[0], report.images, report.notes), encoding="utf-8")
    return report
