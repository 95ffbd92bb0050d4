"""Benchmark 6: the training issue's toy Attention Refocusing ablation, run as ``python -m bench.ar_ablation``.

`bench.ar_ablation` (written with the training code) trains a toy model with and without AR and
prints JSON: the share of each placeholder token's attention that falls outside its mask. This
module runs it in a subprocess and files its JSON; the ratio is its ``ratio`` field when given
(outside mass with AR over without), else the ratio of its ``outside_mass_with_ar`` and
``outside_mass_without_ar`` fields.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MODULE = Path(__file__).resolve().with_name("ar_ablation.py")


def parse_output(stdout: str) -> dict[str, Any]:
    """The JSON object the ablation printed: the whole output, else its last line that is an object."""
    try:
        value = json.loads(stdout)
    except json.JSONDecodeError:
        lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
        if not lines:
            raise ValueError("bench.ar_ablation printed no JSON object.") from None
        value = json.loads(lines[-1])
    if not isinstance(value, dict):
        raise ValueError("bench.ar_ablation printed JSON that is not an object.")
    return value


def run(command: str) -> dict[str, Any]:
    """Benchmark entry: the ablation's JSON, and the with/without-AR ratio of outside attention mass."""
    entry: dict[str, Any] = {
        "what": "toy AR ablation: share of the placeholder tokens' attention outside their masks, with AR",
        "baseline": "the same toy training without AR",
        "goal": "< 1",
        "command": command,
    }
    if not MODULE.is_file():
        return {**entry, "missing": True, "ratio": None}
    done = subprocess.run(
        [sys.executable, "-m", "bench.ar_ablation"], capture_output=True, text=True, check=False
    )
    if done.returncode:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"python -m bench.ar_ablation failed (exit {done.returncode}): {tail}")
    result = parse_output(done.stdout)
    ratio = result.get("ratio")
    if ratio is None and result.get("outside_mass_without_ar"):
        ratio = result["outside_mass_with_ar"] / result["outside_mass_without_ar"]
    entry.update(result=result, ratio=None if ratio is None else round(float(ratio), 3))
    if entry["ratio"] is not None:
        entry["meets_goal"] = entry["ratio"] < 1
    return entry
