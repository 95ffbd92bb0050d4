"""Pre-flight checks of a training run: expected peak memory and time, and the licences in play.

The figures come from ``assets/preflight.json``, a small table that ``python -m engine.preflight
build`` makes from the results of ``python -m bench`` (``bench/results.json`` and any other results
file): one row per model size, device type, VRAM profile and resolution, holding the peak memory of
a full phase-2 step, the memory resident before the steps, and the median seconds of a full
phase-2 step and of a phase-1 step (until the benchmarks time one, of their plain DreamBooth-LoRA
step, which stands in for it and is slower: it trains LoRA weights). On the CPU the peaks are the process's resident set (libraries included); the
part that the steps themselves add is ``peak - resident``. Only measured figures go in the table;
a device or profile without a row gets its figures from the first steps.

`estimate` turns a `TrainingConfig` and a `DeviceInfo` into an `Estimate` with warnings (will not
fit, near full on a GPU that spills into shared system memory) and a suggested profile; `refine`
corrects it with the step times and peak measured during the run, and `step_time_jump` spots the
sudden slowdown of a spill.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import TrainingConfig
    from engine.events import Event

TABLE_FILE = Path(__file__).resolve().parent.parent / "assets" / "preflight.json"
GB = 2**30
CUDA_OVERHEAD_BYTES = GB // 2
"""CUDA context and allocator slack on top of ``torch.cuda.max_memory_allocated``."""
NEAR_FULL = 0.95
"""A peak above this share of the memory leaves too little room (and spills, where the driver can)."""
JUMP_FACTOR = 3.0
JUMP_WINDOW = 5
SD15_WIDTHS = [320, 640, 1280, 1280]
SD15_FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"


class PreflightError(ValueError):
    """The figures table is missing or damaged; the message says how to make it again."""


@dataclass(frozen=True)
class Figures:
    """One measured row of the table."""

    model: str
    """"tiny" (the demo kit) or "sd15" (any SD 1.x)."""
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
    """Where and how: machine, date, command."""


@dataclass(frozen=True)
class DeviceInfo:
    """The device a run trains on, as far as memory goes."""

    kind: str
    """"cpu", "cuda" or "mps"."""
    name: str
    total_bytes: int | None
    """Dedicated GPU memory, or the system memory for the CPU and Apple GPUs."""
    can_spill: bool
    """The driver pages into shared system memory when the GPU is full instead of failing (Windows)."""


@dataclass(frozen=True)
class Estimate:
    """Expected peak memory and time of a run; ``None`` where no figure is known yet."""

    model: str
    profile: str
    resolution: int
    device: DeviceInfo
    steps: tuple[int, int]
    """Optimiser steps of phase 1 and phase 2."""
    micro_steps: int
    """Samples per optimiser step (batch x accumulation): step times scale with it."""
    batch_size: int
    """Samples per micro-step: the memory the steps add scales with it."""
    peak_bytes: int | None
    phase1_step_s: float | None
    phase2_step_s: float | None
    resident_bytes: int | None
    """Memory in use before the steps; ``peak_bytes - resident_bytes`` is what the steps add."""
    basis: str
    """One sentence: where the figures come from."""
    fits: bool | None
    warnings: tuple[str, ...] = ()
    suggested_profile: str | None = None
    done: tuple[int, int] = (0, 0)
    """Steps already done per phase (after `refine`)."""
    refined: bool = False
    memory_scale: float = 1.0
    """Measured peak over the figure (after `refine`); other profiles' figures are scaled by it."""

    @property
    def total_s(self) -> float | None:
        """Seconds of all the steps (loading and previews not included)."""
        return self._seconds(self.steps)

    @property
    def remaining_s(self) -> float | None:
        """Seconds of the steps not done yet."""
        return self._seconds((self.steps[0] - self.done[0], self.steps[1] - self.done[1]))

    def _seconds(self, counts: tuple[int, int]) -> float | None:
        total = 0.0
        for count, seconds in zip(counts, (self.phase1_step_s, self.phase2_step_s), strict=True):
            if count <= 0:
                continue
            if seconds is None:
                return None
            total += count * seconds
        return total

    @property
    def needed_bytes(self) -> int | None:
        """The peak plus the device's own overhead: what must fit in ``device.total_bytes``."""
        if self.peak_bytes is None:
            return None
        return self.peak_bytes + (CUDA_OVERHEAD_BYTES if self.device.kind == "cuda" else 0)

    @property
    def step_bytes(self) -> int | None:
        """What the steps add to the memory resident before them (activations, gradients, optimiser)."""
        if self.peak_bytes is None or self.resident_bytes is None:
            return None
        return self.peak_bytes - self.resident_bytes


# The table -------------------------------------------------------------------------------------


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


def rows_from_results(results: Mapping[str, Any]) -> list[Figures]:
    """Table rows from one ``python -m bench`` results file (its memory and speed benchmarks)."""
    machine = results["machine"]
    device = "cuda" if machine.get("gpu") else "cpu"
    model, resolution = results["sizes"]["model"], int(results["sizes"]["resolution"])
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
    return [
        Figures(model=model, device=device, profile=profile, resolution=resolution, measured=measured,
                **{**empty, **found})
        for profile, found in values.items()
    ]  # fmt: skip


def build_table(results: Sequence[Mapping[str, Any]], keep: Sequence[Figures] = ()) -> dict[str, Any]:
    """The table's JSON from results files and rows to ``keep``; a later row replaces an earlier one's."""
    rows: dict[tuple, Figures] = {(r.model, r.device, r.profile, r.resolution): r for r in keep}
    for item in results:
        for row in rows_from_results(item):
            rows[(row.model, row.device, row.profile, row.resolution)] = row
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
            "benchmarks did not time one, of a plain DreamBooth-LoRA step (phase1_from says which)."
        ),
        "rows": [row.__dict__ for row in rows.values()],
    }


# The device and the model ----------------------------------------------------------------------


def spill_possible() -> bool:
    """Whether the NVIDIA driver here can page GPU memory into system memory (Windows and WSL 2)."""
    return sys.platform == "win32" or "microsoft" in platform.release().lower()


def detect_device(preferred: str | None = None) -> DeviceInfo:
    """The device `engine.devices.pick_device` chooses, with its memory."""
    import psutil

    from engine.devices import pick_device

    device = pick_device(None if preferred in (None, "auto") else preferred)
    if device.type == "cuda":
        import torch

        properties = torch.cuda.get_device_properties(device)
        return DeviceInfo("cuda", properties.name, int(properties.total_memory), spill_possible())
    ram = int(psutil.virtual_memory().total)
    if device.type == "mps":
        return DeviceInfo("mps", "Apple GPU (memory shared with the system)", ram, True)
    return DeviceInfo("cpu", "CPU", ram, False)


def model_size(base_model: str) -> str:
    """Size class of ``base_model``: "tiny" for the demo kit's model, else "sd15" (every SD 1.x has SD 1.5's shapes).

    Raises `PreflightError` for a single file whose safetensors header is damaged or too large to read.
    """
    from engine.models import ModelLoadError, safetensors_header

    path = Path(base_model).expanduser()
    try:
        if path.is_dir():
            config = json.loads((path / "unet" / "config.json").read_text("utf-8"))
            return "sd15" if list(config["block_out_channels"]) == SD15_WIDTHS else "tiny"
        if path.suffix == ".safetensors" and path.is_file():
            header = safetensors_header(path)
            return "sd15" if header[SD15_FIRST_CONV]["shape"][0] == SD15_WIDTHS[0] else "tiny"
    except ModelLoadError as error:
        raise PreflightError(str(error)) from error
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "sd15"


def auto_profile(device: DeviceInfo) -> str:
    """The profile ``vram_profile="auto"`` picks on ``device`` (as `engine.devices.detect_profile`)."""
    from engine.devices import PROFILES

    if device.kind == "cpu":
        return "cpu"
    if device.kind != "cuda" or device.total_bytes is None:
        return "8gb"
    fitting = [p for p in PROFILES.values() if p.vram_gb <= device.total_bytes / GB + 0.5]
    return max(fitting, key=lambda p: p.vram_gb).name if fitting else "6gb"


# Estimating ------------------------------------------------------------------------------------


def _lookup(table: list[Figures], model: str, device: str, profile: str, resolution: int) -> Figures | None:
    """The row for these settings; another resolution's row scaled by the pixel count; or None."""
    same = [r for r in table if (r.model, r.device, r.profile) == (model, device, profile)]
    if not same:
        return None
    row = min(same, key=lambda r: abs(r.resolution - resolution))
    if row.resolution == resolution:
        return row
    scale = (resolution / row.resolution) ** 2

    def grow(peak: int | None) -> int | None:
        if peak is None or row.resident_bytes is None:
            return peak
        return round(row.resident_bytes + (peak - row.resident_bytes) * scale)

    return replace(
        row,
        resolution=resolution,
        peak_bytes=grow(row.peak_bytes),
        plain_peak_bytes=grow(row.plain_peak_bytes),
        phase1_step_s=None if row.phase1_step_s is None else row.phase1_step_s * scale,
        phase2_step_s=None if row.phase2_step_s is None else row.phase2_step_s * scale,
        measured=f"{row.measured}; scaled from {row.resolution} px",
    )


def _batch_peak(row: Figures, batch: int) -> int | None:
    if row.peak_bytes is None or row.resident_bytes is None or batch == 1:
        return row.peak_bytes
    return row.resident_bytes + (row.peak_bytes - row.resident_bytes) * batch


def estimate(
    config: TrainingConfig, device: DeviceInfo | None = None, table: list[Figures] | None = None
) -> Estimate:
    """Peak memory and time of training ``config`` on ``device`` (detected when not given)."""
    device = device or detect_device(config.device)
    table = load_table() if table is None else table
    model = model_size(config.base_model)
    profile = auto_profile(device) if config.vram_profile == "auto" else config.vram_profile
    table_device = "cpu" if device.kind == "cpu" else "cuda"
    micro = config.gradient_accumulation_steps * config.train_batch_size
    row = _lookup(table, model, table_device, profile, config.resolution)
    common = {
        "model": model,
        "profile": profile,
        "resolution": config.resolution,
        "device": device,
        "steps": (config.phase1_steps, config.phase2_steps),
        "micro_steps": micro,
        "batch_size": config.train_batch_size,
        "fits": None,
    }
    if row is None:
        where = "a GPU" if table_device == "cuda" else "the CPU"
        found = Estimate(
            **common,
            peak_bytes=None,
            phase1_step_s=None,
            phase2_step_s=None,
            resident_bytes=None,
            basis=f"No figures were measured for the {model} model with the {profile} profile on {where} "
            "yet; the estimate comes from the first steps of the run.",
        )
    else:
        found = Estimate(
            **common,
            peak_bytes=_batch_peak(row, config.train_batch_size),
            phase1_step_s=None if row.phase1_step_s is None else row.phase1_step_s * micro,
            phase2_step_s=None if row.phase2_step_s is None else row.phase2_step_s * micro,
            resident_bytes=row.resident_bytes,
            basis=f"Measured by the benchmarks on {row.measured}.",
        )
    return _judge(found, table)


def _judge(found: Estimate, table: list[Figures]) -> Estimate:
    """Fill in ``fits``, the warnings and a profile that fits."""
    device, needed = found.device, found.needed_bytes
    if needed is None or device.total_bytes is None:
        return replace(found, fits=None, warnings=(), suggested_profile=None)
    total = device.total_bytes
    memory = "GPU memory" if device.kind == "cuda" else "memory"
    warnings = []
    fits = needed <= total
    suggestion = None
    if not fits or needed > NEAR_FULL * total:
        suggestion = _fitting_profile(found, table)
        advice = (
            f" Choose the '{suggestion}' profile, which needs about {gb(_needed_with(found, table, suggestion))}."
            if suggestion
            else " Lower the resolution, or train on a device with more memory."
        )
        if device.can_spill:
            warnings.append(
                f"This run needs about {gb(needed)}, {'more than' if not fits else 'within a few percent of'} "
                f"the {gb(total)} of dedicated {memory} on {device.name}. Its driver then borrows shared "
                f"system memory instead of stopping, and training silently runs 5 to 10 times slower.{advice}"
            )
        elif not fits:
            warnings.append(
                f"This run needs about {gb(needed)} but {device.name} has {gb(total)} of {memory}: "
                "it will stop with an out-of-memory error." + advice
            )
        else:
            warnings.append(
                f"This run needs about {gb(needed)} of the {gb(total)} of {memory} on {device.name}: "
                "close other programs that use it, or it may run out." + advice
            )
    return replace(found, fits=fits, warnings=tuple(warnings), suggested_profile=suggestion)


def _needed_with(found: Estimate, table: list[Figures], profile: str) -> int | None:
    table_device = "cpu" if found.device.kind == "cpu" else "cuda"
    row = _lookup(table, found.model, table_device, profile, found.resolution)
    if row is None:
        return None
    peak = _batch_peak(row, found.batch_size)
    if peak is None:
        return None
    return round(peak * found.memory_scale) + (CUDA_OVERHEAD_BYTES if found.device.kind == "cuda" else 0)


def _fitting_profile(found: Estimate, table: list[Figures]) -> str | None:
    """The profile with the most memory (the fastest) whose peak stays clear of the device's limit."""
    from engine.devices import PROFILES

    total = found.device.total_bytes or 0
    for profile in sorted(PROFILES.values(), key=lambda p: -p.vram_gb):
        needed = _needed_with(found, table, profile.name)
        if profile.name != found.profile and needed is not None and needed <= NEAR_FULL * total:
            return profile.name
    return None


# During the run --------------------------------------------------------------------------------


def step_seconds(events: Sequence[Event]) -> dict[int, list[float]]:
    """Seconds each optimiser step took, per phase, from the run's events (the first since its phase began)."""
    from engine.events import PhaseStarted, StepDone

    seconds: dict[int, list[float]] = {}
    last: float | None = None
    for event in events:
        if isinstance(event, PhaseStarted):
            seconds[event.phase] = []
            last = event.time
        elif isinstance(event, StepDone) and last is not None:
            seconds.setdefault(event.phase, []).append(max(event.time - last, 0.0))
            last = event.time
    return seconds


def _typical(seconds: Sequence[float]) -> float | None:
    """Median step time, leaving out the first step (warm-up) when there are others."""
    usable = list(seconds[1:]) if len(seconds) > 1 else []
    return statistics.median(usable) if usable else None


def refine(
    found: Estimate,
    seconds: Mapping[int, Sequence[float]],
    *,
    peak_bytes: int | None = None,
    done: tuple[int, int] | None = None,
    table: list[Figures] | None = None,
) -> Estimate:
    """The estimate corrected by the run so far.

    ``seconds`` holds the measured step times per phase (`step_seconds`); ``peak_bytes`` the peak
    measured so far (on a GPU ``torch.cuda.max_memory_allocated``); ``done`` the steps done per
    phase (default: one per measured time; a resumed run says more). A phase's step time becomes its
    median (the warm-up step left out). A phase not reached yet keeps its figure; without one it
    gets the measured phase-1 time times the phase-2 to phase-1 ratio of the figures table. Until a
    few phase-2 steps have run, the peak is the larger of the figure and the measured peak.
    """
    table = _table_or_empty() if table is None else table
    times = [found.phase1_step_s, found.phase2_step_s]
    for index, phase in enumerate((1, 2)):
        observed = _typical(seconds.get(phase, ()))
        if observed is not None:
            times[index] = observed
    if times[1] is None and times[0] is not None:
        times[1] = times[0] * _phase_ratio(table)
    done = done or (len(seconds.get(1, ())), len(seconds.get(2, ())))
    peak, scale = found.peak_bytes, 1.0
    if peak_bytes is not None:
        peak = peak_bytes if peak is None or done[1] >= 3 else max(peak, peak_bytes)
        scale = peak / found.peak_bytes if found.peak_bytes else 1.0
    refined = replace(
        found,
        phase1_step_s=times[0],
        phase2_step_s=times[1],
        peak_bytes=peak,
        done=done,
        refined=True,
        memory_scale=scale,
    )
    return _judge(refined, table)


def _table_or_empty() -> list[Figures]:
    try:
        return load_table()
    except PreflightError:
        return []


def _phase_ratio(table: list[Figures]) -> float:
    """How much longer a phase-2 step takes than a phase-1 step in the figures (2 without any)."""
    ratios = [
        row.phase2_step_s / row.phase1_step_s for row in table if row.phase1_step_s and row.phase2_step_s
    ]
    return statistics.median(ratios) if ratios else 2.0


def step_time_jump(
    seconds: Sequence[float], *, window: int = JUMP_WINDOW, factor: float = JUMP_FACTOR
) -> float | None:
    """How many times slower the last ``window`` steps are than the first ones, if more than ``factor``.

    ``seconds`` are one phase's step times; the warm-up step is left out. A GPU that starts paging
    into shared system memory mid-run shows up as such a jump. None while there are too few steps
    or no jump.
    """
    steady = list(seconds[1:])
    if len(steady) < 2 * window:
        return None
    ratio = statistics.median(steady[-window:]) / max(statistics.median(steady[:window]), 1e-9)
    return ratio if ratio > factor else None


def jump_warning(ratio: float) -> str:
    return (
        f"Training steps now take {ratio:.0f} times as long as at the start. On Windows the GPU driver "
        "does this when GPU memory runs out and it borrows system memory: close other programs that "
        "use the GPU, or cancel and resume with a smaller VRAM profile."
    )


def measured_peak() -> int | None:
    """This process's peak CUDA memory so far, or None off CUDA (or before torch is loaded)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.max_memory_allocated())


# Showing it ------------------------------------------------------------------------------------


def gb(value: int | None) -> str:
    return "?" if value is None else f"{value / GB:.1f} GB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def summary(found: Estimate) -> str:
    """A few plain sentences on the estimate (Markdown-safe text), warnings last."""
    where = {"cpu": "the CPU", "mps": found.device.name}.get(found.device.kind, found.device.name)
    head = f"{found.model} model, {found.resolution} px, profile {found.profile}, on {where}"
    memory = (
        f"peak memory about {gb(found.needed_bytes)}"
        + (f" of {gb(found.device.total_bytes)}" if found.device.total_bytes else "")
        if found.peak_bytes is not None
        else "peak memory not known yet"
    )
    count = found.steps[0] + found.steps[1]
    if found.refined:
        time = f"about {duration(found.remaining_s)} left"
    else:
        time = f"about {duration(found.total_s)} for {count:,} steps, plus loading"
    per_step = [
        f"{seconds:.2f} s per phase-{phase} step"
        for phase, seconds, steps in zip((1, 2), (found.phase1_step_s, found.phase2_step_s), found.steps, strict=True)
        if seconds is not None and steps
    ]  # fmt: skip
    detail = f" ({', '.join(per_step)})" if per_step else ""
    basis = "Corrected by the steps so far." if found.refined else found.basis
    lines = [f"{head}: {memory}; {time}{detail}. {basis}", *(f"⚠ {w}" for w in found.warnings)]
    return "\n".join(lines)


# Licences --------------------------------------------------------------------------------------


def assets_in_use(*, commercial: bool, restore: str | None = None) -> list[str]:
    """Asset names the pipeline requests: the face models, and the restorer when one is chosen."""
    from engine.faces import COMMERCIAL_DETECTOR, COMMERCIAL_RECOGNISER, FACE_PACK, PARSER_ASSET
    from engine.postprocess import RESTORERS

    names = [COMMERCIAL_DETECTOR, COMMERCIAL_RECOGNISER] if commercial else [FACE_PACK]
    names.append(PARSER_ASSET)
    if restore is not None:
        names.append(RESTORERS[restore])
    return names


# Building the table ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.preflight", description=__doc__.splitlines()[0])
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


if __name__ == "__main__":
    sys.exit(main())
