"""Alignment to the ArcFace 112x112 template, differentiable in the image.

`warp_to_arcface` does in torch what insightface's ``face_align.norm_crop`` does with OpenCV:
fit the least-squares similarity (rotation, uniform scale, shift) that takes the five landmarks
onto the template, and resample bilinearly with black outside the image. Gradients reach the
image; the landmarks come from a detector on a detached copy and are treated as constants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
"""Landmark positions in the 112x112 crop the ArcFace recognisers were trained on."""


def similarity_matrices(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarities ``[B, 2, 3]`` taking points ``src [B, N, 2]`` onto ``dst [N, 2]``.

    Closed form over the non-reflective similarities ``[[a, -b], [b, a]] p + t`` (the same optimum
    as Umeyama's method used by scikit-image and OpenCV's face recogniser).
    """
    import torch

    dst = dst.to(src).expand_as(src)
    src_mean, dst_mean = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)
    s, d = src - src_mean, dst - dst_mean
    norm = (s**2).sum(dim=(1, 2)).clamp_min(1e-12)
    a = (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1]).sum(dim=1) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(dim=1) / norm
    rotation = torch.stack([torch.stack([a, -b], dim=-1), torch.stack([b, a], dim=-1)], dim=1)
    shift = dst_mean.transpose(1, 2) - rotation @ src_mean.transpose(1, 2)
    return torch.cat([rotation, shift], dim=2)


def warp_to_arcface(images: torch.Tensor, landmarks: torch.Tensor, size: int = ARCFACE_SIZE) -> torch.Tensor:
    """Aligned faces ``[B, 3, size, size]`` from images ``[B, 3, H, W]`` in [-1, 1].

    ``landmarks [B, 5, 2]`` are in the images' pixel coordinates (pixel centres at integers, as in
    OpenCV). Areas outside the image come out black (-1), like ``norm_crop``. Output is float32.
    """
    import torch
    import torch.nn.functional as F

    batch, _, height, width = images.shape
    template = torch.as_tensor(ARCFACE_TEMPLATE * (size / ARCFACE_SIZE), device=images.device)
    forward = similarity_matrices(landmarks.detach().to(images.device, torch.float32), template)
    rotation, shift = forward[:, :, :2], forward[:, :, 2:]
    inverse_rotation = torch.linalg.inv(rotation)
    steps = torch.arange(size, device=images.device, dtype=torch.float32)
    ys, xs = torch.meshgrid(steps, steps, indexing="ij")
    targets = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=0)  # [2, size*size]
    sources = inverse_rotation @ (targets.unsqueeze(0) - shift)  # [B, 2, size*size], pixels
    scale = torch.tensor([width, height], device=images.device, dtype=torch.float32).view(1, 2, 1)
    grid = ((2 * sources + 1) / scale - 1).transpose(1, 2).reshape(batch, size, size, 2)
    # Sample (x + 1) so that zero padding is black once shifted back.
    warped = F.grid_sample(
        images.float() + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return warped - 1
