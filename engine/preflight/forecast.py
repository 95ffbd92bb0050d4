"""The estimate before a run: expected peak memory and time from the figures table, whether it
fits the device (and whether it would spill), and a profile that fits."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine.devices import UNKNOWN_FAMILY
from engine.preflight.device import DeviceInfo, auto_profile, detect_device, model_family, model_size
from engine.preflight.report import gb
from engine.preflight.table import GB, Figures, load_table

if TYPE_CHECKING:
    from engine.config import TrainingConfig

CUDA_OVERHEAD_BYTES = GB // 2
"""CUDA context and allocator slack on top of ``torch.cuda.max_memory_allocated``."""
NEAR_FULL = 0.95
"""A peak above this share of the memory leaves too little room (and spills, where the driver can)."""


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
    family: str = "sd1"
    """The base model's family: whose profiles ``suggested_profile`` is chosen from."""

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


def lookup(table: list[Figures], model: str, device: str, profile: str, resolution: int) -> Figures | None:
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
    from engine.devices import ProfileError, profile_named

    device = device or detect_device(config.device)
    table = load_table() if table is None else table
    family = model_family(config.base_model)
    model = model_size(config.base_model, family)
    refusal = None
    if config.vram_profile == "auto":
        profile = auto_profile(device, family)
    else:
        try:
            profile = profile_named(config.vram_profile, family).name
        except ProfileError as error:
            profile, refusal = config.vram_profile, str(error)
    table_device = "cpu" if device.kind == "cpu" else "cuda"
    micro = config.gradient_accumulation_steps * config.train_batch_size
    row = lookup(table, model, table_device, profile, config.resolution)
    common = {
        "model": model,
        "profile": profile,
        "resolution": config.resolution,
        "device": device,
        "steps": (config.phase1_steps, config.phase2_steps),
        "micro_steps": micro,
        "batch_size": config.train_batch_size,
        "fits": None,
        "family": family,
    }
    if row is None:
        where = "a GPU" if table_device == "cuda" else "the CPU"
        found = Estimate(
            **common,
            peak_bytes=None,
            phase1_step_s=None,
            phase2_step_s=None,
            resident_bytes=None,
            basis="There are no figures for a model of unknown family; the estimate comes from the "
            "first steps of the run."
            if family == UNKNOWN_FAMILY
            else f"No figures were measured for the {model} model with the {profile} profile on {where} "
            "yet; the estimate comes from the first steps of the run.",
        )
    else:
        found = Estimate(
            **common,
            peak_bytes=_batch_peak(row, config.train_batch_size),
            phase1_step_s=None if row.phase1_step_s is None else row.phase1_step_s * micro,
            phase2_step_s=None if row.phase2_step_s is None else row.phase2_step_s * micro,
            resident_bytes=row.resident_bytes,
            basis=f"Estimated {row.measured}."
            if row.estimated
            else f"Measured by the benchmarks on {row.measured}.",
        )
    if refusal:
        return replace(found, fits=False, warnings=(refusal,))
    return judge(found, table)


def judge(found: Estimate, table: list[Figures]) -> Estimate:
    """Fill in ``fits``, the warnings and a profile that fits."""
    device, needed = found.device, found.needed_bytes
    warnings = [_unknown_family(found.profile)] if found.family == UNKNOWN_FAMILY else []
    if needed is None or device.total_bytes is None:
        return replace(found, fits=None, warnings=tuple(warnings), suggested_profile=None)
    total = device.total_bytes
    memory = "GPU memory" if device.kind == "cuda" else "memory"
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


def _unknown_family(profile: str) -> str:
    return (
        f"The base model's family (SD 1.x or SDXL) is not known until it is loaded, so the '{profile}' "
        "profile takes the options that suit either family at that size (an SD 1.x model may train more "
        "slowly with them) and there are no figures to estimate from. Download the model first for a "
        "profile and an estimate made for its family."
    )


def _needed_with(found: Estimate, table: list[Figures], profile: str) -> int | None:
    table_device = "cpu" if found.device.kind == "cpu" else "cuda"
    row = lookup(table, found.model, table_device, profile, found.resolution)
    if row is None:
        return None
    peak = _batch_peak(row, found.batch_size)
    if peak is None:
        return None
    return round(peak * found.memory_scale) + (CUDA_OVERHEAD_BYTES if found.device.kind == "cuda" else 0)


def _fitting_profile(found: Estimate, table: list[Figures]) -> str | None:
    """The profile with the most memory (the fastest) whose peak stays clear of the device's limit."""
    from engine.devices import profiles_for

    total = found.device.total_bytes or 0
    for profile in sorted(profiles_for(found.family).values(), key=lambda p: -p.vram_gb):
        needed = _needed_with(found, table, profile.name)
        if profile.name != found.profile and needed is not None and needed <= NEAR_FULL * total:
            return profile.name
    return None
