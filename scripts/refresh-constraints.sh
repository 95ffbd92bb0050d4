#!/usr/bin/env bash
# Rewrite constraints.txt with the newest releases that pyproject.toml allows: resolve the app and its
# [test] extra afresh in a throwaway venv (no constraints), then write down every version it installed.
# Afterwards run scripts/test.sh (it installs exactly the new set) and commit constraints.txt only if the
# suite passes; `git diff constraints.txt` shows what moved.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The torch pair of scripts/test.sh and scripts/studio.sh; change all three together.
TORCH="torch==2.14.1"
TORCHVISION="torchvision==0.29.1"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m venv "$scratch/venv"
pip="$scratch/venv/bin/python -m pip"
$pip install -q --upgrade pip
$pip install -q "$TORCH" "$TORCHVISION"
$pip install -q -e ".[test]"
{
  cat <<'HEADER'
# Exact versions of every package that `pip install -e ".[test]"` resolves (torch and torchvision
# included): the set CI tests. Both README commands (scripts/studio.sh, scripts/test.sh) install with
# `-c constraints.txt`, so a fresh install next month gets this same set. To move to newer releases,
# run scripts/refresh-constraints.sh, then scripts/test.sh, and commit this file only if the suite
# passes. tests/test_constraints.py checks that the installed versions are these.
HEADER
  # --all keeps setuptools (torch needs it at run time); pip itself is the installer, not a dependency.
  $pip freeze --all --exclude-editable | grep -v '^pip=='
} > "$scratch/constraints.txt"
mv "$scratch/constraints.txt" constraints.txt
echo "constraints.txt rewritten; now run scripts/test.sh and review git diff constraints.txt"
