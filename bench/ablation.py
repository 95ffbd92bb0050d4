"""Benchmark 6: the training issue's toy Attention Refocusing ablation (`bench.ar_ablation`), in a subprocess.

`bench.ar_ablation` (written with the training code) trains the tiny model twice, with and
without AR, and prints JSON with ``with_ar`` and ``without_ar``: the share of the placeholder
tokens' min-max rescaled attention outside their target regions (what the AR loss penalises). This
module runs it, files its JSON and reports the ratio with/without (below 1: AR refocused the
attention into the masks).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MODULE = Path(__file__).resolve().with_name("ar_ablation.py")
QUICK_ARGS = ("--phase1-steps", "4", "--phase2-steps", "12", "--resolution", "64", "--seeds", "0")
"""A shorter ablation for ``--quick`` (its defaults: 20 + 200 steps at 256 px, seeds 0, 1 and 2)."""


def parse_output(stdout: str) -> dict[str, Any]:
    """The JSON object the ablation printed (the whole output, else its last line that is an object)."""
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


def command_args(quick: bool) -> list[str]:
    return ["-m", "bench.ar_ablation", *(QUICK_ARGS if quick else ())]


def run(quick: bool, command: str) -> dict[str, Any]:
    """Benchmark entry: the ablation's JSON and its with/without-AR ratio of outside attention."""
    entry: dict[str, Any] = {
        "what": "toy AR ablation: placeholder tokens' rescaled attention outside their target regions, with AR",
        "baseline": "the same toy training without AR",
        "goal": "< 1",
        "command": command,
    }
    if not MODULE.is_file():
        return {**entry, "missing": True, "ratio": None}
    done = subprocess.run([sys.executable, *command_args(quick)], capture_output=True, text=True, check=False)
    if done.returncode:
        tail = " | ".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"python -m bench.ar_ablation failed (exit {done.returncode}): {tail}")
    result = parse_output(done.stdout)
    ratio = round(result["with_ar"] / result["without_ar"], 3)
    return {**entry, "ratio": ratio, "meets_goal": ratio < 1, "result": result}
