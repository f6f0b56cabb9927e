"""The live progress of `sweeper run` (no Ray here: the controller feeds it what Tune reports of each trial).

On a terminal, a rich live view: trials done out of the budget by status, the running trials with their round and
best value, the best so far, elapsed time and an ETA bounded by the time budget. In a pipe, one line per finished
trial.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

from sweeper.spec import Spec
from sweeper.trial_status import STATUS_BY_REASON


@dataclass
class TrialView:
    """What the view needs of one trial; `status` is Tune's word (RUNNING, PAUSED, PENDING, TERMINATED, ERROR)."""

    key: str
    status: str
    result: dict = field(default_factory=dict)  # its last reported round
    learning_rate: float | None = None


class LiveProgress:
    """A rich live table on a terminal; otherwise one line per finished trial."""

    REFRESH_S = 0.5

    def __init__(self, spec: Spec):
        self.name, self.metric, self.mode = spec.name, spec.objective.metric, spec.objective.mode
        self.total, self.time_budget_s = spec.budget.trials, spec.budget.time_budget_s
        self._live = None
        self._reset()

    def _reset(self):
        self.started, self.interactive, self._last = time.monotonic(), False, 0.0
        self._done_at_start: int | None = None
        self._snapshot: dict = {"done": 0, "running": [], "counts": {}, "best": None}

    def __getstate__(self):  # Tune pickles callbacks, and this with them; a live display does not pickle
        return {**self.__dict__, "_live": None}

    def start(self):
        self._reset()
        self.interactive = sys.stdout.isatty()
        if self.interactive:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=Console(), refresh_per_second=2, transient=True)
            self._live.start()

    def _update(self, trials: list[TrialView], finishing: tuple[str, str] | None = None) -> None:
        """Count trials by state; `finishing` = (trial id, status) of a trial Tune has not marked ended yet."""
        counts = {"completed": 0, "early_stopped": 0, "stopped": 0, "failed": 0, "pending": 0}
        running, best = [], None
        for t in trials:
            result = t.result
            value = result.get("objective")
            if isinstance(value, (int, float)) and math.isfinite(value):
                if best is None or (value < best[0] if self.mode == "min" else value > best[0]):
                    best = (value, t.key)
            if finishing and t.key == finishing[0]:
                counts[finishing[1]] += 1
            elif t.status in ("RUNNING", "PAUSED"):
                running.append((t.key, result.get("round", 0), value, result.get("eval_loss"), t.learning_rate))
            elif t.status == "PENDING":
                counts["pending"] += 1
            elif t.status == "ERROR":
                counts["failed"] += 1
            elif t.status == "TERMINATED":
                reason = result.get("stop_reason") or "stopped"
                counts[STATUS_BY_REASON.get(reason, "stopped")] += 1
        done = counts["completed"] + counts["early_stopped"] + counts["stopped"] + counts["failed"]
        if self._done_at_start is None:
            self._done_at_start = done
        self._snapshot = {"done": done, "running": running, "counts": counts, "best": best}

    def _eta(self) -> float | None:
        elapsed = time.monotonic() - self.started
        done = self._snapshot["done"]
        finished_here = done - (self._done_at_start or 0)
        eta = elapsed / finished_here * max(self.total - done, 0) if finished_here > 0 else None
        if self.time_budget_s:
            left = max(self.time_budget_s - elapsed, 0.0)
            eta = left if eta is None else min(eta, left)
        return eta

    def _line(self) -> str:
        snap, counts = self._snapshot, self._snapshot["counts"]
        best = snap["best"]
        eta = self._eta()
        return (f"{snap['done']}/{self.total} done (completed {counts.get('completed', 0)}, early-stopped "
                f"{counts.get('early_stopped', 0)}, stopped {counts.get('stopped', 0)}, failed "
                f"{counts.get('failed', 0)}), {len(snap['running'])} running | best {self.metric} "
                + (f"{best[0]:.4f} ({best[1]})" if best else "-")
                + f" | elapsed {_clock(time.monotonic() - self.started)}, ETA {_clock(eta) if eta is not None else '-'}")

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        snap = self._snapshot
        table = Table("running trial", "round", f"best {self.metric}", "eval_loss", "lr", box=None, pad_edge=False)
        for key, round_, value, loss, lr in snap["running"]:
            table.add_row(key, str(round_ or "-"), _fmt(value), _fmt(loss), f"{lr:.2e}" if isinstance(lr, float) else "-")
        bar = ProgressBar(total=max(self.total, 1), completed=min(snap["done"], self.total), width=40)
        head, _, tail = self._line().partition(" | ")
        return Group(Text(f"sweep {self.name}: {head}"), bar, Text(tail), table)

    def step(self, trials: list[TrialView]) -> None:
        now = time.monotonic()
        if now - self._last >= self.REFRESH_S:
            self._last = now
            self._update(trials)

    def finished(self, trials: list[TrialView], trial: TrialView, status: str | None = None) -> None:
        """`trial` ended (status None: from its stop reason); Tune calls back before it marks the trial ended."""
        status = status or STATUS_BY_REASON.get(trial.result.get("stop_reason") or "stopped", "stopped")
        self._update(trials, (trial.key, status))
        if not self.interactive:
            print(f"[{self.name}] trial {trial.key} {status} after {trial.result.get('round', 0)} rounds, "
                  f"best {self.metric} {_fmt(trial.result.get('objective'))} | {self._line()}", flush=True)

    def end(self, trials: list[TrialView]) -> None:
        self._update(trials)
        self.close()

    def close(self):
        if self._live is not None:
            self._live.stop()
            self._live = None


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"
