#!/usr/bin/env bash
# The prepared GPU check: measure (bench/gpu_check.json), then print the README rows from what it wrote.
# Arguments go to `python -m bench.gpu_check` (--base PATH, --tiny-decoder FOLDER, --out PATH...).
# PYTHON picks the interpreter (default: the checkout's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
out=bench/gpu_check.json
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[i]}" = "--out" ] && [ $((i + 1)) -lt ${#args[@]} ]; then out="${args[i + 1]}"; fi
done
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
status=0
"$python" -m bench.gpu_check "$@" || status=$?
if [ -f "$out" ] && [ "$out" -nt "$stamp" ]; then
  "$python" -m bench.gpu_check --table --out "$out"
fi
exit "$status"
