from __future__ import annotations

import pytest
import torch

from engine.attention import AttentionStore, ar_layer_names, install_capture, outside_mass, refocusing_loss


@pytest.fixture
def unet(tiny_sd):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_sd.folder / "unet")


def _inputs(unet, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    latents = torch.randn(batch, 4, size, size, generator=generator)
    states = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    return latents, torch.tensor([10, 700][:batch]), states


def test_ar_layers_are_the_sd15_sixteen_pixel_cross_attentions(unet):
    names = ar_layer_names(unet)
    expected = [f"down_blocks.2.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(2)]
    expected += [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(3)]
    assert names == expected


def test_capture_only_on_ar_layers_and_same_output_as_sdpa(unet):
    from diffusers.models.attention_processor import AttnProcessor2_0

    latents, timesteps, states = _inputs(unet)
    with torch.no_grad():
        reference = unet(latents, timesteps, states).sample
    store = AttentionStore()
    names = install_capture(unet, store)
    kinds = {name: type(p).__name__ for name, p in unet.attn_processors.items()}
    assert {kinds[n] for n in names} == {"CaptureProcessor"}
    assert all(isinstance(p, AttnProcessor2_0) for n, p in unet.attn_processors.items() if n not in names)
    store.start()
    with torch.no_grad():
        captured = unet(latents, timesteps, states).sample
    store.stop()
    torch.testing.assert_close(captured, reference, rtol=1e-4, atol=1e-5)
    assert list(store.maps) == names
    probs = store.maps[names[0]]
    assert probs.shape[:2] == (2, unet.config.attention_head_dim) and probs.shape[-1] == 77
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_token_maps_pick_each_rows_token_column():
    store = AttentionStore()
    store.start()
    probs = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    store.record("a", probs)
    store.record("b", probs + 1000)
    maps = store.token_maps(torch.tensor([4, 1]), torch.tensor([1, 0]))
    assert maps.shape == (2, 6, 2, 2)
    torch.testing.assert_close(maps[0, :3].reshape(3, 4), probs[1, :, :, 4])
    torch.testing.assert_close(maps[1, 3:].reshape(3, 4), probs[0, :, :, 1] + 1000)


def test_refocusing_loss_equals_hand_computation():
    maps = torch.tensor([[[[0.1, 0.5], [0.3, 0.9]], [[0.2, 0.2], [0.6, 0.4]]]])  # one pair, two maps at 2x2
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # Same size: the bilinear resize is the identity, so S is the mean of the min-max rescaled maps.
    rescaled = [
        [(v - min(sum(m, []))) / (max(sum(m, [])) - min(sum(m, []))) for v in sum(m, [])]
        for m in maps[0].tolist()
    ]
    mean = [(a + b) / 2 for a, b in zip(*rescaled, strict=True)]
    flat_target = sum(target[0].tolist(), [])
    expected = sum(((s - t) * (1 - t)) ** 2 for s, t in zip(mean, flat_target, strict=True)) / 4
    assert refocusing_loss(maps, target).item() == pytest.approx(expected, rel=1e-6)


def test_refocusing_loss_only_penalises_outside_and_detaches_min_max():
    maps = torch.tensor([[[[0.1, 0.5, 0.2], [0.3, 0.9, 0.0], [0.4, 0.6, 0.8]]]], requires_grad=True)
    target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    refocusing_loss(maps, target).sum().backward()
    low, high = 0.0, 0.9
    scaled = (maps.detach()[0, 0] - low) / (high - low)
    # d/dA of mean(S^2 outside) with min and max held constant: 2 S / ((high - low) * pixels), zero inside.
    expected = 2 * scaled / (high - low) / 9 * (1 - target[0])
    torch.testing.assert_close(maps.grad[0, 0], expected)
    # A map that is zero outside the target costs nothing, whatever it does inside.
    inside_only = target[None] * torch.tensor([0.0, 0.7, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 1.0]).view(1, 1, 3, 3)
    assert refocusing_loss(inside_only, target).item() == 0.0


def _scale_gradient(detach_range: bool) -> float:
    """d L_ar / d c at c = 1 for the maps ``c * A``: how much shrinking the whole map lowers the loss."""
    maps = torch.tensor([[[[0.1, 0.5, 0.2], [0.3, 0.9, 0.05], [0.4, 0.6, 0.8]]]])
    target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    scale = torch.tensor(1.0, requires_grad=True)
    refocusing_loss(scale * maps, target, detach_range=detach_range).sum().backward()
    return scale.grad.item()


def test_detached_min_max_rewards_shrinking_the_map_and_the_kept_range_does_not():
    # Detached: S = (cA - min) / (max - min) grows with c, so the loss pushes every value down.
    assert _scale_gradient(detach_range=True) > 0.1
    # Kept in the graph: S is the same for every c > 0, so a uniform shrink earns nothing.
    assert _scale_gradient(detach_range=False) == pytest.approx(0.0, abs=1e-6)


def test_kept_range_has_the_same_value_and_moves_the_max_up():
    maps = torch.tensor([[[[0.1, 0.5, 0.2], [0.3, 0.9, 0.05], [0.4, 0.6, 0.8]]]], requires_grad=True)
    target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    kept = refocusing_loss(maps, target, detach_range=False)
    assert kept.item() == pytest.approx(refocusing_loss(maps, target).item(), rel=1e-6)
    kept.sum().backward()
    # The max (0.9, inside) gains: a larger range shrinks every rescaled value outside.
    assert maps.grad[0, 0, 1, 1] < 0
    # The min (0.05, outside) is pushed up less than by the detached loss (raising it lowers S elsewhere).
    detached = maps.detach().clone().requires_grad_(True)
    refocusing_loss(detached, target).sum().backward()
    assert maps.grad[0, 0, 1, 2] < detached.grad[0, 0, 1, 2]


def test_outside_mass_is_the_share_outside_the_target():
    maps = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])
    target = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert outside_mass(maps, target).item() == pytest.approx(0.25)
    # The share does not depend on the scale, down to the tiniest attention a collapsed token keeps.
    assert outside_mass(maps * 1e-30, target).item() == pytest.approx(0.25)


@pytest.mark.slow
def test_ar_gradient_reaches_lora_with_gradient_checkpointing(unet):
    """The released script's AR loss had no gradient under (reentrant) checkpointing; ours does."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    inject_adapter_in_model(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        ),
        unet,
    )
    with torch.no_grad():  # non-zero B, as after some training
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    store = AttentionStore()
    install_capture(unet, store)
    latents, timesteps, states = _inputs(unet)
    target = torch.zeros(2, unet.config.sample_size, unet.config.sample_size)
    target[:, 2:6, 2:6] = 1

    def ar_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        unet.zero_grad(set_to_none=True)
        unet.enable_gradient_checkpointing() if checkpointing else unet.disable_gradient_checkpointing()
        store.start()
        unet(latents, timesteps, states)
        store.stop()
        refocusing_loss(store.token_maps(torch.tensor([5, 5])), target).mean().backward()
        return {n: p.grad.clone() for n, p in unet.named_parameters() if "lora_" in n and p.grad is not None}

    checkpointed = ar_grads(True)
    assert any(block.gradient_checkpointing for block in unet.down_blocks)
    in_ar_layers = [
        n for n in checkpointed if n.startswith("down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k")
    ]
    assert in_ar_layers and all(checkpointed[n].abs().sum() > 0 for n in in_ar_layers)
    assert sum(g.abs().sum() for g in checkpointed.values()) > 0
    # What the released script did: reentrant checkpointing runs attention without a graph.
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    unet.enable_gradient_checkpointing(
        lambda module, *args: partial(checkpoint, use_reentrant=True)(module.__call__, *args)
    )
    store.start()
    with pytest.warns(UserWarning, match="None of the inputs have requires_grad"):
        unet(latents, timesteps, states)
    store.stop()
    assert not refocusing_loss(store.token_maps(torch.tensor([5, 5])), target).requires_grad
    plain = ar_grads(False)
    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-7)


def test_outside_share_loss_is_blind_to_a_uniform_shrink_and_pulls_mass_inside():
    maps = torch.tensor([[[[0.1, 0.5, 0.2], [0.3, 0.9, 0.05], [0.4, 0.6, 0.8]]]])
    target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    scale = torch.tensor(1.0, requires_grad=True)
    outside_mass(scale * maps, target).sum().backward()
    assert scale.grad.item() == pytest.approx(0.0, abs=1e-6)  # no reward for collapsing
    live = maps.clone().requires_grad_(True)
    outside_mass(live, target).sum().backward()
    inside, outside = live.grad[0, 0][target[0] > 0], live.grad[0, 0][target[0] == 0]
    assert (inside < 0).all() and (outside > 0).all()  # descent moves attention into the region
