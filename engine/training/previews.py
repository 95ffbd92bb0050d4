"""Previews during training and the checkpoints they keep; choosing one as the run's artefact.

Each preview is scored for identity (ArcFace cosine to the source photos, as generation scores its
outputs; a preview in which the detector finds no face is scored at the mean face position of the
source crops, as the identity loss falls back to the known face box) and its weights are kept in
``checkpoints/preview-N/``, which checkpoint rotation never deletes: `best_preview` finds the most
faithful one, `use_preview` makes it the run's artefact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from engine import checkpoint as ckpt
from engine.data import composed_prompt
from engine.events import PreviewSaved
from engine.identity import identity_score
from engine.runs import RUNS, get_run, update_run
from engine.store import Project, atomic_path, now
from engine.training.errors import TrainingError
from engine.training.state import run_lock
from engine.training.weights import PREVIEW_WEIGHTS, save_weights

if TYPE_CHECKING:
    from engine.training.loop import Trainer


class PreviewCheckpoint(NamedTuple):
    """A kept preview checkpoint of a run."""

    step: int
    """Global step of the preview."""
    identity_mean: float | None
    """Mean identity score of its preview images; None when no face was scored."""
    path: Path
    """The checkpoint folder: weights in ``PREVIEW_WEIGHTS``, scores in ``state.json``."""


def preview_checkpoints(project: Project, run: str) -> list[PreviewCheckpoint]:
    """The preview checkpoints of ``run``, oldest first."""
    found = []
    for path in ckpt.checkpoints(project.path(RUNS, run, "checkpoints"), ckpt.PREVIEW):
        state = ckpt.read_json(path / ckpt.STATE)
        found.append(PreviewCheckpoint(int(state["global_step"]), state.get("identity_mean"), path))
    return found


def best_preview(project: Project, run: str) -> PreviewCheckpoint | None:
    """The preview checkpoint with the highest mean identity (the later on a tie); None if none was scored."""
    scored = [p for p in preview_checkpoints(project, run) if p.identity_mean is not None]
    return max(reversed(scored), key=lambda p: p.identity_mean, default=None)


def artefact_from_preview(project: Project, run: str, step: int) -> Path:
    """Write the weights of preview ``step`` as ``trainings/<run>/artefact-step-<step>.safetensors``.

    Same format as ``final.safetensors``; the metadata adds ``step``, ``phase``, ``identity_mean``
    and the ``checkpoint`` it came from.
    """
    from engine.artefact import load_artefact, save_artefact

    kept = {p.step: p for p in preview_checkpoints(project, run)}
    if step not in kept:
        steps = ", ".join(str(s) for s in kept) or "none"
        raise TrainingError(
            f"Training {run} has no preview checkpoint at step {step} (kept steps: {steps}); choose one of those."
        )
    weights = load_artefact(kept[step].path / PREVIEW_WEIGHTS)
    metadata = {
        **weights.metadata,
        "checkpoint": kept[step].path.relative_to(project.root).as_posix(),
        "created": now(),
    }
    path = project.path(RUNS, run, f"artefact-step-{step}.safetensors")
    return save_artefact(
        path,
        weights.unet_lora,
        weights.text_lora,
        weights.embeddings,
        metadata,
        text_lora_2=weights.text_lora_2,
        embeddings_2=weights.embeddings_2,
    )


def use_preview(project: Project, run: str, step: int | None) -> Path:
    """Make the artefact of preview ``step`` (None: the final one again) the artefact of ``run``.

    The run's manifest entry then has ``artefact`` (what generation, evaluation and export read)
    pointing at it, ``final_artefact`` (the final one, None if the run has not finished) and
    ``artefact_step`` (the chosen step, None for the final artefact). Refused while the run trains.
    """
    from filelock import Timeout

    if get_run(project, run) is None:
        raise TrainingError(f"Project {project.name!r} has no training run {run!r}.")
    lock = run_lock(project, run)
    try:
        lock.acquire()
    except Timeout as error:
        raise TrainingError(
            f"Training {run} is running; choose its checkpoint once it has finished or been cancelled."
        ) from error
    try:
        final = get_run(project, run).final_artefact
        if step is not None:
            path = artefact_from_preview(project, run, step)
        elif final is None:
            raise TrainingError(
                f"Training {run} has not finished, so it has no final artefact; choose one of its preview checkpoints."
            )
        else:
            path = project.path(final)

        # "updated" stays: choosing a checkpoint does not make a run the newest.
        artefact = path.relative_to(project.root).as_posix()
        update_run(project, run, touch=False, artefact=artefact, final_artefact=final, artefact_step=step)
        return path
    finally:
        lock.release()


@contextlib.contextmanager
def lora_scales(trainer: Trainer, unet: float, text: float) -> Iterator[None]:
    """The live LoRA layers at generation's strengths (UNet, text encoders) while the block runs, then reset."""
    from peft.tuners.lora import LoraLayer

    base = trainer.base
    scaled = [
        (layer, scale)
        for name, scale in (("unet", unet), *((encoder, text) for encoder in base.family.text_encoders))
        for layer in getattr(base, name).modules()
        if isinstance(layer, LoraLayer)
    ]
    for layer, scale in scaled:
        layer.scale_layer(scale)
    try:
        yield
    finally:
        for layer, _ in scaled:
            layer.unscale_layer()  # back to exactly alpha / rank: training goes on unchanged


@torch.no_grad()
def preview(trainer: Trainer, phase: int, global_step: int) -> None:
    """Composed-prompt samples at fixed seeds plus attention overlays of both tokens (main process).

    They are sampled as generation samples by default (its LoRA strengths and negative prompt), so
    that the preview scores, and the checkpoint chosen by them, judge what generation will give.
    """
    if not trainer.accelerator.is_main_process:
        return
    from engine.generate import GenerationSettings
    from engine.models import make_pipeline

    settings = GenerationSettings()

    config, device, store = trainer.config, trainer.device, trainer.store
    prompt = composed_prompt(config.identity_token, config.style_token)
    seeds = list(config.preview_seeds)
    pipe = make_pipeline(trainer.base, "euler_a")
    pipe.set_progress_bar_config(disable=True)
    devices = [device] if device.type == "cuda" else []
    with (
        torch.random.fork_rng(devices=devices),
        trainer.accelerator.autocast(),
        lora_scales(trainer, settings.unet_lora_scale, settings.text_lora_scale),
    ):
        store.start(accumulate=True)
        try:
            images = pipe(
                [prompt] * len(seeds),
                negative_prompt=[settings.negative_prompt] * len(seeds),
                height=config.resolution,
                width=config.resolution,
                num_inference_steps=config.preview_steps,
                guidance_scale=config.preview_guidance,
                generator=[torch.Generator(device).manual_seed(s) for s in seeds],
                output_type="np",
            ).images
        finally:
            store.stop()
    tokenizer = trainer.base.tokenizer
    ids = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids[0]
    rows = torch.arange(len(seeds)) + (len(seeds) if config.preview_guidance > 1 else 0)
    folder = trainer.folder / "previews" / f"step-{global_step:06d}"
    overlays = {}
    for label, token in (("identity", config.identity_token), ("style", config.style_token)):
        position = int((ids == trainer.data.token_ids[token]).nonzero()[0, 0])
        maps = store.token_maps(torch.full((len(seeds),), position), rows).mean(dim=1)
        overlays[token] = [
            _save_png(folder / f"seed-{s}-{label}.png", _overlay(img, m))
            for s, img, m in zip(seeds, images, maps, strict=True)
        ]
    pixels = [(img * 255).round().astype("uint8") for img in images]
    paths = [_save_png(folder / f"seed-{s}.png", p) for s, p in zip(seeds, pixels, strict=True)]
    identity, framed = _scores(trainer, pixels)
    scored = [score for score in identity if score is not None]
    mean = round(sum(scored) / len(scored), 4) if scored else None
    checkpoint = save_preview(trainer, phase, global_step, identity, mean)
    trainer.emit(
        PreviewSaved(
            phase=phase,
            global_step=global_step,
            prompt=prompt,
            images=paths,
            attention_maps=overlays,
            identity=identity,
            identity_framed=framed,
            identity_mean=mean,
            checkpoint=str(checkpoint),
        )
    )


def _scores(trainer: Trainer, pixels: list) -> tuple[list[float | None], list[bool]]:
    """Identity score of each preview, and whether it was scored at the source framing (no face detected)."""
    detected = [identity_score(trainer.face_kit, p, trainer.reference) for p in pixels]
    framed = [score is None and trainer.framing is not None for score in detected]
    identity = [
        identity_score(trainer.face_kit, p, trainer.reference, trainer.framing) if frame else score
        for p, score, frame in zip(pixels, detected, framed, strict=True)
    ]
    return identity, framed


def save_preview(
    trainer: Trainer, phase: int, global_step: int, identity: list[float | None], mean: float | None
) -> Path:
    """Keep the current weights and the preview's scores as ``checkpoints/preview-<step>/`` (never rotated)."""
    folder = trainer.folder / "checkpoints"
    staged = ckpt.staging(folder, global_step, ckpt.PREVIEW)
    try:
        with ckpt.disk_guard(folder):
            save_weights(
                trainer,
                staged / PREVIEW_WEIGHTS,
                phase == 2,
                step=global_step,
                phase=phase,
                identity_mean=mean,
            )
        state = {
            "phase": phase,
            "global_step": global_step,
            "run": trainer.run_id,
            "identity": identity,
            "identity_mean": mean,
            "saved": now(),
        }
        ckpt.seal(staged, state, folder)
        return ckpt.commit(staged, global_step, None, ckpt.PREVIEW)
    except BaseException:
        ckpt.discard(staged)
        raise


def _overlay(image, heat: torch.Tensor):
    """RGB ``uint8``: the image blended with a jet-coloured, min-max normalised attention map."""
    import numpy as np
    import torch.nn.functional as F

    size = image.shape[:2]
    heat = F.interpolate(heat[None, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[
        0, 0
    ]
    heat = ((heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-8)).numpy()
    colour = np.stack([np.clip(1.5 - np.abs(4 * heat - c), 0, 1) for c in (3, 2, 1)], axis=-1)
    return (255 * (0.5 * image + 0.5 * colour)).round().astype("uint8")


def _save_png(path: Path, pixels) -> str:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return str(path)
