"""A trial's status in the store, and the status each stop reason leads to."""

from __future__ import annotations

from typing import Literal

TrialStatus = Literal["running", "completed", "early_stopped", "stopped", "failed"]
FINISHED: tuple[str, ...] = ("completed", "early_stopped", "stopped", "failed")
STATUS_BY_REASON = {"completed": "completed", "max_rounds": "completed", "patience": "early_stopped",
                    "asha": "stopped", "time_budget": "stopped"}
