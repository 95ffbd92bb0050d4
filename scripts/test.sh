#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run it (CPU only; this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Exactly the versions in constraints.txt (see README: refreshing them). torch and torchvision first,
# as a matching pair (see README: GPU users pick their CUDA build here).
# Bytecode is compiled at install (no --no-compile): where PYTHONDONTWRITEBYTECODE is set, as on this
# machine, Python would otherwise compile torch's modules again in every process the tests start.
python -m pip install -q -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -c constraints.txt -e ".[test]"
# The browser tests drive Debian's Chromium.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
ruff check .
ruff format --check .
# Two workers, one file each at a time (module fixtures stay shared within a file). Files go out in
# collection order (tests/conftest.py puts the longest first); xdist would otherwise order them by
# their count of tests.
python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --no-loadscope-reorder "$@"
