"""How much each benchmark measures, per model size and device (recorded in the results)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = ("phase2_memory", "phase2_speed", "generate", "intake", "studio", "ar_ablation")
RESULTS = Path(__file__).resolve().parent / "results.json"

ALL_PROFILES = ("cpu", "6gb", "8gb", "12gb", "24gb")
SDXL_PROFILES = ("cpu", "12gb", "16gb", "24gb")
"""`engine.devices.SDXL_PROFILES` and the CPU's."""
OPTION_KINDS = ("full_no_reuse_pass", "full_no_face_window", "full_no_speed_options")
"""Full steps with speed options off, timed beside the plain and full steps."""


@dataclass(frozen=True)
class Sizes:
    model: str
    resolution: int
    warmup_steps: int
    """Untimed full steps before the timed ones."""
    timed_steps: int
    """Timed plain and full steps (interleaved)."""
    option_kinds: tuple[str, ...]
    option_steps: int
    """Timed steps of each option kind, interleaved with the first plain and full ones."""
    memory_profiles: tuple[str, ...]
    memory_steps: int
    memory_parallel: int
    """Memory workers running at once (their timings are not used)."""
    generate_steps: int
    generate_resolution: int
    generate_runs: int
    """Timed generations of each side, after one warm-up each."""
    intake_runs: int
    studio_requests: int
    training_steps: int
    """Steps per phase of the demo training that runs under the studio latency benchmark."""
    time_basis: str = "wall"
    """What the speed ratio divides: "wall" seconds, or the process's "cpu" seconds with one torch
    thread (a CPU shared with other work: the step's own cost, not the machine's load)."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def sizes_for(model: str, quick: bool, gpu: bool) -> Sizes:
    """Sizes that keep ``python -m bench`` near 20 minutes on a 2-core CPU (SD 1.5) or a minute (``--quick``).

    SD 1.5 on a CPU measures every VRAM profile's memory (each in fp32; a profile's fp16 needs a GPU).
    The tiny SDXL measures the phase-2 speed and every SDXL profile's memory (a few minutes); the
    SDXL-shaped model at 512 px on a CPU the same with fewer steps and the CPU and 12 GB profiles
    (each memory worker loads 14 GB; about 20 minutes).
    """
    from bench.workbench import RESOLUTIONS, SDXL_MODELS

    common = {"model": model, "resolution": RESOLUTIONS[model], "training_steps": 400}
    if model == "sdxl-512" and not gpu:
        return Sizes(
            **common, warmup_steps=1, timed_steps=2, option_kinds=(), option_steps=0,
            memory_profiles=("cpu", "12gb"), memory_steps=1, memory_parallel=1,
            generate_steps=0, generate_resolution=0, generate_runs=0, intake_runs=0, studio_requests=0,
            time_basis="cpu",
        )  # fmt: skip
    if model in SDXL_MODELS:  # phase-2 speed and memory only
        return Sizes(
            **common, warmup_steps=2, timed_steps=7, option_kinds=OPTION_KINDS, option_steps=3,
            memory_profiles=SDXL_PROFILES, memory_steps=2, memory_parallel=1,
            generate_steps=0, generate_resolution=0, generate_runs=0, intake_runs=0, studio_requests=0,
            time_basis="wall" if gpu else "cpu",
        )  # fmt: skip
    if gpu:
        return Sizes(
            **common, warmup_steps=3, timed_steps=10, option_kinds=OPTION_KINDS, option_steps=10,
            memory_profiles=ALL_PROFILES, memory_steps=2, memory_parallel=1,
            generate_steps=25, generate_resolution=RESOLUTIONS[model], generate_runs=3,
            intake_runs=5, studio_requests=60,
        )  # fmt: skip
    if model == "sd15":
        return Sizes(
            **common, warmup_steps=1, timed_steps=3, option_kinds=OPTION_KINDS, option_steps=1,
            memory_profiles=ALL_PROFILES, memory_steps=1, memory_parallel=1,
            generate_steps=3, generate_resolution=256, generate_runs=2,
            intake_runs=3, studio_requests=40,
        )  # fmt: skip
    if quick:
        return Sizes(
            **common, warmup_steps=1, timed_steps=3, option_kinds=OPTION_KINDS, option_steps=3,
            memory_profiles=("cpu",), memory_steps=2, memory_parallel=2,
            generate_steps=4, generate_resolution=64, generate_runs=2,
            intake_runs=2, studio_requests=20,
        )  # fmt: skip
    return Sizes(
        **common, warmup_steps=2, timed_steps=10, option_kinds=OPTION_KINDS, option_steps=10,
        memory_profiles=ALL_PROFILES, memory_steps=2, memory_parallel=2,
        generate_steps=25, generate_resolution=64, generate_runs=5,
        intake_runs=5, studio_requests=60,
    )  # fmt: skip
