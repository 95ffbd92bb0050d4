"""The training objective: one function per loss term, composed by `Objective` for one micro-batch.

One step, top to bottom: draw samples; noise their cached latents at random timesteps; one pass of
text encoder and UNet (with the identity branch's extra rows when it cannot reuse the
reconstruction pass); masked reconstruction; AR from the captured maps; identity from the one-step
x0 estimate decoded around the face (by the VAE, or by TAESD with ``identity_decoder="tiny"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from engine.losses import masked_reconstruction

if TYPE_CHECKING:
    from accelerate import Accelerator

    from engine.attention import AttentionStore
    from engine.config import TrainingConfig
    from engine.data import Sample, TrainingData
    from engine.models import BaseModel
    from engine.training.identity_branch import IdentityBranch
    from engine.training.monitor import MethodMonitor
    from engine.training.options import Options


class Denoiser(nn.Module):
    """Text encoders and UNet as one module, so one DDP wrapper sees every trained parameter.

    Each text encoder is a submodule under its `BaseModel` name; the family turns prompts into states
    for images of ``resolution`` pixels (SDXL's size ids).
    """

    def __init__(self, base: BaseModel, resolution: int | None = None):
        super().__init__()
        self.family, self.resolution = base.family, resolution
        for name in base.family.text_encoders:
            self.add_module(name, getattr(base, name))
        self.unet = base.unet

    def forward(self, input_ids: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        encoders = [getattr(self, name) for name in self.family.text_encoders]
        states = self.family.encode_prompt(encoders, input_ids, self.resolution)
        return self.unet(noisy, timesteps, states.hidden_states, added_cond_kwargs=states.added_cond).sample


class Noised(NamedTuple):
    """The UNet's input rows of one micro-batch: the samples' rows, then the identity branch's extra rows."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    input_ids: torch.Tensor
    noise: torch.Tensor
    """The noise added to the samples' rows (the reconstruction target)."""
    identity_rows: torch.Tensor
    """The samples that take the identity loss."""
    source_rows: torch.Tensor | None
    """For each of those, the row whose prediction it uses (None when no sample takes it)."""


@dataclass(frozen=True, eq=False)
class Objective:
    """The loss of one micro-batch (`__call__`) and everything it reads.

    A run builds it when a phase is set up; `dataclasses.replace` gives one with other options or
    config on the same models, optimiser state and generator (the benchmarks' step kinds).
    """

    config: TrainingConfig
    options: Options
    base: BaseModel
    model: nn.Module
    """The prepared `Denoiser`."""
    data: TrainingData
    store: AttentionStore
    accelerator: Accelerator
    generator: torch.Generator
    identity: IdentityBranch | None = None
    monitor: MethodMonitor | None = None
    """Receives the attention levels and face detections of each call (`engine.training.monitor`)."""

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def identity_kinds(self, phase: int) -> tuple[str, ...]:
        """The kinds of sample that take the identity loss in ``phase``."""
        if phase == 1 or self.identity is None:
            return ()
        return ("source", "composed") if self.config.identity_on_source else ("composed",)

    def __call__(self, phase: int, step: int, steps: int, samples: list[Sample]) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch: ``total`` (weighted) plus each unweighted term."""
        config = self.config
        scale = self.base.family.latent_scale(self.base.vae)
        batch = self.data.batch(samples, scale, self.identity_kinds(phase), self.generator)
        rows = noised(self, phase, batch)
        use_ar = phase == 2 and config.ar_weight > 0
        if use_ar:
            self.store.start()
        eps = self.model(rows.input_ids, rows.noisy, rows.timesteps)
        self.store.stop()

        size = len(samples)
        weights = style_weights(batch.kinds, step, steps, config, self.device)
        reconstruction, total = reconstruction_term(eps[:size], rows.noise, batch.recon_masks, weights)
        terms = {"reconstruction": reconstruction}
        if use_ar:
            terms["attention"] = attention_term(self.store, batch, config, self.device, self.monitor)
            total = total + config.ar_weight * terms["attention"]
        if rows.source_rows is not None:
            source = rows.source_rows
            term = identity_term(self, rows.noisy[source], eps[source], rows.timesteps[source], batch)
            if term is not None:
                terms["identity"] = term
                total = total + config.identity_weight * term
        terms["total"] = total
        return terms


def noised(objective: Objective, phase: int, batch: Any) -> Noised:
    """Noise the batch's latents at random timesteps; identity rows reuse a row when its timestep is low enough.

    Otherwise (or with ``identity_reuse_pass`` off) an identity row gets an extra, less noised row.
    Either way the identity timesteps are uniform below ``identity_max_timestep``, also when
    ``phase2_max_timestep`` is lower.
    """
    config, gen, device = objective.config, objective.generator, objective.device
    scheduler = objective.base.noise_scheduler
    latents = batch.latents
    size = len(latents)
    noise = torch.randn(latents.shape, generator=gen, device=device)
    high = config.phase1_max_timestep if phase == 1 else config.phase2_max_timestep
    timesteps = torch.randint(0, high, (size,), generator=gen, device=device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    input_ids = batch.input_ids
    identity_rows = batch.identity_rows.to(device)
    if not len(identity_rows):
        return Noised(noisy, timesteps, input_ids, noise, identity_rows, None)
    # Identity timesteps are U[0, identity_max_timestep) with or without reuse: each row draws one,
    # and reuses its reconstruction row when that row's timestep is in range and the draw falls
    # where reconstruction timesteps lie (always, unless phase2_max_timestep is the lower bound).
    drawn = torch.randint(
        0, config.identity_max_timestep, (len(identity_rows),), generator=gen, device=device
    )
    reusable = (timesteps[identity_rows] < config.identity_max_timestep) & (drawn < high)
    if not objective.options.identity_reuse_pass:
        reusable = torch.zeros_like(reusable)
    fresh = identity_rows[~reusable]
    extra_t = drawn[~reusable]
    extra_noise = torch.randn((len(fresh), *latents.shape[1:]), generator=gen, device=device)
    noisy = torch.cat([noisy, scheduler.add_noise(latents[fresh], extra_noise, extra_t)])
    timesteps = torch.cat([timesteps, extra_t])
    input_ids = torch.cat([input_ids, input_ids[fresh]])
    source_rows = identity_rows.clone()
    reused = torch.isin(identity_rows, fresh, invert=True)
    source_rows[~reused] = size + torch.arange(len(fresh), device=device)
    return Noised(noisy, timesteps, input_ids, noise, identity_rows, source_rows)


def style_weights(
    kinds: list[str], step: int, steps: int, config: TrainingConfig, device: torch.device
) -> torch.Tensor:
    """Per-sample reconstruction weights: styled samples weigh ``style_weight`` early in the phase."""
    weights = torch.ones(len(kinds), device=device)
    if step < config.style_weight_fraction * steps:
        styled = torch.tensor([kind != "source" for kind in kinds], device=device)
        weights = torch.where(styled, config.style_weight, 1.0)
    return weights


def reconstruction_term(
    eps: torch.Tensor, noise: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked reconstruction: the plain mean over samples (reported) and the weighted one (optimised)."""
    per_sample = masked_reconstruction(eps.float(), noise.float(), masks)
    return per_sample.mean(), (per_sample * weights).mean()


def attention_term(
    store: AttentionStore,
    batch: Any,
    config: TrainingConfig,
    device: torch.device,
    monitor: MethodMonitor | None = None,
) -> torch.Tensor:
    """AR loss (of the config's ``ar_loss`` form) averaged over each sample's tokens, then over samples.

    ``monitor`` gets each pair's token, mean attention and share outside its region (detached).
    """
    from engine.attention import outside_mass, refocusing_loss

    maps = store.token_maps(batch.ar_positions, batch.ar_rows)
    targets = batch.ar_targets.to(device)
    if monitor is not None:
        with torch.no_grad():
            token_ids = batch.input_ids[
                batch.ar_rows.to(batch.input_ids.device), batch.ar_positions.to(batch.input_ids.device)
            ]
            monitor.record_attention(
                token_ids.cpu(), maps.float().mean(dim=(1, 2, 3)).cpu(), outside_mass(maps, targets).cpu()
            )
    if config.ar_loss == "outside_share":
        pairs = outside_mass(maps, targets)
    else:
        pairs = refocusing_loss(maps, targets, config.ar_detach_range)
    rows = batch.ar_rows.to(device)
    count = torch.zeros(len(batch.kinds), device=device).index_add_(0, rows, torch.ones_like(pairs))
    per_sample = torch.zeros_like(count).index_add_(0, rows, pairs) / count.clamp_min(1)
    return per_sample[count > 0].mean()


def identity_term(
    objective: Objective, noisy: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, batch: Any
) -> torch.Tensor | None:
    """Identity loss of the one-step x0 estimates, decoded (around the face) with gradient; None if no face is found."""
    from engine.losses import crop_windows, detect_landmarks, face_windows, identity_loss, predicted_x0

    config, device, base, branch = objective.config, objective.device, objective.base, objective.identity
    vae = base.vae
    latents = predicted_x0(noisy, eps, base.noise_scheduler.alphas_cumprod, timesteps)
    boxes, landmarks = batch.boxes.to(device), batch.landmarks.to(device)
    if objective.options.identity_face_window:
        side, corners = face_windows(boxes, latents.shape[-2:], 8, config.identity_window_margin)
        latents = crop_windows(latents, side, corners)
        landmarks = landmarks - (corners * 8).to(landmarks).unsqueeze(1)
    with branch.precision(objective.accelerator):
        if config.identity_decoder == "tiny":
            images = branch.tiny_decoder.decode(latents.to(branch.tiny_decoder.dtype)).sample.float()
        else:
            scale = base.family.latent_scale(vae)
            decoder = branch.vae or vae
            images = decoder.decode((latents / scale).to(decoder.dtype)).sample.float()
        points, detected = detect_landmarks(branch.detector, images)
        if objective.monitor is not None:
            kinds = [batch.kinds[row] for row in batch.identity_rows.tolist()]
            objective.monitor.record_faces(kinds, timesteps.tolist(), detected.tolist())
        found = detected
        if config.identity_fallback_landmarks:  # where no face is found, the training image's landmarks
            points = torch.where(detected.view(-1, 1, 1), points, landmarks.to(points))
            found = torch.ones_like(detected)
        if not found.any():
            return None
        return identity_loss(images[found], points[found], branch.recogniser, branch.target).mean()
