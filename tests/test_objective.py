"""The phase-2 objective's pieces, on plain tensors (no model)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.config import preset
from engine.training.objective import noised


def _objective(reuse: bool, **config):
    from diffusers import DDPMScheduler

    return SimpleNamespace(
        config=preset(**config),
        options=SimpleNamespace(identity_reuse_pass=reuse),
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        base=SimpleNamespace(noise_scheduler=DDPMScheduler(num_train_timesteps=1000)),
    )


def _identity_timesteps(objective, draws: int = 400) -> torch.Tensor:
    batch = SimpleNamespace(
        latents=torch.zeros(2, 4, 2, 2),
        input_ids=torch.zeros(2, 3, dtype=torch.long),
        identity_rows=torch.tensor([0, 1]),
    )
    found = []
    for _ in range(draws):
        rows = noised(objective, 2, batch)
        found.append(rows.timesteps[rows.source_rows])
    return torch.cat(found).float()


@pytest.mark.parametrize("reuse", [True, False])
def test_identity_timesteps_span_their_whole_range_when_phase_two_stops_lower(reuse):
    """With reuse and phase2_max_timestep 400 < identity_max_timestep 800, identity timesteps used to stop at 400."""
    timesteps = _identity_timesteps(_objective(reuse, phase2_max_timestep=400, identity_max_timestep=800))
    assert timesteps.max() >= 700
    assert 0.4 < (timesteps < 400).float().mean() < 0.6  # uniform on [0, 800): half below 400


@pytest.mark.parametrize("reuse", [True, False])
def test_identity_timesteps_are_uniform_below_their_limit(reuse):
    timesteps = _identity_timesteps(_objective(reuse, phase2_max_timestep=800, identity_max_timestep=400))
    assert timesteps.max() < 400
    assert 0.4 < (timesteps < 200).float().mean() < 0.6


def test_reuse_takes_the_reconstruction_row_when_it_can():
    objective = _objective(True, phase2_max_timestep=800, identity_max_timestep=800)
    batch = SimpleNamespace(
        latents=torch.zeros(2, 4, 2, 2),
        input_ids=torch.zeros(2, 3, dtype=torch.long),
        identity_rows=torch.tensor([0, 1]),
    )
    rows = noised(objective, 2, batch)
    assert len(rows.noisy) == 2  # every reconstruction timestep is below 800: no extra UNet rows
    assert rows.source_rows.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("form", "expected"), [("rescaled", "refocusing_loss"), ("outside_share", "outside_mass")]
)
def test_the_config_chooses_the_ar_loss_form(form, expected):
    from engine import attention
    from engine.attention import AttentionStore
    from engine.training.objective import attention_term

    store = AttentionStore()
    store.start()
    store.record("layer", torch.rand(1, 2, 16, 3, generator=torch.Generator().manual_seed(0)).softmax(-1))
    store.stop()
    target = torch.zeros(4, 4)
    target[1:3, 1:3] = 1
    batch = SimpleNamespace(
        kinds=["source"], ar_rows=torch.tensor([0]), ar_positions=torch.tensor([1]), ar_targets=target[None]
    )
    loss = attention_term(store, batch, preset(ar_loss=form), torch.device("cpu"))
    maps = store.token_maps(torch.tensor([1]), torch.tensor([0]))
    assert loss.item() == pytest.approx(getattr(attention, expected)(maps, target[None]).item())


def test_under_fp16_the_identity_branch_runs_in_fp32_on_a_copy_of_the_decoder(tiny_sd):
    """Item 4: the identity decode and its backward ran in fp16 (overflow -> silently skipped steps)."""
    from diffusers import AutoencoderKL

    from engine.training.identity_branch import IdentityBranch, identity_vae
    from engine.training.options import Options

    options = Options("8gb", torch.device("cpu"), "fp16", False, True, True, True, True, True)
    assert options.identity_dtype == torch.float32  # no bf16 here: fp32
    assert (
        Options("8gb", torch.device("cpu"), "bf16", False, True, True, True, True, True).identity_dtype
        is None
    )

    vae = AutoencoderKL.from_pretrained(tiny_sd.folder / "vae").half()
    copy = identity_vae(vae, options.identity_dtype)
    assert copy.dtype == torch.float32 and copy.encoder is None and vae.encoder is not None
    assert vae.dtype == torch.float16
    latents = torch.randn(1, 4, 8, 8)
    images = copy.decode(latents).sample
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    assert identity_vae(vae, None) is None and identity_vae(vae.float(), torch.float32) is None

    accelerator = SimpleNamespace(
        device=torch.device("cpu"), autocast=lambda: torch.autocast("cpu", torch.bfloat16)
    )
    branch = IdentityBranch(torch.zeros(4), None, torch.nn.Identity(), None, copy, torch.float32)
    with accelerator.autocast(), branch.precision(accelerator):
        assert not torch.is_autocast_enabled("cpu")
    with IdentityBranch(torch.zeros(4), None, torch.nn.Identity()).precision(accelerator):
        assert torch.is_autocast_enabled("cpu")  # otherwise the run's own precision
