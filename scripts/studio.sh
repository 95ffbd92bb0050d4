#!/usr/bin/env bash
# Install MagiCapture Studio into .venv and launch it; extra arguments go to magicapture-studio.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -c constraints.txt -e .
exec magicapture-studio "$@"
