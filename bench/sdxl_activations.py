"""``python -m bench.sdxl_activations``: SDXL's training activations counted without a GPU.

SDXL 1.0 base's UNet (``assets/sdxl/unet``) and VAE (``assets/sdxl/vae``) are built on PyTorch's
``meta`` device (shapes, no memory, no arithmetic) and run once at 1024 px in fp16; a
``saved_tensors_hooks`` pack hook adds up every tensor autograd keeps for the backward pass (each
storage once, weights left out). The UNet's LoRA targets (attention projections and ``ff.net.0.proj``)
are marked trainable, so each keeps its input as its LoRA would. Square attention-probability
matrices (1024 tokens or more a side) are left out: a GPU's flash or memory-efficient attention
keeps none (the cross-attention maps, 77 keys wide, are kept).

With gradient checkpointing (diffusers checkpoints each resnet and each transformer model of the
down, mid and up blocks) a step keeps the blocks' inputs and what lies outside them, and during
the backward pass recomputes one block at a time: the peak adds the largest block's activations.
The identity branch decodes a latent window with gradient through TAESD-XL's decoder (fp16, the
default) or, with ``identity_decoder="vae"``, the VAE's (bf16).
`engine.preflight.arithmetic` holds the figures this prints; run it again when diffusers changes.
"""

from __future__ import annotations

import json
from typing import Any

GIB = 2**30
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj")
WINDOWS = (32, 48, 64)
"""Latent sides of the identity branch's face window (x8 pixels)."""


class SavedBytes:
    """A pack hook adding up the bytes autograd saves, per innermost tagged block."""

    def __init__(self, skip: set[int]) -> None:
        self.skip = skip
        self.seen: set[int] = set()
        self.kept: list[Any] = []
        self.by_block: dict[str, int] = {}
        self.block = ["outside"]

    def pack(self, tensor: Any) -> Any:
        base = tensor if tensor._base is None else tensor._base
        square = base.dim() >= 3 and base.shape[-1] == base.shape[-2] >= 1024
        if id(tensor) in self.skip or square or id(base) in self.seen:
            return tensor
        self.seen.add(id(base))
        self.kept.append(base)
        name = self.block[-1]
        self.by_block[name] = self.by_block.get(name, 0) + base.numel() * base.element_size()
        return tensor


def _tag(blocks: dict[str, Any], saved: SavedBytes) -> dict[str, int]:
    """Count what each of ``blocks`` saves apart; returns each block's input bytes (filled as they run)."""
    inputs: dict[str, int] = {}

    def enter(module: Any, args: tuple, kwargs: dict) -> None:
        saved.block.append(module.tag)
        first = args[0] if args else kwargs["hidden_states"]
        inputs[module.tag] = first.numel() * first.element_size()

    def leave(*_: Any) -> None:
        saved.block.pop()

    for name, module in blocks.items():
        module.tag = name
        module.register_forward_pre_hook(enter, with_kwargs=True)
        module.register_forward_hook(leave)
    return inputs


def _figures(saved: SavedBytes, inputs: dict[str, int]) -> dict[str, Any]:
    """Saved GiB without checkpointing, and with it: inputs and what lies outside the blocks, plus the
    largest block recomputed."""
    blocks = {k: v for k, v in saved.by_block.items() if k != "outside"}
    largest = max(blocks, key=blocks.__getitem__)
    kept = saved.by_block.get("outside", 0) + sum(inputs.values())
    return {
        "no_checkpointing_gib": round(sum(saved.by_block.values()) / GIB, 3),
        "checkpointed_kept_gib": round(kept / GIB, 3),
        "largest_block": largest,
        "largest_block_gib": round(blocks[largest] / GIB, 3),
        "checkpointed_peak_gib": round((kept + blocks[largest]) / GIB, 3),
    }


def unet_activations(resolution: int = 1024) -> dict[str, Any]:
    """Saved bytes of one SDXL UNet forward pass: without checkpointing, and the checkpointed peak."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from engine.families.sdxl import SDXL_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_CONFIG / "unet"))
        unet = unet.to(torch.float16)
    unet.requires_grad_(False)
    targets = [m for n, m in unet.named_modules() if n.endswith(LORA_TARGETS)]
    for module in targets:
        module.weight.requires_grad_(True)
    saved = SavedBytes({id(p) for p in unet.parameters()})
    blocks = {
        name: module
        for name, module in unet.named_modules()
        if isinstance(module, ResnetBlock2D | Transformer2DModel) and name.startswith(("down", "mid", "up"))
    }
    inputs = _tag(blocks, saved)
    latent = resolution // 8

    def meta(*shape: int) -> Any:
        return torch.zeros(*shape, device="meta", dtype=torch.float16)

    added = {"text_embeds": meta(1, 1280), "time_ids": meta(1, 6)}
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        unet(meta(1, 4, latent, latent), torch.tensor([500], device="meta"), meta(1, 77, 2048),
             added_cond_kwargs=added)  # fmt: skip
    return {
        "resolution": resolution,
        "lora_targets": len(targets),
        "lora_params_rank4": sum(4 * (m.in_features + m.out_features) for m in targets),
        **_figures(saved, inputs),
    }


def vae_decode_activations(sides: tuple[int, ...] = WINDOWS) -> dict[str, dict[str, Any]]:
    """Saved bytes of the SDXL VAE decoding a ``side`` x ``side`` latent window with gradient, bf16;
    with checkpointing as diffusers' decoder does it (its mid block and each up block)."""
    import torch
    from diffusers import AutoencoderKL

    from engine.families.sdxl import SDXL_CONFIG

    figures = {}
    for side in sides:
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL_CONFIG / "vae")).to(torch.bfloat16)
        vae.requires_grad_(False)
        saved = SavedBytes({id(p) for p in vae.parameters()})
        decoder = vae.decoder
        blocks = {"mid_block": decoder.mid_block}
        blocks |= {f"up_blocks.{i}": block for i, block in enumerate(decoder.up_blocks)}
        inputs = _tag(blocks, saved)
        latent = torch.zeros(1, 4, side, side, device="meta", dtype=torch.bfloat16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            vae.decode(latent)
        figures[f"{side}x{side}"] = _figures(saved, inputs)
    return figures


def taesd_decode_activations(sides: tuple[int, ...] = WINDOWS) -> dict[str, Any]:
    """Saved bytes of TAESD-XL (`AutoencoderTiny`'s defaults: TAESD's architecture) decoding a ``side`` x
    ``side`` latent window with gradient, fp16; diffusers checkpoints its decoder as one block."""
    import torch
    from diffusers import AutoencoderTiny

    with torch.device("meta"):
        taesd = AutoencoderTiny().to(torch.float16)
    taesd.requires_grad_(False)
    figures: dict[str, Any] = {
        "parameters": sum(p.numel() for p in taesd.parameters()),  # loaded whole: the encoder too
        "decoder_parameters": sum(p.numel() for p in taesd.decoder.parameters()),
    }
    for side in sides:
        saved = SavedBytes({id(p) for p in taesd.parameters()})
        inputs = _tag({"layers": taesd.decoder.layers}, saved)
        latent = torch.zeros(1, 4, side, side, device="meta", dtype=torch.float16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            taesd.decode(latent)
        figures[f"{side}x{side}"] = _figures(saved, inputs)
    return figures


def main() -> None:
    figures = {
        "unet": unet_activations(),
        "vae_decode_gib": vae_decode_activations(),
        "taesd_decode_gib": taesd_decode_activations(),
    }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
