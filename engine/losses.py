"""Masked reconstruction and identity loss (the AR loss lives in `engine.attention`).

All functions take batched tensors and return one value per sample, so the trainer can weight
samples (style up-weighting) and average over the ones a term applies to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from engine.faces.detect import Detector


def masked_reconstruction(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample ``sum((M * (pred - target))**2) / (C * sum(M))``.

    ``prediction``/``target`` are ``[B, C, H, W]``, ``mask`` ``[B, 1, H, W]``. Normalising by each
    sample's own mask area makes the value the mean squared error inside the mask, for any batch
    size (a full mask gives the plain MSE).
    """
    mask = mask.to(prediction.dtype)
    error = (mask * (prediction - target)).pow(2).sum(dim=(1, 2, 3))
    area = mask.sum(dim=(1, 2, 3)) * prediction.shape[1]
    return error / area.clamp_min(torch.finfo(prediction.dtype).eps)


def predicted_x0(
    noisy: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """One-step estimate ``z0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)`` of an epsilon-prediction model."""
    alpha = alphas_cumprod.to(noisy.device, torch.float32)[timesteps].view(-1, 1, 1, 1)
    return (noisy.float() - (1 - alpha).sqrt() * eps.float()) / alpha.sqrt()


def identity_loss(
    images: torch.Tensor, landmarks: torch.Tensor, recogniser: torch.nn.Module, target: torch.Tensor
) -> torch.Tensor:
    """Per-sample ``1 - cos(recogniser(aligned face), target)``.

    ``images [B, 3, H, W]`` in [-1, 1] (with gradient), ``landmarks [B, 5, 2]`` in their pixels,
    ``target [B, D]`` or ``[D]`` the source embedding.
    """
    from engine.faces.align import warp_to_arcface

    aligned = warp_to_arcface(images, landmarks)
    embedding = recogniser(aligned).float()
    target = target.to(embedding).expand_as(embedding)
    return 1 - torch.nn.functional.cosine_similarity(embedding, target, dim=-1)


def detect_landmarks(detector: Detector, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks ``[B, 5, 2]`` of the largest face in each image, found on a detached uint8 copy.

    ``found [B]`` says in which images a face was found (the others' rows are zeros).
    """
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    rows, found = [], []
    for image in pixels:
        faces = detector.detect(np.ascontiguousarray(image))
        rows.append(
            torch.as_tensor(np.asarray(faces[0].landmarks, dtype=np.float32)) if faces else torch.zeros(5, 2)
        )
        found.append(bool(faces))
    return torch.stack(rows).to(images.device), torch.tensor(found, device=images.device)


def face_windows(
    boxes: torch.Tensor, latent_size: tuple[int, int], scale: int, margin: float
) -> tuple[int, torch.Tensor]:
    """Square latent windows around face boxes, one size for the whole batch.

    ``boxes [B, 4]`` are ``x1, y1, x2, y2`` in image pixels, ``scale`` pixels per latent. Each
    window covers its box grown by ``margin`` box sizes on every side, clamped into the latent.
    Returns the window side (latents) and the top-left corners ``[B, 2]`` as (x, y) latents.
    """
    height, width = latent_size
    sizes = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1) * (1 + 2 * margin) / scale
    side = int(min(height, width, max(1, int(torch.ceil(sizes.max()).item()))))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / scale
    corners = torch.round(centres - side / 2).long()
    corners[:, 0] = corners[:, 0].clamp(0, width - side)
    corners[:, 1] = corners[:, 1].clamp(0, height - side)
    return side, corners


def crop_windows(latents: torch.Tensor, side: int, corners: torch.Tensor) -> torch.Tensor:
    """``latents [B, C, H, W]`` cut to the windows of `face_windows` -> ``[B, C, side, side]``."""
    return torch.stack(
        [z[:, y : y + side, x : x + side] for z, (x, y) in zip(latents, corners.tolist(), strict=True)]
    )


class WindowFidelity(NamedTuple):
    """How decoding only the face window differs from decoding the whole latent, where it matters."""

    pixel_error: float
    """Mean absolute difference inside the face boxes, in 0-255 pixel units."""
    edge_error: float
    """Mean absolute difference in the window's outer ring (one latent wide: the zero padding's reach)."""
    identity_cosine: float
    """Mean cosine of the recogniser's embeddings of the two decodes (1: the loss sees the same face)."""


@torch.no_grad()
def window_fidelity(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latents: torch.Tensor,
    boxes: torch.Tensor,
    landmarks: torch.Tensor,
    margin: float,
    recogniser: torch.nn.Module,
) -> WindowFidelity:
    """Compare the identity branch's window decode with the same pixels of a full decode.

    ``decode`` maps latents to images in [-1, 1] (8 pixels per latent); ``boxes`` and ``landmarks``
    are in image pixels. The window sees only itself: the decoder's GroupNorm statistics and
    mid-block attention cover the window, and its convolutions pad its edge with zeros.
    """
    from engine.faces.align import warp_to_arcface

    side, corners = face_windows(boxes, latents.shape[-2:], 8, margin)
    full = decode(latents).float()
    part = decode(crop_windows(latents, side, corners)).float()
    size = side * 8
    same = torch.stack(
        [
            image[:, y : y + size, x : x + size]
            for image, (x, y) in zip(full, (corners * 8).tolist(), strict=True)
        ]
    )
    difference = (part - same).abs().mean(dim=1) * 127.5  # [-1, 1] -> 0-255 units
    shift = (corners * 8).to(boxes)
    ring = torch.ones(size, size, dtype=torch.bool, device=difference.device)
    ring[8:-8, 8:-8] = False
    points = landmarks.to(part) - shift.unsqueeze(1)
    window_embedding = recogniser(warp_to_arcface(part, points)).float()
    full_embedding = recogniser(warp_to_arcface(full, landmarks.to(full))).float()
    cosine = torch.nn.functional.cosine_similarity(window_embedding, full_embedding, dim=-1)
    return WindowFidelity(
        pixel_error=_mean_in_boxes(difference, boxes - shift.repeat(1, 2)),
        edge_error=float(difference[:, ring].mean()),
        identity_cosine=float(cosine.mean()),
    )


class DecoderAgreement(NamedTuple):
    """How a second decoder's image of the same latents differs from the VAE's, where the recogniser looks."""

    pixel_error: float
    """Mean absolute difference inside the face boxes, in 0-255 pixel units."""
    identity_cosine: float
    """Mean cosine of the recogniser's embeddings of the two images."""


@torch.no_grad()
def decoder_agreement(
    images: torch.Tensor,
    reference: torch.Tensor,
    boxes: torch.Tensor,
    landmarks: torch.Tensor,
    recogniser: torch.nn.Module,
) -> DecoderAgreement:
    """Compare ``images`` with ``reference`` (both ``[B, 3, H, W]`` in [-1, 1], the same frame) inside the faces."""
    from engine.faces.align import warp_to_arcface

    difference = (images.float() - reference.float()).abs().mean(dim=1) * 127.5
    points = landmarks.to(images.device).float()
    first = recogniser(warp_to_arcface(images.float(), points)).float()
    second = recogniser(warp_to_arcface(reference.float(), points)).float()
    cosine = torch.nn.functional.cosine_similarity(first, second, dim=-1)
    return DecoderAgreement(_mean_in_boxes(difference, boxes), float(cosine.mean()))


def _mean_in_boxes(difference: torch.Tensor, boxes: torch.Tensor) -> float:
    """Mean of each ``difference [B, H, W]`` inside its box (clamped to the square frame; whole frame if empty)."""
    inside = []
    for error, box in zip(difference, boxes.round().long().tolist(), strict=True):
        x1, y1, x2, y2 = (min(max(v, 0), error.shape[-1]) for v in box)
        inside.append(error[y1:y2, x1:x2].mean() if x2 > x1 and y2 > y1 else error.mean())
    return float(torch.stack(inside).mean())
