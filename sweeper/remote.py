"""The CLI's remote mode: `sweeper --server URL COMMAND` talks to a sweep service instead of a local store.

The token comes from SWEEPER_API_TOKEN. Data paths in a submitted spec are resolved on the server, under
its data roots.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sweeper.client import ServiceClient
from sweeper.compare import Comparison, field_columns


def run(client: ServiceClient, spec_path: Path, out: Console) -> None:
    accepted = client.submit(spec_path)
    out.print(f"sweep {accepted['name']!r} {accepted['status']} on {client.http.base_url}; "
              f"watch it with: sweeper --server {client.http.base_url} status {accepted['name']}")


def status(client: ServiceClient, name: str | None, out: Console) -> None:
    sweeps = [client.sweep(name)] if name else client.sweeps()
    table = Table("sweep", "status", "trials", "by status", "best")
    for s in sweeps:
        best = f"{s['objective_metric']}={s['best_value']:.4f}" if s["best_value"] is not None else "-"
        table.add_row(s["name"], s["status"], str(s["trials"]),
                      ", ".join(f"{k} {v}" for k, v in sorted(s["trials_by_status"].items())), best)
    out.print(table)


def trials(client: ServiceClient, name: str, out: Console) -> None:
    sweep = client.sweep(name)
    at_best = {r.trial: r.metrics for r in Comparison.from_dict(client.compare([name], None, "objective", None)).trials}
    fields = field_columns(at_best.values())  # per-field F1 at each trial's best round, as the local table shows
    table = Table("trial", "status", "stop", "rounds", "best", *fields, "node", "params",
                  title=f"sweep {name} ({sweep['status']}) - objective {sweep['objective_metric']}")
    for t in client.trials(name):
        best = "-" if t["best_value"] is None else f"{t['best_value']:.4f}@{t['best_round']}"
        marker = " *" if t["trial_key"] == sweep["best_trial"] else ""
        metrics = at_best.get(t["trial_key"], {})
        table.add_row(t["trial_key"] + marker, t["status"], t["stop_reason"], str(t["rounds"]), best,
                      *(f"{metrics[f]:.3f}" if f in metrics else "-" for f in fields), t["node"][:8],
                      json.dumps(t["params"], sort_keys=True))
    out.print(table)


def compare(client: ServiceClient, names: list[str], statuses: list[str] | None, sort: str, descending: bool | None,
            out: Console) -> Comparison:
    """The service's comparison, rendered by the CLI exactly as a local one."""
    return Comparison.from_dict(client.compare(names, statuses, sort, descending))


def cancel(client: ServiceClient, name: str, out: Console) -> None:
    accepted = client.cancel(name)
    out.print(f"sweep {accepted['name']!r} {accepted['status']} on {client.http.base_url}; "
              f"watch it with: sweeper --server {client.http.base_url} status {accepted['name']}")


def promote(client: ServiceClient, name: str, out: Console) -> bool:
    result = client.promote(name)
    out.print(result["note"])
    return result["promoted"]


def export(client: ServiceClient, name: str, out_dir: Path, out: Console) -> None:
    out.print(f"exported {name!r} to {client.download_export(name, out_dir)}")
