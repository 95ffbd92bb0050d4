"""Benchmark 1: phase-2 step time of the full objective divided by a plain DreamBooth-LoRA step.

All step kinds run on one trainer in this process, on the same composed sample with the same
seeds. Warm-up full steps come first (they run every layer the plain step runs, and more); then
the timed steps, interleaved across kinds so that a slow spell of the machine touches every kind
alike: each round times a plain step, a full step, a full step on samples drawn by the run's task
mix (``mix``: what a training run's step costs, the figure the pre-flight estimate uses), a full
step whose identity branch the VAE decodes (``full_vae_decoder``; the others use the default
decoder, TAESD) and (in the first ``option_steps`` rounds) one VAE full step with each speed option
off. Each kind's figure is its
median. The process's CPU seconds of each step are recorded beside its wall seconds
(``cpu_ratios``): on a CPU shared with other work they measure the step, not the machine's load.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.settings import Sizes
    from engine.training import Trainer

GOAL = 1.3
WARMUP_SEED = 1_000
DESCRIPTIONS = {
    "full": "the defaults: identity_decoder=tiny (TAESD decodes the face window), speed options on",
    "full_vae_decoder": "speed options on, identity_decoder=vae: the VAE decodes the face window (METHOD.md)",
    "full_no_reuse_pass": "identity_decoder=vae, identity_reuse_pass off: the identity branch gets its own UNet rows",
    "full_no_face_window": "identity_decoder=vae, identity_face_window off: the VAE decodes the whole latent",
    "full_no_speed_options": "identity_decoder=vae, both speed options off",
    "mix": "speed options on, samples drawn as a run draws them (task mix source:reference:composed)",
}
EVERY_ROUND = ("plain", "full", "mix", "full_vae_decoder")


def run(trainer: Trainer, sizes: Sizes, command: str) -> dict[str, Any]:
    """Benchmark entry: median step seconds per kind and each full kind's ratio to the plain step."""
    from bench.steps import KINDS, step_function, timed_both

    options = trainer.options
    # The run's identity decoder: each family's TAESD by default (the VAE where a family has none,
    # and then the full step is the VAE one).
    default_decoder = trainer.config.identity_decoder
    names = [
        n for n in (*EVERY_ROUND, *sizes.option_kinds) if default_decoder == "tiny" or n != "full_vae_decoder"
    ]
    steps = {name: step_function(trainer, KINDS[name]) for name in names}
    device = trainer.device
    for index in range(sizes.warmup_steps):  # the full step runs all the plain step runs, and more
        steps["full"](WARMUP_SEED + index)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for seed in range(max(sizes.timed_steps, sizes.option_steps)):
        for name, step in steps.items():
            if seed < (sizes.timed_steps if name in EVERY_ROUND else sizes.option_steps):
                wall, used = timed_both(step, seed, device)
                seconds[name].append(wall)
                cpu[name].append(used)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    wall_ratios = {name: round(v / median["plain"], 3) for name, v in median.items() if name != "plain"}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    cpu_ratios = {
        name: round(v / cpu_median["plain"], 3) for name, v in cpu_median.items() if name != "plain"
    }
    ratios = cpu_ratios if sizes.time_basis == "cpu" else wall_ratios
    return {
        "what": "one phase-2 optimiser step of the full objective (reconstruction + composed + identity + AR)",
        "baseline": "one plain DreamBooth-LoRA step: noise, UNet (SDPA everywhere), MSE; same LoRA, resolution, optimiser",
        "ratio": ratios["full"],
        "goal": f"<= {GOAL}",
        "meets_goal": ratios["full"] <= GOAL,
        "ratios": ratios,
        "median_seconds": {name: round(value, 4) for name, value in median.items()},
        "seconds": {name: [round(v, 4) for v in values] for name, values in seconds.items()},
        "ratio_basis": sizes.time_basis,
        "wall_ratios": wall_ratios,
        "cpu_ratios": cpu_ratios,
        "cpu_median_seconds": {name: round(value, 4) for name, value in cpu_median.items()},
        "cpu_seconds": {name: [round(v, 4) for v in values] for name, values in cpu.items()},
        "kinds": {name: DESCRIPTIONS[name] for name in ratios},
        "default_decoder": default_decoder,
        "profile": options.profile,
        "options": {
            "mixed_precision": options.mixed_precision,
            "use_8bit_adam": options.use_8bit_adam,
            "gradient_checkpointing": options.gradient_checkpointing,
            "train_text_encoder": options.train_text_encoder,
        },
        "sample": "one composed sample per step (batch 1): every loss term is active; mix: drawn samples",
        "command": command,
    }
