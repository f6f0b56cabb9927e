"""Causal-LM trial worker throughput: training tokens/s and model FLOPs utilisation (MFU) of sweeper's
causal-LM SFT trainer (`trainers.causal_lm_sft.train`, LoRA on PEFT's default targets: q_proj and v_proj for
Llama), on SmolLM2-135M and on larger configs of the same architecture (random weights: throughput does not depend
on them).

    .venv/bin/python bench/causal_lm_throughput.py                         # CUDA: 135M, 360M shape; CPU: 135M
    .venv/bin/python bench/causal_lm_throughput.py --include-1.7b          # CUDA: also the 1.7B shape
    .venv/bin/python bench/causal_lm_throughput.py --smoke --results /tmp/r.md   # CI smoke: a tiny config, CPU

On CUDA the trainer runs bf16 mixed precision (`model.dtype: auto`: bf16 where the GPU supports it) with
the whole effective batch on the device. Each model trains 2 epochs (2 rounds, no generation during
evaluation); the numbers are from round 2 only (steady state: warm-up and first-step compilation left out):
tokens = the trainer's `tokens_seen` (every input position, padding included: what the GPU computes),
time = the trainer's `time_train_s` (training steps only; evaluation and checkpoints are not in it).

Model FLOPs per token (PaLM's convention, for MFU): 6 N + 12 L d_attn T, with N the weights of every matmul
(the output projection included, tied or not), L layers, d_attn = heads x head_dim, T the mean padded
sequence length. LoRA freezes the base weights, so the work really done is closer to 4 N + 12 L d_attn T;
both are reported. Peak: the bf16 dense peak of the GPU (table below); on CPU the peak is unknown, so no
MFU is given, and CPU numbers are NOT representative of a GPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# bf16 dense peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = [("H200", 989.4e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12),
             ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12)]
SHAPES = {  # SmolLM2 architecture (Llama), other sizes; None = the real SmolLM2-135M-Instruct weights
    "smollm2-135m": None,
    "smollm2-360m-shape": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                               num_key_value_heads=5, head_dim=64),
    "smollm2-1.7b-shape": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                               num_key_value_heads=32, head_dim=64),
    "tiny-shape": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16),
}


def model_folder(shape: str, workdir: Path) -> str:
    """The real SmolLM2-135M folder, or a random-weight model of another shape with SmolLM2's tokenizer."""
    from trainers.models import resolve_model

    base = resolve_model("smollm2-135m")
    if SHAPES[shape] is None:
        return base
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = workdir / shape
    config = AutoConfig.from_pretrained(base)
    for key, value in SHAPES[shape].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return str(folder)


def matmul_params(config) -> int:
    """Weights of every matmul a token goes through: attention, MLP, and the output projection."""
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * config.intermediate_size
    return layers * per_layer + d * config.vocab_size


def measure(shape: str, args, workdir: Path) -> dict:
    import torch
    from transformers import AutoConfig

    from trainers.base import ListReporter, TrialConfig
    from trainers.causal_lm_sft import train

    path = model_folder(shape, workdir)
    data = ROOT / "examples" / "data" / args.data
    if args.train_rows:  # a cut-down copy of the data (CI smoke)
        cut = workdir / "data"
        cut.mkdir(exist_ok=True)
        for split, rows in (("train", args.train_rows), ("holdout", max(1, args.train_rows // 2))):
            cut.joinpath(f"{split}.json").write_text(json.dumps(json.loads((data / f"{split}.json").read_text())[:rows]))
        data = cut
    config = TrialConfig.model_validate(dict(
        task="causal_lm_sft", model_path=path,
        data={"format": "restaurant8k", "train": str(data / "train.json"), "holdout": str(data / "holdout.json")},
        hparams=dict(learning_rate=2e-4, batch_size=args.batch_size, num_epochs=2, lr_scheduler_type="linear",
                     warmup_ratio=0.0, weight_decay=0.0, lora_r=16, lora_alpha=32, lora_dropout=0.05),
        seed=0, output_dir=tempfile.mkdtemp(prefix="clm-", dir=workdir), max_seq_length=args.max_seq_length,
        evals_per_epoch=1, patience=1_000_000, min_delta=0.0, generation_eval_examples=0,
        torch_threads=None if torch.cuda.is_available() else os.cpu_count()))
    reporter = ListReporter()
    started = time.perf_counter()
    train(config, reporter)
    wall = time.perf_counter() - started
    first, second = reporter.rounds[0].bookkeeping, reporter.rounds[1].bookkeeping
    tokens = second["tokens_seen"] - first["tokens_seen"]
    seconds = second["time_train_s"] - first["time_train_s"]
    steps = round((second["examples_seen"] - first["examples_seen"]) / args.batch_size)
    model_config = AutoConfig.from_pretrained(path)
    n = matmul_params(model_config)
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    d_attn = model_config.num_attention_heads * head_dim
    seq = tokens / max(1, steps * args.batch_size)
    attention = 12 * model_config.num_hidden_layers * d_attn * seq
    flops_6n = (6 * n + attention) * tokens / seconds
    flops_4n = (4 * n + attention) * tokens / seconds
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    peak = next((p for key, p in PEAK_BF16 if key in device), None) if torch.cuda.is_available() else None
    shutil.rmtree(config.output_dir, ignore_errors=True)
    return {"model": shape, "params_total_m": n / 1e6, "device": device,
            "precision": "bf16 mixed" if torch.cuda.is_available() else "fp32", "batch": args.batch_size,
            "seq": seq, "steps": steps, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "tflops_6n": flops_6n / 1e12, "tflops_4n": flops_4n / 1e12, "peak_tflops": peak / 1e12 if peak else None,
            "mfu_6n": flops_6n / peak if peak else None, "mfu_4n": flops_4n / peak if peak else None,
            "load_s": first.get("time_load_s"), "wall_s": wall}


def render(rows: list[dict], args) -> str:
    import torch

    cuda = torch.cuda.is_available()
    lines = [
        f"## Causal-LM trainer throughput ({date.today().isoformat()}, {platform.machine()}, "
        f"{rows[0]['device'] if rows else '-'})",
        "",
        f"Command: `{args.command}`",
        "",
        ("GPU run: bf16 mixed precision." if cuda else
         "**CPU, not representative**: this machine has no GPU, so this is the CPU fallback (fp32, "
         f"{os.cpu_count()} torch threads); the peak FLOP/s of a CPU is unknown here, so no MFU."),
        f"Data `examples/data/{args.data}`{f' (first {args.train_rows} rows)' if args.train_rows else ''}, max_seq_length {args.max_seq_length}, effective batch {args.batch_size}, "
        "LoRA r=16 on q_proj/v_proj (PEFT's default); round 2 of 2 (steady state).",
        "",
        "| model | matmul params (M) | device | precision | steps | mean padded seq | tokens/s | "
        "model TFLOP/s (6N) | MFU (6N) | MFU (LoRA, 4N) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mfu6 = f"{r['mfu_6n']:.1%}" if r["mfu_6n"] is not None else "n/a (CPU)"
        mfu4 = f"{r['mfu_4n']:.1%}" if r["mfu_4n"] is not None else "n/a (CPU)"
        lines.append(f"| {r['model']} | {r['params_total_m']:.0f} | {r['device']} | {r['precision']} | {r['steps']} | "
                     f"{r['seq']:.0f} | {r['tokens_per_s']:,.0f} | {r['tflops_6n']:.3f} | {mfu6} | {mfu4} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=None, help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--include-1.7b", dest="big", action="store_true")
    parser.add_argument("--data", default=None, help="a folder of examples/data (default: restaurant8k on CUDA, "
                                                     "restaurant8k-small on CPU)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--train-rows", type=int, default=None, help="train on the first N rows only (holdout N/2)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--smoke", action="store_true", help="CI setting: a tiny random config on CPU")
    args = parser.parse_args()
    args.command = " ".join([".venv/bin/python", "bench/causal_lm_throughput.py", *sys.argv[1:]])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    cuda = torch.cuda.is_available()
    if args.smoke:
        args.models = args.models or "tiny-shape"
        args.train_rows, args.batch_size = args.train_rows or 8, args.batch_size or 4  # 2 steps an epoch
    if args.models is None:
        args.models = ("smollm2-135m,smollm2-360m-shape" + (",smollm2-1.7b-shape" if args.big else "")) if cuda \
            else "smollm2-135m"
    args.data = args.data or ("restaurant8k" if cuda else "restaurant8k-small")
    args.batch_size = args.batch_size or (32 if cuda else 8)
    workdir = Path(tempfile.mkdtemp(prefix="bench-clm-"))
    rows = []
    try:
        for shape in [m.strip() for m in args.models.split(",") if m.strip()]:
            rows.append(measure(shape, args, workdir))
            print(f"[causal_lm_throughput] {json.dumps(rows[-1])}", flush=True)
            if cuda:
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    text = render(rows, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    with open(args.results, "a") as fh:
        fh.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
