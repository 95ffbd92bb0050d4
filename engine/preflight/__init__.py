"""Pre-flight checks of a training run: expected peak memory and time, and the licences in play.

The figures come from ``assets/preflight.json``, a small table that ``python -m engine.preflight
build`` makes from the results of ``python -m bench`` (``bench/results.json`` and any other results
file): one row per model size, device type, VRAM profile and resolution, holding the peak memory of
a full phase-2 step, the memory resident before the steps, and the median seconds of a full
phase-2 step and of a phase-1 step (until the benchmarks time one, of their plain DreamBooth-LoRA
step, which stands in for it and is slower: it trains LoRA weights). On the CPU the peaks are the process's resident set (libraries included); the
part that the steps themselves add is ``peak - resident``. Measured figures go in the table, and
for SDXL on a GPU, until one is measured, figures worked out from its parameter counts
(`arithmetic`; the estimate then says "Estimated"); a device or profile without a row gets its
figures from the first steps. Profiles are the base model's family's (`engine.devices.profiles_for`).

`estimate` turns a `TrainingConfig` and a `DeviceInfo` into an `Estimate` with warnings (will not
fit, near full on a GPU that spills into shared system memory) and a suggested profile; `refine`
corrects it with the step times and peak measured during the run, `remaining_seconds` turns it into
the time left at the measured wall rate (`wall_step_seconds`: previews and checkpoints included),
and `step_time_jump` spots the sudden slowdown of a spill.

One module a job: `table` (the figures table), `build` (`python -m engine.preflight build`: the table from bench results), `arithmetic` (SDXL's estimated
rows), `device` (the device, the model's family and size), `forecast` (the estimate before the run),
`running` (during the run), `report` (the estimate in words), `licences` (the assets a run requests).
"""

from engine.preflight.build import build_table
from engine.preflight.device import (
    DeviceInfo,
    auto_profile,
    detect_device,
    model_family,
    model_size,
    spill_possible,
)
from engine.preflight.forecast import CUDA_OVERHEAD_BYTES, NEAR_FULL, Estimate, estimate
from engine.preflight.licences import assets_in_use
from engine.preflight.report import duration, gb, summary
from engine.preflight.running import (
    jump_warning,
    measured_peak,
    refine,
    remaining_seconds,
    step_seconds,
    step_time_jump,
    wall_step_seconds,
)
from engine.preflight.table import (
    GB,
    TABLE_FILE,
    Figures,
    PreflightError,
    load_table,
    rows_from_results,
)

__all__ = [
    "CUDA_OVERHEAD_BYTES",
    "GB",
    "NEAR_FULL",
    "TABLE_FILE",
    "DeviceInfo",
    "Estimate",
    "Figures",
    "PreflightError",
    "assets_in_use",
    "auto_profile",
    "build_table",
    "detect_device",
    "duration",
    "estimate",
    "gb",
    "jump_warning",
    "load_table",
    "measured_peak",
    "model_family",
    "model_size",
    "refine",
    "remaining_seconds",
    "rows_from_results",
    "spill_possible",
    "step_seconds",
    "step_time_jump",
    "summary",
    "wall_step_seconds",
]
