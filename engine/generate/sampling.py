"""Sampling images from a run's artefact and recording them as outputs, with progress events."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.events import Event, Finished, ImageStarted, PhaseStarted, Status, StepDone
from engine.export import export_names
from engine.generate.loading import fuse, loaded
from engine.generate.prompts import compose_prompt, fit_prompt
from engine.generate.settings import GenerationSettings
from engine.identity import identity_score, shared_face_kit, source_embedding
from engine.outputs import OUTPUTS, OutputRecord, add_output, format_parameters, model_name, new_output_id
from engine.runs import resolve_artefact
from engine.store import Project, now

if TYPE_CHECKING:
    from engine.faces import FaceKit
    from engine.models import BaseModel


def sample_image(
    pipe: Any,
    prompt: str,
    settings: GenerationSettings,
    seed: int,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray | None:
    """One image as RGB ``uint8``, or None if cancelled before the last step; ``progress`` gets each step done."""
    import torch

    def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if progress is not None:
            progress(step + 1)
        if cancel is not None and cancel.is_set():
            pipeline._interrupt = True
        return tensors

    result = pipe(
        prompt=prompt,
        negative_prompt=settings.negative_prompt or None,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        width=settings.width,
        height=settings.height,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        callback_on_step_end=on_step,
    )
    if cancel is not None and cancel.is_set():
        return None
    return (np.clip(result.images[0], 0.0, 1.0) * 255).round().astype(np.uint8)


def generate(
    project: Project,
    run: str | Path | None = None,
    settings: GenerationSettings | None = None,
    *,
    base: BaseModel | None = None,
    face_kit: FaceKit | None = None,
    commercial: bool = False,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[OutputRecord]:
    """Sample ``settings.count`` images from a run's artefact (or the latest finished run) and record them.

    ``base`` defaults to the base model recorded in the artefact (loaded once and kept); ``face_kit``
    (for identity scores) to `engine.identity.shared_face_kit` (``commercial`` picks the commercially usable models).
    Progress comes as `Status` events while loading, then `PhaseStarted` and `StepDone` events (phase
    0: the whole batch, one step per denoising step) with an `ImageStarted` before each image's steps;
    when ``cancel`` is set the batch stops and the images finished so far are returned.
    """
    from engine.artefact import load_artefact
    from engine.models import make_pipeline

    settings = settings or GenerationSettings()
    emit = on_event or (lambda event: None)
    started = time.monotonic()
    path, run_id = resolve_artefact(project, run)
    artefact = load_artefact(path)
    tokens = artefact.placeholder_tokens()
    if face_kit is None:
        emit(Status(message="Loading the face models…"))
        face_kit = shared_face_kit(commercial)
    emit(Status(message="Reading the selfies' identity…"))
    reference = source_embedding(project, face_kit)
    records: list[OutputRecord] = []
    with loaded(artefact, base, lambda message: emit(Status(message=message))) as (model, installed):
        emit(Status(message=f"Preparing the sampler with run {run_id or path.name}…"))
        pipe = make_pipeline(model, settings.sampler)
        pipe.set_progress_bar_config(disable=True)
        fuse(pipe, installed, settings.unet_lora_scale, settings.text_lora_scale)
        prompt, prompt_warning = fit_prompt(model.tokenizer, compose_prompt(tokens, settings.prompt_extra))
        negative, negative_warning = fit_prompt(model.tokenizer, settings.negative_prompt, "negative prompt")
        warnings = [w for w in (prompt_warning, negative_warning) if w]
        for warning in warnings:
            emit(Status(message=warning))
        side = artefact.metadata.get("resolution")  # the trained size, unless the settings give one
        sampled = dataclasses.replace(
            settings,
            negative_prompt=negative,
            width=settings.width or side,
            height=settings.height or side,
        )
        total = settings.count * settings.steps
        emit(PhaseStarted(phase=0, steps=total, description=f"Generating {settings.count} image(s)"))
        sampling = time.monotonic()
        for index in range(settings.count):
            seed = settings.seed + index
            emit(ImageStarted(index=index + 1, count=settings.count, steps=settings.steps, seed=seed))
            progress = _batch_progress(emit, sampling, index * settings.steps, total)
            image = sample_image(pipe, prompt, sampled, seed, progress, cancel)
            if image is None:
                emit(Status(message=f"Cancelled after {len(records)} of {settings.count} images."))
                break
            params = {
                "prompt": prompt, "prompt_extra": settings.prompt_extra, "negative_prompt": negative,
                "seed": seed, "sampler": settings.sampler, "steps": settings.steps,
                "guidance_scale": settings.guidance_scale, "unet_lora_scale": settings.unet_lora_scale,
                "text_lora_scale": settings.text_lora_scale, "width": int(image.shape[1]), "height": int(image.shape[0]),
                "base_model": model.source, "model": model_name(model.source), "artefact": _relative(project, path),
            }  # fmt: skip
            output_id = new_output_id(seed)
            record = OutputRecord(
                id=output_id, file=f"{OUTPUTS}/{output_id}.png", seed=seed, params=params, run=run_id,
                identity=identity_score(face_kit, image, reference), created=now(), warnings=list(warnings),
            )  # fmt: skip
            extras = {"MagiCapture run": run_id} if run_id else {}
            parameters = format_parameters(params, extras, export_names(project, artefact))
            records.append(add_output(project, image, record, parameters))
    emit(Finished(artefact=str(path), seconds=round(time.monotonic() - started, 2)))
    return records


def _batch_progress(
    emit: Callable[[Event], None], started: float, before: int, total: int
) -> Callable[[int], None]:
    """A sampler callback emitting `StepDone` over the whole batch (``before`` steps done by earlier images)."""

    def progress(step: int) -> None:
        done = before + step
        elapsed = max(time.monotonic() - started, 1e-9)
        emit(StepDone(
            phase=0, step=done, phase_steps=total, global_step=done, total_steps=total,
            losses={}, lr=0.0, it_per_s=done / elapsed, eta_s=elapsed / done * (total - done),
        ))  # fmt: skip

    return progress


def _relative(project: Project, path: Path) -> str:
    with contextlib.suppress(ValueError):
        return Path(path).resolve().relative_to(project.root.resolve()).as_posix()
    return str(path)
