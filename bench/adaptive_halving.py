"""Asynchronous successive halving whose rungs wait for evidence before they stop anything (Ray-free).

Ray's ASHA stops a trial at a rung as soon as one other trial has a better value there: on a tiny holdout, a
tagger's F1 after one epoch is mostly noise, so ASHA stops configurations that would have won (issue 13,
bench/RESULTS.md). `AdaptiveHalving` keeps ASHA's rungs (grace_period x reduction_factor^k rounds) and its cutoff
(the top 1/reduction_factor of the values recorded at the rung before the trial), and stops a trial only when
  - at least `min_trials` trials have been recorded at the rung, and
  - its value is below the cutoff by more than `margin` x |cutoff| (so the rung's values have spread).
With min_trials=1 and margin=0 it decides exactly as Ray's ASHAScheduler (tests/bench/test_adaptive_halving.py).
The metric may be the objective (mode max) or the holdout loss (mode min): whatever the caller feeds it.
"""

from __future__ import annotations

import math


class AdaptiveHalving:
    def __init__(self, grace_period: float, reduction_factor: float, max_t: float, mode: str = "max",
                 min_trials: int = 4, margin: float = 0.1):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', not {mode!r}")
        if grace_period <= 0 or reduction_factor <= 1 or max_t < grace_period:
            raise ValueError("need grace_period > 0, reduction_factor > 1 and max_t >= grace_period")
        if min_trials < 1 or margin < 0:
            raise ValueError("need min_trials >= 1 and margin >= 0")
        self.rf, self.max_t, self.min_trials, self.margin = reduction_factor, max_t, min_trials, margin
        self.sign = 1.0 if mode == "max" else -1.0  # values are kept as "higher is better"
        count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)  # Ray's MAX_RUNGS, s = 0
        self.rungs = [(grace_period * reduction_factor ** k, {}) for k in reversed(range(count))]

    def stop(self, trial_id: str, t: float, value: float) -> bool:
        """A trial's result at time `t` (rounds or steps): True if it should stop now."""
        if t >= self.max_t:  # as Ray's ASHA: no trial runs past max_t
            return True
        for milestone, recorded in self.rungs:  # the highest rung `t` has reached and the trial has not recorded
            if t < milestone or trial_id in recorded:
                continue
            below = self._clearly_below(list(recorded.values()), self.sign * value)
            if not math.isnan(value):
                recorded[trial_id] = self.sign * value
            return below
        return False

    def _clearly_below(self, recorded: list[float], value: float) -> bool:
        if len(recorded) < self.min_trials or math.isnan(value):
            return False
        cutoff = _percentile(recorded, 1 - 1 / self.rf)
        return value < cutoff - self.margin * abs(cutoff)


def _percentile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile ignoring NaN (numpy's nanpercentile, without numpy)."""
    a = sorted(v for v in values if not math.isnan(v))
    if not a:
        return math.nan
    pos = q * (len(a) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return a[lo] + (a[hi] - a[lo]) * (pos - lo)
