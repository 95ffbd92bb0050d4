"""Attention Refocusing: capture the placeholder tokens' cross-attention and penalise it outside its region.

`install_capture` sets a `CaptureProcessor` (diffusers' attention-processor extension point) on
the AR layers only, as the model family chooses them (`ModelFamily.ar_layer_names`; for SD 1.x the
cross-attention (attn2) of the blocks two levels down the UNet: the 16x16 layers of SD 1.5 at
512 px, ``down_blocks.2`` and ``up_blocks.1``); every other layer keeps its fused SDPA processor.
The capture processor computes the softmax explicitly and hands the probabilities, with their
graph, to an `AttentionStore`. Under non-reentrant gradient checkpointing the recorded maps keep
their graph, so the AR loss reaches the LoRA weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from engine.families import detect_family

if TYPE_CHECKING:
    from engine.families import ModelFamily


@dataclass
class AttentionStore:
    """Attention probabilities of the AR layers, per layer ``[batch, heads, queries, tokens]``.

    Off by default. `record` keeps the live tensors (one forward) for the loss, or with
    ``accumulate`` sums detached maps over calls (sampling previews).
    """

    active: bool = False
    accumulate: bool = False
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: int = 0

    def start(self, accumulate: bool = False) -> None:
        self.maps, self.calls, self.active, self.accumulate = {}, 0, True, accumulate

    def stop(self) -> None:
        self.active = False

    def record(self, name: str, probs: torch.Tensor) -> None:
        if not self.active:
            return
        if not self.accumulate:
            self.maps[name] = probs
            return
        probs = probs.detach().float()
        self.maps[name] = self.maps[name] + probs if name in self.maps else probs
        self.calls += 1

    def token_maps(self, positions: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Square maps ``[n, layers*heads, h, w]`` of the token at ``positions[i]`` in batch row ``rows[i]``."""
        if not self.maps:
            raise RuntimeError("No attention was recorded; start the store before the UNet call.")
        rows = torch.arange(len(positions)) if rows is None else rows
        selected = []
        for probs in self.maps.values():
            picked = probs[rows.to(probs.device)]  # [n, heads, queries, tokens]
            index = (
                positions.to(probs.device).view(-1, 1, 1, 1).expand(-1, picked.shape[1], picked.shape[2], 1)
            )
            selected.append(picked.gather(-1, index).squeeze(-1))
        maps = torch.cat(selected, dim=1)
        side = math.isqrt(maps.shape[-1])
        if side * side != maps.shape[-1]:
            raise ValueError(f"Attention maps of {maps.shape[-1]} queries are not square.")
        return maps.view(maps.shape[0], maps.shape[1], side, side)


class CaptureProcessor:
    """Cross-attention with an explicit softmax whose probabilities go to an `AttentionStore`.

    Same maths as diffusers' ``AttnProcessor`` (and the same result as SDPA); calls ``attn.to_q``
    and friends normally, so peft LoRA layers on them are used.
    """

    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.store.record(self.name, probs.unflatten(0, (batch, attn.heads)))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def ar_layer_names(unet, family: ModelFamily | None = None) -> list[str]:
    """Processor names of the AR layers of ``unet``, as ``family`` (by default its config's) chooses them."""
    family = family or detect_family("This UNet", unet_config=unet.config)
    return family.ar_layer_names(unet)


def install_capture(unet, store: AttentionStore, family: ModelFamily | None = None) -> list[str]:
    """Put `CaptureProcessor` on the AR layers (SDPA everywhere else); returns their names."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    names = ar_layer_names(unet, family)
    processors = {
        name: CaptureProcessor(store, name) if name in names else AttnProcessor2_0()
        for name in unet.attn_processors
    }
    unet.set_attn_processor(processors)
    return names


def refocusing_loss(maps: torch.Tensor, target: torch.Tensor, detach_range: bool = True) -> torch.Tensor:
    """AR loss per (sample, token) pair: ``maps [n, k, h, w]`` at attention resolution, ``target [n, H, W]`` in {0, 1}.

    Each of the k maps is upsampled bilinearly to the target size and min-max rescaled to [0, 1]
    with its min and max detached (kept in the graph when ``detach_range`` is False); their mean S
    is compared with the target only outside it:
    ``mean(((S - M) * (1 - M))**2)`` over pixels. Returns ``[n]``.
    """
    maps = F.interpolate(maps.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
    low, high = maps.amin(dim=(-2, -1), keepdim=True), maps.amax(dim=(-2, -1), keepdim=True)
    if detach_range:
        low, high = low.detach(), high.detach()
    scaled = (maps - low) / (high - low).clamp_min(1e-8)
    target = target.to(scaled)
    outside = (scaled.mean(dim=1) - target) * (1 - target)
    return outside.pow(2).mean(dim=(-2, -1))


def outside_mass(maps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of a token's attention that falls outside its target region, per pair ``[n]``.

    ``maps [n, k, h, w]`` are probabilities at attention resolution; the mean map is upsampled to
    the target size and normalised to sum 1 before the share is taken. Differentiable: with
    ``ar_loss="outside_share"`` it is the AR loss, whose value a uniform shrink of the map leaves
    unchanged (its minimum is all mass inside the region, not a collapse).
    """
    mean = F.interpolate(
        maps.float().mean(dim=1, keepdim=True), size=target.shape[-2:], mode="bilinear", align_corners=False
    )
    mean = mean[:, 0].clamp_min(0)
    mean = mean / mean.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(mean.dtype).tiny)
    return (mean * (1 - target.to(mean))).sum(dim=(-2, -1)) / mean.sum(dim=(-2, -1)).clamp_min(1e-12)
