from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.faces.align import ARCFACE_TEMPLATE
from engine.losses import (
    crop_windows,
    detect_landmarks,
    face_windows,
    identity_loss,
    masked_reconstruction,
    predicted_x0,
)


def test_masked_reconstruction_normalises_each_sample_by_its_own_area():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(2, 2, 3, 3, generator=generator)
    target = torch.randn(2, 2, 3, 3, generator=generator)
    mask = torch.zeros(2, 1, 3, 3)
    mask[0, 0, 0, :2] = 1  # area 2
    mask[1, 0, 1:, :] = 1  # area 6
    got = masked_reconstruction(prediction, target, mask)
    for b in range(2):
        total, area = 0.0, 0.0
        for i in range(3):
            for j in range(3):
                area += mask[b, 0, i, j].item()
                for c in range(2):
                    total += (
                        mask[b, 0, i, j].item() * (prediction[b, c, i, j] - target[b, c, i, j]).item()
                    ) ** 2
        assert got[b].item() == pytest.approx(total / (2 * area), rel=1e-5)


def test_masked_reconstruction_with_a_full_mask_is_the_mse():
    prediction, target = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    got = masked_reconstruction(prediction, target, torch.ones(3, 1, 5, 5))
    torch.testing.assert_close(got, ((prediction - target) ** 2).mean(dim=(1, 2, 3)))


def test_predicted_x0_inverts_the_forward_noising():
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    latents, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    timesteps = torch.tensor([0, 400, 799])
    noisy = scheduler.add_noise(latents, noise, timesteps)
    torch.testing.assert_close(
        predicted_x0(noisy, noise, scheduler.alphas_cumprod, timesteps), latents, rtol=1e-4, atol=1e-4
    )


class _Recogniser(torch.nn.Module):
    """A linear recogniser with the identity model's contract (unit embeddings)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(
            torch.randn(8, 3 * 112 * 112, generator=torch.Generator().manual_seed(1)), requires_grad=False
        )

    def forward(self, aligned):
        return torch.nn.functional.normalize(aligned.flatten(1) @ self.weight.T, dim=1)


def test_identity_loss_equals_hand_computation():
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(2, 3, 112, 112, generator=generator) * 2 - 1).requires_grad_(True)
    landmarks = torch.as_tensor(ARCFACE_TEMPLATE).expand(2, 5, 2)  # already aligned: the warp is the identity
    target = torch.randn(8, generator=generator)
    recogniser = _Recogniser()
    loss = identity_loss(images, landmarks, recogniser, target)
    w, t = recogniser.weight.detach().numpy().astype(np.float64), target.numpy().astype(np.float64)
    for b in range(2):
        embedding = w @ images[b].detach().numpy().astype(np.float64).ravel()
        cosine = embedding @ t / (np.linalg.norm(embedding) * np.linalg.norm(t))
        assert loss[b].item() == pytest.approx(1 - cosine, abs=1e-4)
    loss.sum().backward()
    assert images.grad.abs().sum() > 0


def test_detect_landmarks_says_where_no_face_was_found():
    from engine.faces.fallback import HaarDetector

    blank = torch.zeros(2, 3, 64, 64)  # no face for any detector
    points, found = detect_landmarks(HaarDetector(), blank)
    assert not found.any() and not points.any()


def test_face_windows_cover_the_box_inside_the_latent():
    boxes = torch.tensor([[16.0, 16.0, 48.0, 48.0], [0.0, 40.0, 20.0, 64.0]])
    side, corners = face_windows(boxes, (8, 8), 8, margin=0.25)
    assert side == 6  # 32 px box + 2 x 8 px margin = 48 px = 6 latents
    for (x, y), box in zip(corners.tolist(), boxes.tolist(), strict=True):
        assert 0 <= x <= 8 - side and 0 <= y <= 8 - side
        assert x * 8 <= box[0] + 8 and (x + side) * 8 >= min(box[2], 64) - 8
    latents = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    windows = crop_windows(latents, side, corners)
    assert windows.shape == (2, 1, 6, 6)
    x, y = corners[1].tolist()
    torch.testing.assert_close(windows[1], latents[1, :, y : y + 6, x : x + 6])
    big_side, _ = face_windows(torch.tensor([[0.0, 0.0, 64.0, 64.0]]), (8, 8), 8, margin=0.5)
    assert big_side == 8


def _recogniser():
    from fixtures_training import TinyScorer

    return TinyScorer().identity_model()


def test_window_fidelity_is_exact_for_a_local_decoder_and_sees_global_statistics():
    """Item 5: the face window was never compared with a full decode."""
    from engine.losses import window_fidelity

    def local(z):  # each pixel from its own latent: the window decodes exactly as the whole
        return torch.tanh(F.interpolate(z[:, :3], scale_factor=8, mode="nearest"))

    def normalised(z):  # GroupNorm-like: statistics of whatever it is given
        image = local(z)
        return (image - image.mean(dim=(-2, -1), keepdim=True)).clamp(-1, 1)

    latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[40.0, 40.0, 80.0, 80.0], [60.0, 30.0, 100.0, 70.0]])
    landmarks = torch.tensor([[[50.0, 52], [70, 52], [60, 60], [52, 70], [68, 70]]]).repeat(2, 1, 1)
    landmarks[1] += torch.tensor([20.0, -10])
    # a margin wide enough that the recogniser's aligned crop lies inside the window
    exact = window_fidelity(local, latents, boxes, landmarks, 1.0, _recogniser())
    assert exact.pixel_error == 0 and exact.edge_error == 0
    assert exact.identity_cosine == pytest.approx(1.0, abs=1e-5)
    shifted = window_fidelity(normalised, latents, boxes, landmarks, 1.0, _recogniser())
    assert shifted.pixel_error > 1 and shifted.identity_cosine < 1


def test_decoder_agreement_compares_two_decodes_where_the_recogniser_looks():
    from engine.losses import decoder_agreement

    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    boxes = torch.tensor([[32.0, 32.0, 96.0, 96.0]])
    landmarks = torch.tensor([[[50.0, 55], [78, 55], [64, 70], [52, 84], [76, 84]]])
    same = decoder_agreement(images, images.clone(), boxes, landmarks, _recogniser())
    assert same.pixel_error == 0 and same.identity_cosine == pytest.approx(1.0, abs=1e-5)
    outside = images.clone()
    outside[..., :16, :] = 0  # a change outside the face box leaves the face's pixels alone
    assert decoder_agreement(outside, images, boxes, landmarks, _recogniser()).pixel_error == 0
    darker = decoder_agreement((images - 0.5).clamp(-1, 1), images, boxes, landmarks, _recogniser())
    assert darker.pixel_error > 10
