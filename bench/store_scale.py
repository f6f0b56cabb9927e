"""Store scale: 10,000 trials x 50 rounds in the trial store (SQLite and PostgreSQL), then `sweeper compare` and
the service's trial listing: time, memory, and how they grow from 1k to 10k trials.

    .venv/bin/python bench/store_scale.py                                   # the full setting: 1k and 10k trials
    .venv/bin/python bench/store_scale.py --smoke --results /tmp/r.md       # CI smoke (SQLite, tiny)

Writing. The real write path is per round: Tune's events reach `StoreCallback`, which calls
`TrialStore.trial_started`, then per round `round_reported` (with its checkpoint), then `trial_finished`, one
transaction each. Writing 500,000 rounds that way takes hours, so each sweep is written in two parts: all
but the last `--real-trials` trials through bulk INSERTs (SQLAlchemy Core, the same tables and values the
real path writes, a real round's record: 25 keys), then the last `--real-trials` trials through the real
per-round path, on top of the full table. The table gives the real path's cost per round at that size,
the bulk rate, and the real path's projected time for the whole sweep.

Reading. Each read runs in a fresh process (memory = the peak RSS during the read, VmHWM reset just before it
through /proc/self/clear_refs, minus the RSS before it):
`sweeper compare NAME --format json` and the default table (the CLI's own function, stdout to /dev/null),
and the service (`sweeper.service.create_app` through FastAPI's TestClient, lifespan not started, so no
supervisor): `GET /sweeps/{name}/trials` first page and last page (limit 50), and
`GET /sweeps/{name}/trials/{key}/rounds` (one trial's 50 rounds). Times are the median of 3 calls in that
process after one warm-up call, 1 call when one takes over 2 s (the CLI: one call, plus the process's wall
time including imports).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
POSTGRES_URL = os.environ.get("SWEEPER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
FIELDS = ("date", "first_name", "last_name", "people", "time")
READS = ("compare --format json", "compare (table)", "GET trials (first page)", "GET trials (last page)",
         "GET one trial's rounds")


# -- synthetic but realistic content ----------------------------------------------------------------------
def params_of(rng: random.Random) -> dict:
    return {"learning_rate": 10 ** rng.uniform(-4, -1.7), "batch_size": rng.choice([16, 32]),
            "num_epochs": rng.randint(2, 4), "lr_scheduler_type": rng.choice(["linear", "cosine"]),
            "warmup_ratio": rng.uniform(0, 0.1), "weight_decay": rng.uniform(0, 0.05), "lora_r": rng.choice([8, 16]),
            "lora_alpha": rng.choice([16, 32]), "lora_dropout": rng.uniform(0, 0.1)}


def round_record(rng: random.Random, round_: int, best: float):
    """What StoreCallback stores for one round: a worker's record, its holdout metrics and bookkeeping (25 keys)."""
    from trainers.base import RoundRecord

    f1 = min(1.0, max(0.0, best + rng.uniform(-0.05, 0.02)))
    metrics = {"eval_loss": rng.uniform(0.2, 2.0), "precision_micro": f1, "recall_micro": f1, "f1_micro": f1,
               **{f"f1_{f}": rng.random() for f in FIELDS}}
    bookkeeping = {
        "epoch": float(round_), "train_loss": rng.uniform(0.1, 2.5), "examples_seen": 400 * round_,
        "tokens_seen": 9000 * round_, "stop_reason": "", "device": "cpu", "time_tokenize_s": 0.07,
        "time_load_s": 0.18, "time_train_s": 5.0 * round_, "time_eval_s": 0.6 * round_,
        "time_checkpoint_s": 0.05 * round_, "time_report_s": 0.01 * round_, "node": uuid.uuid4().hex * 2,
        "pid": 10508, "rss_mb": 756.5, "rss_start_mb": 512.0,
    }
    return RoundRecord(round_, metrics, bookkeeping)


# -- databases --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_database(backend: str, workdir: Path):
    """A private empty database (SQLite file, or a PostgreSQL database created here and dropped after)."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'scale.db'}"
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"sweeper_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def database_mb(url: str) -> float:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return os.path.getsize(parsed.database) / 2**20
    engine = create_engine(url)
    with engine.connect() as connection:
        size = connection.execute(text("SELECT pg_database_size(current_database())")).scalar()
    engine.dispose()
    return size / 2**20


def spec_record() -> dict:
    from sweeper.spec import load_spec
    from sweeper.sweeps import stored_spec

    return stored_spec(load_spec(ROOT / "examples" / "restaurant8k-minilm.yaml"))


def write_sweep(url: str, name: str, n_trials: int, rounds: int, real_trials: int, seed: int = 0) -> dict:
    """n_trials x rounds: bulk for the first n - real_trials trials, the real per-round path for the rest."""
    from sqlalchemy import insert, select

    from sweeper.store import Round, Sweep, Trial, TrialStore

    rng = random.Random(seed)
    store = TrialStore(url)
    store.upgrade()
    store.open_sweep(name, spec_record(), "bench", "f1_micro", "max")
    with store.engine.connect() as connection:
        sweep_id = connection.execute(select(Sweep.id).where(Sweep.name == name)).scalar_one()
    bulk_n = max(0, n_trials - real_trials)
    started = time.perf_counter()
    base = datetime.now(timezone.utc)
    batch = 500
    for first in range(0, bulk_n, batch):
        keys = [f"t{i:06d}" for i in range(first, min(first + batch, bulk_n))]
        trial_rows, records_by_key = [], {}
        for key in keys:
            best = rng.uniform(0.0, 0.8)
            records = [round_record(rng, r, best) for r in range(1, rounds + 1)]
            records_by_key[key] = records
            top = max(range(rounds), key=lambda i: records[i].metrics["f1_micro"])
            trial_rows.append(dict(
                sweep_id=sweep_id, trial_key=key, params=params_of(rng), status=rng.choice(
                    ["completed", "early_stopped", "stopped"]), stop_reason="completed", error="", rounds=rounds,
                best_round=top + 1, best_value=records[top].metrics["f1_micro"], wall_time_s=6.0 * rounds, device="cpu",
                node="n" * 56, examples_seen=400 * rounds, tokens_seen=9000 * rounds, retries=0, started_at=base,
                finished_at=base + timedelta(seconds=6 * rounds)))
        with store.engine.begin() as connection:
            connection.execute(insert(Trial.__table__), trial_rows)
            ids = dict(connection.execute(select(Trial.trial_key, Trial.id).where(
                Trial.sweep_id == sweep_id, Trial.trial_key.in_(keys))).all())
            round_rows = [dict(trial_id=ids[key], round=r.round, eval_loss=r.metrics["eval_loss"], metrics=r.metrics,
                               bookkeeping=r.bookkeeping, recorded_at=base,
                               checkpoint=f"/shared/ray/{name}/trial_{key}/checkpoint_{r.round - 1:06d}")
                          for key, records in records_by_key.items() for r in records]
            connection.execute(insert(Round.__table__), round_rows)
    bulk_s = time.perf_counter() - started
    # The real path, on top of the full tables: exactly the calls StoreCallback makes.
    per_round: list[float] = []
    started = time.perf_counter()
    for i in range(bulk_n, n_trials):
        key = f"t{i:06d}"
        store.trial_started(name, key, params_of(rng))
        best = rng.uniform(0.0, 0.8)
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            store.round_reported(name, key, round_record(rng, r, best),
                                 f"/shared/ray/{name}/trial_{key}/checkpoint_{r - 1:06d}", wall_time_s=6.0 * r)
            per_round.append(time.perf_counter() - t0)
        store.trial_finished(name, key, "completed", "completed")
    real_s = time.perf_counter() - started
    store.engine.dispose()
    return {"bulk_s": bulk_s, "bulk_rounds": bulk_n * rounds, "real_s": real_s, "real_rounds": len(per_round),
            "real_ms_per_round": 1000 * statistics.median(per_round) if per_round else float("nan")}


# -- reads, each in a fresh process ---------------------------------------------------------------------
def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory of this process from /proc (VmRSS now, or VmHWM: the peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (so import-time peaks do not hide the read's) and return RSS now."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return rss_mb()


def trial_count(url: str, name: str) -> int:
    from sqlalchemy import create_engine, func, select

    from sweeper.store import Sweep, Trial

    engine = create_engine(url)
    with engine.connect() as connection:
        count = connection.execute(select(func.count(Trial.id)).join(Sweep, Trial.sweep_id == Sweep.id)
                                   .where(Sweep.name == name)).scalar_one()
    engine.dispose()
    return count


def probe(kind: str, url: str, name: str, out: str) -> None:
    """Runs in a child process: one read, its time and the process's peak RSS growth."""
    started = time.perf_counter()
    if kind.startswith("compare"):
        from sweeper.cli import app
    else:
        from fastapi.testclient import TestClient
        from pydantic import SecretStr

        from sweeper.service import create_app
        from sweeper.settings import ServiceSettings
    import_s = time.perf_counter() - started
    times = []
    if kind.startswith("compare"):
        args = ["compare", name, "--db", url] + (["--format", "json"] if "json" in kind else [])
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(1)
        os.dup2(devnull, 1)  # the CLI prints 10k rows; keep them out of the measurement's pipe
        try:
            base_mb = reset_peak_rss()
            t0 = time.perf_counter()
            try:
                app(args, standalone_mode=False)
            except SystemExit:
                pass
            times.append(time.perf_counter() - t0)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
    else:
        root = Path(tempfile.mkdtemp(prefix="bss-svc-"))
        settings = ServiceSettings(root=root, database_url=SecretStr(url), data_roots=(root,))
        client = TestClient(create_app(settings))
        total = trial_count(url, name)  # in SQL: asking the service would load every trial before the measurement
        if "first page" in kind:
            path, params = f"/sweeps/{name}/trials", {"limit": 50}
        elif "last page" in kind:
            path, params = f"/sweeps/{name}/trials", {"limit": 50, "offset": max(0, total - 50)}
        else:
            path, params = f"/sweeps/{name}/trials/t{total // 2:06d}/rounds", {}
        base_mb = reset_peak_rss()
        calls = 4  # one warm-up, then 3 timed (1 when a call takes seconds)
        while len(times) < calls:
            t0 = time.perf_counter()
            response = client.get(path, params=params)
            times.append(time.perf_counter() - t0)
            assert response.status_code == 200, response.text[:300]
            if len(times) == 1 and times[0] > 2.0:
                calls = 2
        times = times[1:]
        shutil.rmtree(root, ignore_errors=True)
    peak_mb = rss_mb("VmHWM")
    Path(out).write_text(json.dumps({"import_s": import_s, "op_s": statistics.median(times),
                                     "process_s": time.perf_counter() - started, "mem_mb": peak_mb - base_mb,
                                     "peak_rss_mb": peak_mb}))


def run_probe(kind: str, url: str, name: str, workdir: Path) -> dict:
    out = workdir / f"probe-{uuid.uuid4().hex[:8]}.json"
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", kind, url, name, str(out)],
                            capture_output=True, text=True, cwd=str(workdir), timeout=3600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"probe {kind} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    data = json.loads(out.read_text())
    data["wall_s"] = time.perf_counter() - started
    return data


# -- the report -----------------------------------------------------------------------------------------
def render(results: dict, args) -> str:
    sizes = args.trials
    small, large = min(sizes), max(sizes)
    lines = [
        f"## Store scale ({date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, CPU only, "
        "shared machine; PostgreSQL 15 on the same machine)",
        "",
        f"Command: `{args.command}`",
        "",
        f"Each sweep: N trials x {args.rounds} rounds, a real round's record (25 keys, ~0.7 KB of JSON). All but the "
        f"last {args.real_trials} trials are bulk-inserted; those {args.real_trials} go through the real per-round "
        "path (`round_reported` with its checkpoint, what `StoreCallback` calls) on top of the full tables.",
        "",
        "### Writing",
        "",
        "| backend | trials | rounds | its share of the DB (MB) | bulk insert (rounds/s) | real path, ms per round (median) | "
        "real path projected for the whole sweep |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, by_n in results.items():
        for n, r in by_n.items():
            w = r["write"]
            projected = w["real_ms_per_round"] * n * args.rounds / 1000
            lines.append(f"| {backend} | {n:,} | {n * args.rounds:,} | {r['db_mb']:.0f} | "
                         f"{w['bulk_rounds'] / w['bulk_s'] if w['bulk_s'] else float('nan'):,.0f} | "
                         f"{w['real_ms_per_round']:.1f} | {projected / 60:.0f} min |")
    lines += ["", "### Reading", "",
              "| backend | read | " + " | ".join(f"{n:,} trials: s (MB)" for n in sizes) +
              f" | growth {small:,} -> {large:,}: time, memory |",
              "|---|---|" + "---|" * len(sizes) + "---|"]
    for backend, by_n in results.items():
        for read in args.reads:
            cells = []
            for n in sizes:
                p = by_n[n]["reads"][read]
                cells.append(f"{p['op_s']:.2f} ({p['mem_mb']:.1f})" if p["mem_mb"] < 10 else
                             f"{p['op_s']:.2f} ({p['mem_mb']:,.0f})")
            a, b = by_n[small]["reads"][read], by_n[large]["reads"][read]
            growth = f"{b['op_s'] / a['op_s']:.1f}x, {b['mem_mb'] / a['mem_mb'] if a['mem_mb'] > 1 else float('nan'):.1f}x"
            lines.append(f"| {backend} | {read} | " + " | ".join(cells) + f" | {growth} |")
    lines += ["", "Time = the read itself (median of 3 calls after a warm-up, or 1 when a call takes over 2 s; the CLI: one call, after imports). Memory = "
              "the process's peak RSS during the read (VmHWM, reset just before it) minus its RSS before it. `sweeper compare` CLI process wall time, "
              "imports included: " + "; ".join(
                  f"{backend} {n:,}: {by_n[n]['reads']['compare --format json']['process_s']:.1f} s"
                  for backend, by_n in results.items() for n in sizes) + "."]
    if len(sizes) > 1:
        ratio = large / small
        worst = max((by_n[large]["reads"][read]["op_s"] / by_n[small]["reads"][read]["op_s"], backend, read)
                    for backend, by_n in results.items() for read in args.reads)
        lines += ["", f"- Growth: trials x{ratio:.0f}; the worst read grows x{worst[0]:.1f} ({worst[1]}, {worst[2]})."]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", default="1000,10000", help="comma-separated sweep sizes")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--real-trials", type=int, default=20, help="trials written through the real per-round path")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--smoke", action="store_true", help="CI setting: SQLite, 10 and 30 trials x 3 rounds, 3 reads")
    parser.add_argument("--probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe)
        return 0
    args.command = " ".join([".venv/bin/python", "bench/store_scale.py", *sys.argv[1:]])
    if args.smoke:
        args.trials, args.rounds, args.real_trials, args.backends = "10,30", 3, 2, "sqlite"
    args.trials = sorted(int(n) for n in args.trials.split(","))
    args.reads = READS if not args.smoke else (READS[0], READS[2], READS[4])  # smoke: one of each kind
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: dict = {}
    for backend in backends:
        workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
        results[backend] = {}
        try:
            with fresh_database(backend, workdir) as url:
                for n in args.trials:
                    name = f"scale-{n}"
                    before = database_mb(url) if n != args.trials[0] else 0.0
                    write = write_sweep(url, name, n, args.rounds, min(args.real_trials, n))
                    print(f"[store_scale] {backend} {n} trials written: {write}", flush=True)
                    results[backend][n] = {"write": write, "db_mb": database_mb(url) - before, "reads": {}}
                for n in args.trials:  # reads after every sweep is written: the store holds all of them
                    for read in args.reads:
                        results[backend][n]["reads"][read] = run_probe(read, url, f"scale-{n}", workdir)
                        print(f"[store_scale] {backend} {n} {read}: {results[backend][n]['reads'][read]}", flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    text = render(results, args)
    print(text)
    with open(args.results, "a") as fh:
        fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
