"""The identity loss's branch: what it compares against and decodes with, and its checks at phase-2 start."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.events import Event, Status

LOG = logging.getLogger(__name__)

if TYPE_CHECKING:
    from accelerate import Accelerator

    from engine.config import TrainingConfig
    from engine.data import TrainingData
    from engine.faces import FaceKit
    from engine.families import ModelFamily
    from engine.losses import DecoderAgreement, WindowFidelity
    from engine.models import BaseModel
    from engine.training.options import Options


@dataclass(frozen=True, eq=False)
class IdentityBranch:
    """What the identity loss compares against and with."""

    target: torch.Tensor
    """Mean identity embedding of the source photos."""
    detector: Any
    """Finds the landmarks in the decoded images."""
    recogniser: nn.Module
    """The identity network, in torch."""
    tiny_decoder: Any | None = None
    """TAESD, loaded when the config chose ``identity_decoder="tiny"``."""
    vae: Any | None = None
    """The VAE the branch decodes with when it is not the base's (an fp32 copy under fp16: `identity_vae`)."""
    dtype: torch.dtype | None = None
    """The branch's precision when it is not the run's (`Options.identity_dtype`)."""

    def precision(self, accelerator: Accelerator) -> Any:
        """The autocast context of the branch: the run's, bf16, or none (fp32)."""
        if self.dtype is None:
            return accelerator.autocast()
        device = accelerator.device.type
        if self.dtype == torch.float32:
            return torch.autocast(device, enabled=False)
        return torch.autocast(device, dtype=self.dtype)


def identity_decoder_for(
    config: TrainingConfig, family: ModelFamily, emit: Callable[[Event], None]
) -> TrainingConfig:
    """The config a run on ``family`` trains with, its identity decoder resolved.

    With ``identity_decoder="tiny"``, an empty ``tiny_decoder_model`` becomes the family's TAESD
    (``family.tiny_decoder``), and another family's TAESD is replaced by it: each decodes only the
    latent space it was trained on. A family with no TAESD decodes with the VAE
    (``identity_decoder="vae"``). A replacement is said in a `Status` and the log; a folder is kept.
    """
    from engine.families import FAMILIES

    if config.identity_decoder != "tiny":
        return config
    own, chosen = family.tiny_decoder, config.tiny_decoder_model
    if own is None:
        message = (
            f"{family.label} has no tiny identity decoder (TAESD): the identity loss decodes the face "
            "window with the base model's VAE (identity_decoder=vae), which takes more time and memory."
        )
        return _told(config.replace(identity_decoder="vae"), message, emit)
    if not chosen:
        return config.replace(tiny_decoder_model=own)
    owners = {f.tiny_decoder.casefold(): f for f in FAMILIES.values() if f.tiny_decoder}
    other = owners.get(chosen.casefold(), family)
    if other is family:
        return config
    message = (
        f"tiny_decoder_model {chosen} is the tiny identity decoder of {other.label}, whose latents differ "
        f"from {family.label}'s: the identity loss decodes with {own}, {family.label}'s, instead."
    )
    return _told(config.replace(tiny_decoder_model=own), message, emit)


def _told(config: TrainingConfig, message: str, emit: Callable[[Event], None]) -> TrainingConfig:
    """``config``, after ``message`` (a change the run made to it) went to the log and as a `Status`."""
    LOG.warning(message)
    emit(Status(message=message))
    return config


def identity_vae(vae: Any, dtype: torch.dtype | None) -> Any | None:
    """An fp32 copy of ``vae``'s decoding half when the branch runs in fp32 on lower-precision weights; else None."""
    import copy

    if dtype != torch.float32 or vae.dtype == torch.float32:
        return None
    encoder, vae.encoder = vae.encoder, None
    try:
        return copy.deepcopy(vae).float()
    finally:
        vae.encoder = encoder


def build_identity_branch(
    config: TrainingConfig,
    options: Options,
    base: BaseModel,
    face_kit: FaceKit,
    target: torch.Tensor,
    device: torch.device,
    emit: Callable[[Event], None],
) -> IdentityBranch:
    """The branch of a run: ``target`` (the source identity), the kit's detector and recogniser, its decoder."""
    recogniser = face_kit.identity_model().to(device)
    tiny_decoder = None
    if config.identity_decoder == "tiny":
        from engine.models import load_tiny_decoder

        emit(Status(message=f"Loading the tiny identity decoder {config.tiny_decoder_model}."))
        dtype = options.identity_dtype if options.identity_dtype == torch.float32 else options.weight_dtype
        tiny_decoder = load_tiny_decoder(config.tiny_decoder_model, device, dtype)
        if options.vae_slicing:
            tiny_decoder.enable_slicing()
        if options.gradient_checkpointing:
            tiny_decoder.enable_gradient_checkpointing()
    vae = identity_vae(base.vae, options.identity_dtype) if tiny_decoder is None else None
    return IdentityBranch(target, face_kit.detector, recogniser, tiny_decoder, vae, options.identity_dtype)


@torch.no_grad()
def check_identity_branch(
    branch: IdentityBranch,
    config: TrainingConfig,
    options: Options,
    base: BaseModel,
    data: TrainingData,
    accelerator: Accelerator,
) -> tuple[WindowFidelity | None, DecoderAgreement | None]:
    """The branch's shortcuts checked on up to two source photos, at phase-2 start.

    The face-window decode against a full decode (``identity_face_window``), and TAESD's decode
    against the VAE's (``identity_decoder="tiny"``); None for a shortcut the run does not take.
    """
    from engine.data import Sample
    from engine.losses import decoder_agreement, window_fidelity

    device = accelerator.device
    views = [data.view(Sample("source", index, 0, 0)) for index in data.by_role["source"][:2]]
    boxes = torch.stack([view.bbox for view in views]).to(device).float()
    landmarks = torch.stack([view.landmarks for view in views]).to(device).float()
    unscaled = torch.stack([view.mean for view in views]).to(device)
    vae = branch.vae or base.vae
    tiny = branch.tiny_decoder if config.identity_decoder == "tiny" else None
    scale = base.family.latent_scale(base.vae)

    def decode(latents: torch.Tensor) -> torch.Tensor:  # the branch's decoder on unscaled latents
        if tiny is not None:
            return tiny.decode((latents * scale).to(tiny.dtype)).sample
        return vae.decode(latents.to(vae.dtype)).sample

    fidelity = agreement = None
    with branch.precision(accelerator):
        if options.identity_face_window:
            fidelity = window_fidelity(
                decode, unscaled, boxes, landmarks, config.identity_window_margin, branch.recogniser
            )
        if tiny is not None:
            full = vae.decode(unscaled.to(vae.dtype)).sample
            agreement = decoder_agreement(decode(unscaled), full, boxes, landmarks, branch.recogniser)
    return fidelity, agreement
