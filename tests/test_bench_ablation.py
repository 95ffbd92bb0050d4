"""bench.ar_ablation run on its own at tiny sizes (a file of its own: the longest bench test, so that
the test workers can run it beside the quick benchmark run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ablation_result import assert_ablation_result

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_ablation_trains_every_arm_on_both_toys_and_its_parts_merge(tmp_path: Path) -> None:
    """Tiny sizes: both toys and the four arms (the outside-share one too) in one run; its toys, as
    runs of their own would print them, merge back into it."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.ar_ablation", "--phase1-steps", "1", "--phase2-steps", "2",
         "--resolution", "64", "--seeds", "0", "--pretrain-steps", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    whole = json.loads(done.stdout)
    assert_ablation_result(whole, {"plain", "twins"}, {"0"})
    paths = []
    for toy in ("twins", "plain"):
        paths.append(tmp_path / f"{toy}.json")
        paths[-1].write_text(json.dumps({**whole, "toys": {toy: whole["toys"][toy]}}))
    merged = subprocess.run(
        [sys.executable, "-m", "bench.ar_ablation", "--merge", *map(str, paths)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(merged.stdout)["toys"] == {toy: whole["toys"][toy] for toy in ("twins", "plain")}
