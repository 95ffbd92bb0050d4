"""The estimate in words: sizes, durations and a few plain sentences."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from engine.preflight.table import GB

if TYPE_CHECKING:
    from engine.preflight.forecast import Estimate


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
    basis = "Corrected by the steps so far." if found.refined else _without_commands(found.basis)
    lines = [f"{head}: {memory}; {time}{detail}. {basis}", *(f"⚠ {w}" for w in found.warnings)]
    return "\n".join(lines)


def _without_commands(text: str) -> str:
    """``text`` without the commands quoted in it: the table records how it was measured for its
    maintainers; a user reads where the figures come from."""
    return re.sub(r",?\s*`[^`]*`", "", text)
