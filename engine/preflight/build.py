"""``python -m engine.preflight build``: the figures table made from bench results and the estimated rows."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.preflight.arithmetic import estimated_rows
from engine.preflight.table import DESCRIPTION, TABLE_FILE, Figures, load_table, rows_from_results


def build_table(results: Sequence[Mapping[str, Any]], keep: Sequence[Figures] = ()) -> dict[str, Any]:
    """The table's JSON from results files, rows to ``keep`` and the estimated SDXL rows
    (`engine.preflight.arithmetic`); a later row replaces an earlier one's, a measured one an estimate."""
    rows: dict[tuple, Figures] = {}
    measured = [
        *(r for r in keep if not r.estimated),
        *(r for item in results for r in rows_from_results(item)),
    ]
    for row in measured:
        rows[(row.model, row.device, row.profile, row.resolution)] = row
    for row in estimated_rows():
        rows.setdefault((row.model, row.device, row.profile, row.resolution), row)
    return {
        "about": (
            "Peak memory and step times of MagiCapture training steps, measured by `python -m bench` "
            "(benchmarks phase2_memory and phase2_speed) and collected by "
            "`python -m engine.preflight build RESULTS...`. peak_bytes: one full phase-2 step "
            "(reconstruction, composed prompt, identity, Attention Refocusing) with the models resident; "
            "on the CPU the process's peak resident set, on CUDA torch.cuda.max_memory_allocated. "
            "resident_bytes: in use before the steps (models, caches, optimiser). phase2_step_s: median "
            "seconds of a full phase-2 step on samples drawn as a run draws them (where older results "
            "lack that, of the composed step); phase1_step_s: median seconds of a phase-1 step, or, where the "
            "benchmarks did not time one, of a plain DreamBooth-LoRA step (phase1_from says which). "
            "Rows with estimated: true are worked out from parameter counts where no GPU measured them "
            "(engine/preflight/arithmetic.py); a measured row replaces them."
        ),
        "rows": [row.__dict__ for row in rows.values()],
    }


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.preflight", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser(
        "build", help="add the figures of bench results files to the table (same settings: replaced)"
    )
    build.add_argument("results", nargs="+", type=Path, help="results files of `python -m bench`, in order")
    build.add_argument("--out", type=Path, default=TABLE_FILE)
    build.add_argument("--fresh", action="store_true", help="drop the rows already in the table")
    args = parser.parse_args(argv)
    from engine.store import atomic_write_text

    results = [json.loads(path.read_text("utf-8")) for path in args.results]
    keep = [] if args.fresh or not args.out.exists() else load_table(args.out)
    table = build_table(results, keep)
    atomic_write_text(args.out, json.dumps(table, indent=2) + "\n")
    print(f"{len(table['rows'])} rows written to {args.out}")
    return 0
