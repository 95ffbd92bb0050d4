"""Masked reconstruction and identity loss (the AR loss lives in `engine.attention`).

All functions take batched tensors and return one value per sample, so the trainer can weight
samples (style up-weighting) and average over the ones a term applies to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
