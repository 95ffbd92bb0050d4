"""One phase-2 step of the real trainer, and the plain DreamBooth-LoRA step it is compared with.

Both steps run on one trainer from `engine.training.phase_two_trainer` (phase 2 set up: LoRA on
the UNet and, per profile, the text encoder, plus the two embeddings; same optimiser), on the same
sample (a composed one: every term of the objective is active), at the same resolution:

- ``full``: the trainer's `engine.training.Objective` (masked reconstruction, Attention
  Refocusing from the captured maps, identity loss on the decoded one-step estimate), backward,
  clipping, optimiser step.
- ``plain``: noise, text encoder and UNet with SDPA in every layer, MSE against the noise,
  backward, clipping, optimiser step; no capture, no decode, no recogniser.
- ``mix``: the full step on samples drawn as a training run draws them (the task mix of source,
  reference and composed samples; a reference sample takes no identity loss), so its median is
  what a run's phase-2 step costs.

The two speed options of the training issue (``identity_reuse_pass`` and
``identity_face_window``) and the identity decoder (``identity_decoder``: the VAE, or TAESD) are
read by the objective on every step, so each full kind steps with a copy of the trainer's objective
that has them set (`dataclasses.replace`), on the same models, optimiser and generator.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine.config import TrainingConfig

if TYPE_CHECKING:
    from bench.workbench import Workbench
    from engine.training import Trainer
    from engine.training.options import Options

DEFAULT_DECODER = TrainingConfig().identity_decoder
"""The identity decoder a run uses unless told otherwise: the ``full`` and ``mix`` steps use it."""
PHASE2_STEPS = 100
"""Length of the phase the steps pretend to be in (only sets the learning-rate schedule)."""


@dataclass(frozen=True)
class StepKind:
    """A step to measure: ``plain`` or ``full`` with the two speed options set."""

    name: str
    full: bool
    identity_reuse_pass: bool = True
    identity_face_window: bool = True
    identity_decoder: str = DEFAULT_DECODER
    drawn: bool = False
    """Samples drawn by the run's task mix instead of the one composed sample."""


KINDS = {
    "plain": StepKind("plain", full=False),
    "full": StepKind("full", full=True),
    "full_vae_decoder": StepKind("full_vae_decoder", True, identity_decoder="vae"),
    # The speed options matter where the VAE decodes: measured there.
    "full_no_reuse_pass": StepKind(
        "full_no_reuse_pass", True, identity_reuse_pass=False, identity_decoder="vae"
    ),
    "full_no_face_window": StepKind(
        "full_no_face_window", True, identity_face_window=False, identity_decoder="vae"
    ),
    "full_no_speed_options": StepKind("full_no_speed_options", True, False, False, identity_decoder="vae"),
    "mix": StepKind("mix", full=True, drawn=True),
}


def make_trainer(bench: Workbench, profile: str = "auto", identity: bool = True) -> Trainer:
    """A trainer on the benchmark project with phase 2 set up (the released preset, ``profile``'s memory options).

    Without ``identity`` the face models are not loaded (a plain DreamBooth-LoRA process has none);
    with it the default decoder (TAESD) is loaded, and the VAE is there for the kinds that use it.
    """
    from engine.config import preset
    from engine.faces import load_face_kit
    from engine.training import phase_two_trainer

    config = preset(
        "released", base_model=str(bench.base), resolution=bench.resolution, phase1_steps=0,
        phase2_steps=PHASE2_STEPS, latent_cache_variants=1, preview_every=0, vram_profile=profile,
        tiny_decoder_model=str(bench.tiny_decoder),
        # Random weights draw no face the detector finds: the known landmarks stand in, so the
        # identity branch runs on every step, as it does where a real model draws faces.
        **({"identity_fallback_landmarks": True} if identity else {"identity_weight": 0.0}),
    )  # fmt: skip
    return phase_two_trainer(
        bench.project(), config, face_kit=load_face_kit() if identity else None, run="bench"
    )


def options_record(options: Options) -> dict[str, str | bool]:
    """The memory and speed options a step ran with, as the results files record them."""
    names = ("mixed_precision", "use_8bit_adam", "gradient_checkpointing", "vae_slicing", "train_text_encoder",
             "identity_face_window", "identity_reuse_pass")  # fmt: skip
    return {name: getattr(options, name) for name in names}


def composed_sample(trainer: Trainer):
    """The composed sample (a reference photo under the first composed template, first cached view)."""
    from engine.data import Sample

    return Sample("composed", trainer.data.by_role["reference"][0], 0, 0)


def step_function(
    trainer: Trainer, kind: StepKind, optimiser: Callable[[Trainer, torch.Tensor], Any] | None = None
) -> Callable[[int], Any]:
    """A function running one optimiser step of ``kind``; its argument seeds the noise, timesteps and draws.

    The plain step runs with SDPA in every attention layer (no capture), the full step with the
    trainer's processors (capture on the AR layers). ``optimiser`` (default `optimise`) takes the
    loss through backward and the optimiser step; the function returns what it returns
    (`checked_optimise`: the step's `StepHealth`).
    """
    from diffusers.models.attention_processor import AttnProcessor2_0

    from engine.attention import install_capture

    optimiser = optimiser or optimise

    options = dataclasses.replace(
        trainer.options,
        identity_reuse_pass=kind.identity_reuse_pass,
        identity_face_window=kind.identity_face_window,
    )
    # A family without TAESD (none today) would decode with the VAE in every kind, as its runs do.
    decoder = kind.identity_decoder if trainer.base.family.tiny_decoder else "vae"
    config = dataclasses.replace(trainer.config, identity_decoder=decoder)
    objective = dataclasses.replace(trainer.objective, options=options, config=config)
    samples = [composed_sample(trainer)]

    def run(seed: int) -> None:
        trainer.generator.manual_seed(seed)
        if kind.full:
            if kind.drawn:
                rng = random.Random(seed)
                samples[:] = [trainer.data.draw(rng, 2) for _ in range(config.train_batch_size)]
            return optimiser(trainer, objective(2, 0, PHASE2_STEPS, samples)["total"])
        unet = trainer.base.unet
        unet.set_attn_processor(AttnProcessor2_0())
        try:  # the backward recomputes checkpointed blocks: they must see the same processors
            return optimiser(trainer, plain_loss(trainer, samples))
        finally:
            install_capture(unet, trainer.store)

    return run


def plain_loss(trainer: Trainer, samples: list) -> torch.Tensor:
    """DreamBooth-LoRA's loss: MSE between the UNet's noise prediction and the noise."""
    base, gen, device = trainer.base, trainer.generator, trainer.device
    batch = trainer.data.batch(samples, base.vae.config.scaling_factor, (), gen)
    noise = torch.randn(batch.latents.shape, generator=gen, device=device)
    high = base.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, high, (len(samples),), generator=gen, device=device)
    noisy = base.noise_scheduler.add_noise(batch.latents, noise, timesteps)
    eps = trainer.model(batch.input_ids, noisy, timesteps)
    return torch.nn.functional.mse_loss(eps.float(), noise.float())


def optimise(trainer: Trainer, loss: torch.Tensor) -> None:
    """Backward, clipping and the optimiser step, as `Trainer.optimisation_step` does them."""
    accelerator = trainer.accelerator
    accelerator.backward(loss)
    if trainer.config.max_grad_norm > 0:
        accelerator.clip_grad_norm_(trainer.trainable, trainer.config.max_grad_norm)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)


@dataclass(frozen=True)
class StepHealth:
    """What one optimiser step did with its numbers (`checked_optimise`)."""

    loss: float
    loss_finite: bool
    nonfinite_grads: int
    """Gradient values of the trainable parameters that are NaN or inf after backward (before clipping)."""
    skipped: bool
    """The gradient scaler skipped the optimiser step (fp16: inf or NaN in the scaled gradients)."""
    loss_scale: float | None
    """The gradient scaler's scale after the step; None without a scaler (fp32, bf16)."""


def checked_optimise(trainer: Trainer, loss: torch.Tensor) -> StepHealth:
    """`optimise` that also reports the step's `StepHealth`, as `Trainer.optimisation_step` steps.

    Unlike `optimise` (the other benchmarks' step, unchanged), the learning-rate schedule steps only
    when the optimiser did (``accelerator.optimizer_step_was_skipped``), as a training run does.
    """
    accelerator = trainer.accelerator
    value = loss.detach().float()
    accelerator.backward(loss)
    grads = [p.grad for p in trainer.trainable if p.grad is not None]
    nonfinite = torch.stack([(~torch.isfinite(g)).sum() for g in grads]).sum() if grads else torch.tensor(0)
    if trainer.config.max_grad_norm > 0:
        accelerator.clip_grad_norm_(trainer.trainable, trainer.config.max_grad_norm)
    trainer.optimizer.step()
    skipped = bool(accelerator.optimizer_step_was_skipped)
    if not skipped:
        trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    scaler = getattr(accelerator, "scaler", None)
    return StepHealth(
        loss=float(value.item()),
        loss_finite=bool(torch.isfinite(value).item()),
        nonfinite_grads=int(nonfinite.item()),
        skipped=skipped,
        loss_scale=float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None,
    )


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[int], None], seed: int, device: torch.device) -> float:
    """Seconds one call of ``run`` takes, the device's queue drained before and after."""
    return timed_both(run, seed, device)[0]


def timed_both(run: Callable[[int], None], seed: int, device: torch.device) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds of one call of ``run``.

    On a CPU busy with other work the wall time measures the machine's load as much as the step;
    the CPU time is the step's own work (with one torch thread no thread spins waiting for others).
    """
    synchronise(device)
    began, cpu = time.perf_counter(), time.process_time()
    run(seed)
    synchronise(device)
    return time.perf_counter() - began, time.process_time() - cpu


def save_artefact(trainer: Trainer) -> Path:
    """Write the trainer's current weights as its run's artefact file (what `engine.generate` loads)."""
    from engine.training import ARTEFACT, save_weights

    return save_weights(trainer, trainer.folder / ARTEFACT, with_lora=True)
