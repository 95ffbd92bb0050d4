"""Benchmark 3: our `engine.generate.generate` call divided by a bare diffusers pipeline call.

Ours: one image from the benchmark run's artefact through the app's path (kept base model with
the artefact's LoRA and embeddings installed, Euler a, the training wording plus the default
negative prompt, identity score, PNG with its parameters, manifest entry). Baseline: a bare
`StableDiffusionPipeline` loaded from the same folder, with the same scheduler, prompt, negative
prompt, size, steps, guidance and seed. One warm-up call each (ours loads and installs the
artefact in it), then the timed calls interleaved; each side's figure is its median.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.settings import Sizes
    from bench.workbench import Workbench

GOAL = 1.05


def bare_pipeline(bench: Workbench):
    """``StableDiffusionPipeline.from_pretrained`` of the base folder with Euler a, on the app's device and dtype."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    from engine.devices import pick_device, pick_dtype

    device = pick_device()
    pipe = StableDiffusionPipeline.from_pretrained(
        bench.base, torch_dtype=pick_dtype(device), safety_checker=None, requires_safety_checker=False,
        local_files_only=True,
    )  # fmt: skip
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def run(bench: Workbench, sizes: Sizes, artefact: Path, command: str) -> dict[str, Any]:
    """Benchmark entry: median seconds of our call (with ``artefact``) and of the bare call, and their ratio."""
    import torch

    from bench.steps import synchronise
    from engine.faces import load_face_kit
    from engine.generate import GenerationSettings, generate
    from engine.model_cache import release_models

    project = bench.project()
    kit = load_face_kit()
    settings = GenerationSettings(
        seed=0,
        count=1,
        steps=sizes.generate_steps,
        width=sizes.generate_resolution,
        height=sizes.generate_resolution,
    )
    pipe = bare_pipeline(bench)
    device = pipe.device
    params: dict[str, Any] = {}

    def ours() -> None:
        records = generate(project, artefact, settings, face_kit=kit)
        params.update(records[0].params)

    def bare() -> None:
        pipe(
            params["prompt"], negative_prompt=params["negative_prompt"], num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale, width=settings.width, height=settings.height,
            generator=torch.Generator("cpu").manual_seed(settings.seed),
        )  # fmt: skip

    def timed(call) -> float:
        synchronise(device)
        began = time.perf_counter()
        call()
        synchronise(device)
        return time.perf_counter() - began

    try:
        first = timed(ours)
        timed(bare)
        seconds: dict[str, list[float]] = {"ours": [], "bare": []}
        for _ in range(sizes.generate_runs):
            seconds["ours"].append(timed(ours))
            seconds["bare"].append(timed(bare))
    finally:
        release_models()
    median = {side: statistics.median(values) for side, values in seconds.items()}
    ratio = round(median["ours"] / median["bare"], 3)
    return {
        "what": "engine.generate.generate: one image from the trained artefact (LoRA unet 0.6 / text 0.9), saved and scored",
        "baseline": "bare diffusers StableDiffusionPipeline call: same scheduler (Euler a), prompt, steps, size, guidance, seed",
        "ratio": ratio,
        "goal": f"<= {GOAL}",
        "meets_goal": ratio <= GOAL,
        "median_seconds": {side: round(value, 4) for side, value in median.items()},
        "seconds": {side: [round(v, 4) for v in values] for side, values in seconds.items()},
        "first_call_seconds": round(first, 3),
        "first_call": "ours, including loading the base model and installing the artefact",
        "steps": settings.steps,
        "size": [settings.width, settings.height],
        "guidance_scale": settings.guidance_scale,
        "device": str(device),
        "dtype": str(pipe.unet.dtype),
        "command": command,
    }
