"""Benchmark 6: the training issue's toy Attention Refocusing ablation (`bench.ar_ablation`), in a subprocess.

`bench.ar_ablation` trains the tiny model without AR and with each AR form, on two toys, and prints
JSON with each measure per toy and arm. This module runs it, files its JSON and reports the ratio
of the share of the tokens' attention mass outside their regions, with the config's default AR
form against without AR, on the twins toy (below 1: AR moved attention into the regions; a form
that only shrinks the attention leaves it at 1).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

MODULE = Path(__file__).resolve().with_name("ar_ablation.py")
QUICK_ARGS = (
    "--phase1-steps", "2", "--phase2-steps", "6", "--resolution", "64", "--seeds", "0", "--pretrain-steps", "3",
)  # fmt: skip
"""A shorter ablation for ``--quick`` (its defaults: both toys, 20 + 200 steps at 128 px, seeds 0, 1
and 2, a base pretrained for 150 steps)."""
HEADLINE_TOY = "twins"
"""The toy the ratio is read from (the plain one where a result has no twins)."""


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


def share_ratio(result: dict[str, Any], toy: str, arm: str) -> float:
    """The share of attention outside the regions with ``arm`` over without AR, on ``toy``."""
    share = result["toys"][toy]["share"]
    return round(share[arm] / share["without_ar"], 3)


def run(quick: bool, command: str) -> dict[str, Any]:
    """Benchmark entry: the ablation's JSON and its ratio of the share outside, default AR form / without AR."""
    entry: dict[str, Any] = {
        "what": "toy AR ablation: share of the tokens' attention mass outside their regions, default AR form",
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
    toy = HEADLINE_TOY if HEADLINE_TOY in result["toys"] else next(iter(result["toys"]))
    ratio = share_ratio(result, toy, result["default_arm"])
    return {**entry, "ratio": ratio, "meets_goal": ratio < 1, "toy": toy, "result": result}
