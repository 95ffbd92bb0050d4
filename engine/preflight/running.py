"""During the run: step times from its events, the estimate corrected by them, and the sudden
slowdown of a GPU spilling into system memory."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from engine.preflight.forecast import Estimate, judge
from engine.preflight.table import Figures, PreflightError, load_table

if TYPE_CHECKING:
    from engine.events import Event

JUMP_FACTOR = 3.0
JUMP_WINDOW = 5
RATE_WINDOW = 100
"""Steps the measured rate reads: one preview period of the presets, so that recurring previews and
checkpoints weigh in it as they will in the steps left."""


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
    return judge(refined, table)


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


def wall_step_seconds(seconds: Sequence[float], *, window: int = RATE_WINDOW) -> float | None:
    """Wall seconds per step over one phase's last ``window`` steps, what happened between them included.

    ``seconds`` are the phase's step times (`step_seconds`): each the time since the step before, so
    previews and checkpoints count in the step after them. The phase's first step is left out: it
    carries the warm-up (first passes, caches), which does not recur. None until a second step.
    """
    steady = list(seconds[1:])[-window:]
    return sum(steady) / len(steady) if steady else None


def remaining_seconds(found: Estimate, wall_step_s: float | None, phase: int) -> float | None:
    """Seconds left of a refined estimate (`refine`), the current phase at the measured wall rate.

    ``wall_step_s`` is the current ``phase``'s `wall_step_seconds`; later phases take their step time
    plus the overhead per step measured now (previews and checkpoints beyond the step itself).
    Without a measured rate, the estimate's own `Estimate.remaining_s`.
    """
    if wall_step_s is None or phase not in (1, 2):
        return found.remaining_s
    times = (found.phase1_step_s, found.phase2_step_s)
    step_s = times[phase - 1]
    overhead = max(wall_step_s - step_s, 0.0) if step_s is not None else 0.0
    left = [max(total - done, 0) for total, done in zip(found.steps, found.done, strict=True)]
    seconds = left[phase - 1] * wall_step_s
    for later in range(phase, 2):
        if left[later]:
            if times[later] is None:
                return None
            seconds += left[later] * (times[later] + overhead)
    return seconds


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
