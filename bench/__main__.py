"""``python -m bench``: run the benchmarks, print their JSON and write ``bench/results.json``.

``python -m bench --table`` prints the README table from the results file instead.
``python -m bench --model tiny-sdxl`` runs the phase-2 speed and memory benchmarks on the tiny
SDXL and puts its results under ``"sdxl"`` in the results file, keeping the rest;
``--model sdxl-512`` does the same on the SDXL-shaped model at 512 px (a CPU's size), under
``"sdxl_shaped"``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.settings import BENCHMARKS, RESULTS
from bench.workbench import MODELS, RESULT_KEYS, SDXL_MODELS

SDXL_BENCHMARKS = ("phase2_memory", "phase2_speed")
"""What runs on an SDXL model (the other benchmarks' baselines are SD 1.x's)."""
LABELS = {
    "sd15": "SD 1.5 configs, random weights",
    "tiny": "demo kit tiny SD 1.x",
    "tiny-sdxl": "demo kit tiny SDXL",
    "sdxl-512": "SDXL 1.0 configs, random weights",
    "sdxl": "SDXL 1.0 configs, random weights",
}
KEYS = {
    "phase2_speed": "phase2_step_ratio",
    "phase2_memory": "phase2_peak_memory_ratio",
    "generate": "generate_time_ratio",
}
"""Headline ratios copied to the top level of the results."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="sd15", help="base model size (default: sd15)")
    parser.add_argument(
        "--quick", action="store_true", help="everything on the tiny model with few repeats (about a minute)"
    )
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument(
        "--out", type=Path, help=f"results file (default: {RESULTS} for a full run; none otherwise)"
    )
    parser.add_argument(
        "--table", action="store_true", help="print the README table of the results file and exit"
    )
    return parser.parse_args(argv)


def command_line(argv: list[str]) -> str:
    return " ".join(["python -m bench", *argv])


def rerun_command(name: str, args: argparse.Namespace) -> str:
    """The command that reproduces one benchmark's figures."""
    if name == "ar_ablation":
        from bench.ablation import command_args

        return " ".join(["python", *command_args(args.quick)])
    size = "--quick" if args.quick else f"--model {args.model}"
    return f"python -m bench {size} --only {name}"


def run_all(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from bench import ablation, generation, intake, memory, speed, studio
    from bench.machine import describe, load_average
    from bench.settings import sizes_for
    from bench.steps import make_trainer, save_artefact
    from bench.workbench import prepare
    from engine.devices import pick_device

    model = "tiny" if args.quick else args.model
    sizes = sizes_for(model, args.quick, pick_device().type == "cuda")
    if sizes.time_basis == "cpu":  # the CPU seconds of one thread are the step's own, whatever the load
        import torch

        torch.set_num_threads(1)
    offered = SDXL_BENCHMARKS if model in SDXL_MODELS else BENCHMARKS
    selected = [name for name in offered if not args.only or name in args.only]
    results: dict[str, Any] = {
        "command": command_line(argv),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": describe(),
        "sizes": sizes.to_json(),
        "benchmarks": {},
    }
    with tempfile.TemporaryDirectory(prefix="magicapture-bench-") as scratch:
        bench = prepare(model, Path(scratch))
        results["face_models"] = "demo kit stand-ins (random weights, real formats); Haar cascades detect"
        results["base_model"] = f"{model}: {LABELS[model]}"

        def record(name: str, work: Callable[[str], dict[str, Any]]) -> None:
            if name not in selected:
                return
            command = rerun_command(name, args)
            print(f"bench: running {name}…", file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                results["benchmarks"][name] = {
                    **work(command),
                    "wall_seconds": round(time.perf_counter() - began, 1),
                }
            except Exception as error:
                detail = "".join(traceback.format_exception_only(type(error), error)).strip()
                results["benchmarks"][name] = {"error": detail, "command": command}
                traceback.print_exc()

        record("phase2_memory", lambda command: memory.run(bench, sizes, command))
        if "phase2_speed" in selected or "generate" in selected:
            trainer = make_trainer(bench)
            record("phase2_speed", lambda command: speed.run(trainer, sizes, command))
            artefact = save_artefact(trainer)
            del trainer
            gc.collect()
        record("generate", lambda command: generation.run(bench, sizes, artefact, command))
        record("intake", lambda command: intake.run(bench, sizes, command))
        record("studio", lambda command: studio.run(bench, sizes, command))
        record("ar_ablation", lambda command: ablation.run(args.quick, command))
    for name, key in KEYS.items():
        results[key] = results["benchmarks"].get(name, {}).get("ratio")
    results["machine"]["load_average_at_end"] = load_average()
    return results


def merged(path: Path, sdxl: dict[str, Any]) -> dict[str, Any]:
    """The results file at ``path`` (if any) with an SDXL run's results under its size's key
    (`RESULT_KEYS`), the rest kept; benchmarks of an earlier run of that key that this one did not
    run (``--only``) are kept too."""
    key = RESULT_KEYS[sdxl["sizes"]["model"]]
    whole = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    earlier = (whole.get(key) or {}).get("benchmarks", {})
    return {**whole, key: {**sdxl, "benchmarks": {**earlier, **sdxl["benchmarks"]}}}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.table:
        from bench.table import render_table

        path = args.out or RESULTS
        print(render_table(json.loads(Path(path).read_text("utf-8"))))
        return 0
    results = run_all(args, argv)
    text = json.dumps(results, indent=2)
    print(text)
    out = args.out or (RESULTS if not (args.quick or args.only) else None)
    if out is not None:
        from engine.store import atomic_write_text

        if args.model in SDXL_MODELS and not args.quick:
            text = json.dumps(merged(Path(out), results), indent=2)
        atomic_write_text(Path(out), text + "\n")
    failed = [name for name, entry in results["benchmarks"].items() if "error" in entry]
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
