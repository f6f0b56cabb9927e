"""Check the replay against live runs (issue 13, part 1): does bench/replay.py's compute to 95% agree with
bench/search_efficiency.py's, run for real on the data and space a table was recorded on?

    .venv/bin/python bench/search_efficiency.py --task banking77-10 --space lora-default --seeds 5 --budget 50 \
        --methods random,sweeper,tune_optuna --raw bench/raw/live-banking77-10-lora-default-2026-12-06.json \
        --results bench/raw/live-banking77-10-lora-default-2026-12-06.md                               # ~70 min
    .venv/bin/python bench/replay_vs_live.py bench/raw/live-banking77-10-lora-default-2026-12-06.json \
        --json bench/results/replay_vs_live.json                                                        # seconds

The target is 95% of the table's best holdout value, for both. Each live method is replayed as the policy of the same
name (search_efficiency's sweeper is replay's sweeper: the same spec settings), at the live run's budget and with its
concurrency (random search trains one trial at a time there, the Ray methods two), over `--seeds` seeds. Agreement:
the live median lies inside the replay's interquartile range, and a Mann-Whitney test (a seed that never reaches the
target ranks last) does not tell the live seeds from the replayed ones (p >= 0.05). Live random search with seed s
samples the very configurations replayed random search with seed s snaps, so for it the seeds are also paired, and
each of its live trials is compared with the table's curves of the configuration it snaps to (`random_trials`): how
far apart their best holdout values are, and how often each reaches the target.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import replay  # noqa: E402
from search_efficiency import compute_to_target  # noqa: E402

CONCURRENCY = {"random": 1, "grid": 1, "hf_optuna": 1, "sweeper": 2, "sweeper_objective": 2, "sweeper_rf2": 2,
               "tune_optuna": 2}
POLICY = {"random": "random", "grid": "grid", "hf_optuna": "hf_median", "sweeper": "sweeper",
          "sweeper_objective": "sweeper_asha_objective", "sweeper_rf2": "sweeper_rf2", "tune_optuna": "tune_optuna"}


def replayed(path: Path, policy: str, seeds: list[int], budget: float, concurrency: int) -> dict[int, float]:
    replay._init(str(path), 1, budget, concurrency)
    return {seed: replay.run_one((policy, seed))["to95"] for seed in seeds}


def random_trials(table: replay.Table, runs: list[dict], space_name: str, target: float) -> dict:
    """Live random search's trials against the table: each trial's configuration drawn again as search_efficiency
    drew it (a seeded RandomSampler, asked in trial order, through replay's own random policy), snapped as the replay
    snaps it; its live best holdout value against the recorded best of each of that configuration's curves (the
    replay picks one of them)."""
    import numpy as np
    import optuna

    from search_spaces import get_search_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_search_space(space_name)
    gaps, live_hits, table_hits = [], [], []
    for run in runs:
        policy = replay.OptunaPolicy(space, optuna.samplers.RandomSampler(seed=run["seed"]))
        best: dict[str, float] = {}
        for e in run["events"]:
            if e["value"] is not None and math.isfinite(e["value"]):
                best[e["trial"]] = max(best.get(e["trial"], -math.inf), e["value"])
        for i in range(len({e["trial"] for e in run["events"]})):
            handle, params = policy.ask(i)
            policy.study.tell(handle.trial, 0.0)
            config = table.snap(params)
            recorded = [float(np.nanmax(c.holdout)) for c in config.curves]
            live_best = best.get(f"t{i:03d}", math.nan)
            gaps += [live_best - r for r in recorded]
            live_hits.append(live_best >= target)
            table_hits.append(sum(r >= target for r in recorded) / len(recorded))
    gaps = [g for g in gaps if math.isfinite(g)]
    return {"trials": len(live_hits), "gap_mean": round(float(np.mean(gaps)), 4),
            "gap_median": round(float(np.median(gaps)), 4),
            "live_share_reaching_target": round(sum(live_hits) / len(live_hits), 3),
            "table_share_reaching_target": round(sum(table_hits) / len(table_hits), 3)}


def retrained(table_path: Path, again_path: Path, target: float) -> dict:
    """The table's (configuration, seed) jobs trained again with today's trainer (record_curves.py --ids --out): the
    same configuration and seed, so what differs is the trainer since the recording, not the noise of another draw."""
    import numpy as np

    def best_by_job(path: Path) -> dict[tuple[int, int], float]:  # every recorded round (2 an epoch) counts
        table = replay.Table.load(path, evals_per_epoch=2)
        return {(config.id, curve.seed): float(np.nanmax(curve.holdout)) for config in table.configs
                for curve in config.curves}

    recorded, again = best_by_job(table_path), best_by_job(again_path)
    pairs = [(recorded[job], again[job]) for job in again if job in recorded]
    gaps = sorted(b - a for a, b in pairs)
    return {"jobs": len(pairs), "gap_mean": round(sum(gaps) / len(gaps), 4), "gap_median": round(gaps[len(gaps) // 2], 4),
            "higher_again": sum(g > 0 for g in gaps), "lower_again": sum(g < 0 for g in gaps),
            "table_reaching_target": sum(a >= target for a, _ in pairs),
            "again_reaching_target": sum(b >= target for _, b in pairs)}


def agreement(live: list[float], replayed_values: list[float]) -> dict:
    from scipy.stats import mannwhitneyu

    q1, median, q3 = (replay.quantile(replayed_values, q) for q in (0.25, 0.5, 0.75))
    live_median = replay.quantile(live, 0.5)
    p = float(mannwhitneyu(live, replayed_values).pvalue)
    return {"live_median": _num(live_median), "replay_median": _num(median), "replay_iqr": [_num(q1), _num(q3)],
            "median_inside_iqr": q1 <= live_median <= q3, "mann_whitney_p": round(p, 3),
            "agrees": q1 <= live_median <= q3 and p >= 0.05}


def _num(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("live", type=Path, help="a --raw file of bench/search_efficiency.py")
    parser.add_argument("--seeds", type=int, default=100, help="replayed seeds per method")
    parser.add_argument("--table", type=Path, help="default: the live run's task's table under bench/results/curves")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "replay_vs_live.json")
    parser.add_argument("--methods", help="comma-separated: compare only these live methods (e.g. a run recorded "
                                          "before a default changed, whose sweeper is no longer replay's sweeper)")
    parser.add_argument("--retrained", type=Path, help="the table's jobs trained again (record_curves.py --ids --out): "
                                                       "compared job by job with the table")
    args = parser.parse_args(argv)

    live = json.loads(args.live.read_text())
    task, budget = live["args"]["task"], float(live["args"]["budget"])
    path = args.table or replay.CURVES / f"{task}.jsonl"
    if not path.is_file():
        parser.error(f"{args.live}: its task {task!r} has no table under {replay.CURVES}")
    target = 0.95 * replay.Table.load(path, 1).best
    out = {"command": " ".join(["python", "bench/replay_vs_live.py", *(sys.argv[1:] if argv is None else argv)]),
           "date": date.today().isoformat(), "live": str(args.live), "live_command": live["args"].get("command"),
           "task": task, "budget": budget, "target": round(target, 5), "methods": {}}
    chosen = set(args.methods.split(",")) if args.methods else None
    compared = [r for r in live["runs"] if chosen is None or r["method"] in chosen]
    for method in dict.fromkeys(r["method"] for r in compared):
        runs = sorted((r for r in compared if r["method"] == method), key=lambda r: r["seed"])
        live_to95 = {r["seed"]: compute_to_target(r["events"], target, budget) for r in runs}
        # one replay of each seed, whether it is among the --seeds or a live run's
        by_seed = replayed(path, POLICY[method], sorted({*range(args.seeds), *live_to95}), budget, CONCURRENCY[method])
        replay_to95 = {s: by_seed[s] for s in range(args.seeds)}
        at_live_seeds = {s: by_seed[s] for s in live_to95}
        out["methods"][method] = {
            "policy": POLICY[method], "concurrency": CONCURRENCY[method],
            "live_to95": {s: _num(v) for s, v in live_to95.items()},
            "replay_to95_at_live_seeds": {s: _num(v) for s, v in at_live_seeds.items()},
            "live_reached": sum(map(math.isfinite, live_to95.values())),
            "replay_reached": f"{sum(map(math.isfinite, replay_to95.values()))}/{args.seeds}",
            **agreement(list(live_to95.values()), list(replay_to95.values()))}
        m = out["methods"][method]
        print(f"{method:12} live {m['live_median']} ({m['live_reached']}/{len(runs)} reached; "
              f"{list(m['live_to95'].values())})  replay {m['replay_median']} IQR {m['replay_iqr']} "
              f"({m['replay_reached']})  at the live seeds {list(m['replay_to95_at_live_seeds'].values())}  "
              f"p {m['mann_whitney_p']}  agrees: {m['agrees']}")
    randoms = [r for r in compared if r["method"] == "random"]
    if randoms:
        out["random_trials"] = random_trials(replay.Table.load(path, 1), randoms, live["args"].get("space", "lora-quick"),
                                             target)
        print(f"live random trials against the table's curves of the configurations they snap to: {out['random_trials']}")
    if args.retrained:
        out["retrained"] = {"path": str(args.retrained), **retrained(path, args.retrained, target)}
        print(f"the table's jobs trained again with today's trainer: {out['retrained']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
