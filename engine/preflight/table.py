"""The figures table, ``assets/preflight.json``: measured peak memory and step times per model
size, device type, VRAM profile and resolution, built from ``python -m bench`` results files
(``python -m engine.preflight build``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError

TABLE_FILE = Path(__file__).resolve().parents[2] / "assets" / "preflight.json"
GB = 2**30
DESCRIPTION = "Pre-flight checks of a training run: expected peak memory and time, and the licences in play."


class PreflightError(UserError, ValueError):
    """The figures table is missing or damaged; the message says how to make it again."""


@dataclass(frozen=True)
class Figures:
    """One row of the table: measured, or worked out (``estimated``)."""

    model: str
    """"tiny" or "tiny-sdxl" (the demo kit), "sd15" (any SD 1.x) or "sdxl" (any SDXL base)."""
    device: str
    """"cpu" or "cuda"."""
    profile: str
    resolution: int
    peak_bytes: int | None
    """Peak of a full phase-2 step, models resident (CPU: process resident set; CUDA: allocated)."""
    resident_bytes: int | None
    """Memory in use before the steps (models, caches, optimiser)."""
    plain_peak_bytes: int | None
    phase1_step_s: float | None
    phase2_step_s: float | None
    phase1_from: str
    """What ``phase1_step_s`` measured: a phase-1 step, or the plain step standing in for one."""
    measured: str
    """Where and how: machine, date, command; for an ``estimated`` row, how it was worked out."""
    estimated: bool = False
    """Worked out from parameter counts (`engine.preflight.arithmetic`), not measured."""


def load_table(path: Path = TABLE_FILE) -> list[Figures]:
    """The rows of the figures table."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
        return [Figures(**row) for row in data["rows"]]
    except FileNotFoundError as error:
        raise PreflightError(
            f"The pre-flight figures {path} are missing; run `python -m bench` and "
            "`python -m engine.preflight build bench/results.json` to make them."
        ) from error
    except (ValueError, KeyError, TypeError) as error:
        raise PreflightError(
            f"The pre-flight figures {path} are damaged ({error}); make them again with "
            "`python -m engine.preflight build bench/results.json`."
        ) from error


SIZE_CLASSES = {"sdxl-512": "sdxl"}
"""Bench model names whose rows stand for another size class: ``python -m bench --model sdxl-512``
measures SDXL 1.0's shapes (on a CPU at 512 px), so its rows are any SDXL base's ("sdxl")."""


def rows_from_results(results: Mapping[str, Any]) -> list[Figures]:
    """Table rows from one ``python -m bench`` results file (its memory and speed benchmarks), and
    from the SDXL runs merged into it (``"sdxl"``: the tiny SDXL; ``"sdxl_shaped"``: SDXL-shaped)."""
    machine = results["machine"]
    device = "cuda" if machine.get("gpu") else "cpu"
    model, resolution = results["sizes"]["model"], int(results["sizes"]["resolution"])
    model = SIZE_CLASSES.get(model, model)
    where = machine.get("gpu") or (
        f"{machine['cpu']} ({machine['cores_logical']} cores, torch threads: {machine.get('torch_threads', '?')})"
    )
    measured = f"{where}, torch {machine['torch']}, {results['created'][:10]}, `{results['command']}`"
    benchmarks = results.get("benchmarks", {})
    values: dict[str, dict[str, Any]] = {}
    memory = benchmarks.get("phase2_memory", {})
    for profile, entry in (memory.get("profiles") or {}).items():
        resident = entry["resident_before_steps_gb"]
        if isinstance(resident, Mapping):  # per step kind in newer results
            resident = resident["full"]
        values[profile] = {
            "peak_bytes": round(entry["full_peak_gb"] * GB),
            "plain_peak_bytes": round(entry["plain_peak_gb"] * GB),
            "resident_bytes": round(resident * GB),
        }
    speed = benchmarks.get("phase2_speed", {})
    if "median_seconds" in speed:
        median = speed["median_seconds"]
        phase1 = "phase1" if "phase1" in median else "plain"
        values.setdefault(speed["profile"], {}).update(
            phase1_step_s=median[phase1],
            phase2_step_s=median.get("mix", median["full"]),
            phase1_from="a phase-1 step" if phase1 == "phase1" else "the plain step, standing in for phase 1",
        )
    empty = {
        **dict.fromkeys(
            ("peak_bytes", "resident_bytes", "plain_peak_bytes", "phase1_step_s", "phase2_step_s")
        ),
        "phase1_from": "",
    }
    rows = [
        Figures(model=model, device=device, profile=profile, resolution=resolution, measured=measured,
                **{**empty, **found})
        for profile, found in values.items()
    ]  # fmt: skip
    return rows + [
        row for key in ("sdxl", "sdxl_shaped") if key in results for row in rows_from_results(results[key])
    ]
