"""The model-family contract: what the engine asks a base-model family, and the answer types.

Kept apart from the registry (`engine.families`) so that each family module imports the contract
without importing the registry that lists it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from torch import nn

    from engine.demo.sd import TinySD
    from engine.models import BaseModel


@dataclass(frozen=True)
class PromptStates:
    """What the UNet is conditioned on for a batch of prompts."""

    hidden_states: torch.Tensor
    """``encoder_hidden_states`` ``[batch, tokens, width]``."""
    added_cond: dict[str, torch.Tensor] | None = None
    """The UNet's ``added_cond_kwargs`` (SDXL: ``text_embeds``, the pooled embedding, and ``time_ids``); None for SD 1.x."""


class ModelFamily(Protocol):
    """A family of base models (SD 1.x, SDXL): everything in the engine that differs between families.

    The loader picks the family of a base model (`engine.families.detect_family`, from a single
    file's tensor names or a diffusers UNet config) and the `BaseModel` carries it; the rest of the
    engine asks it instead of assuming one family. A family module holds no state and imports torch
    and diffusers only inside its methods. Component names are `BaseModel` attributes
    (``"unet"``, ``"text_encoder"``...).

    Detection and loading:
    ``checkpoint_prefixes`` (tensor-name prefixes every full single-file checkpoint has),
    `recognises_checkpoint`, `recognises_config`, `load_components`, `load_single_file`.
    Sampling: `pipeline`. Training: ``text_encoders`` (in `encode_prompt` order), `encode_prompt`,
    `latent_scale`, `lora_target_modules`, the Attention Refocusing layers (`ar_layer_names`) and
    their map size (`ar_map_size`), ``native_resolution``, ``tiny_decoder``. Export: ``kohya_prefixes``,
    ``kohya_base_version``, ``embedding_keys``. Demo kit: `build_tiny`.
    """

    name: str
    """Short id recorded in artefacts (``"sd1"``)."""
    label: str
    """Name in messages (``"SD 1.x"``)."""
    native_resolution: int
    """Image side the family's models were trained at, in pixels."""
    text_encoders: tuple[str, ...]
    """Components that encode prompts, in the order `encode_prompt` takes them."""
    checkpoint_prefixes: tuple[str, ...]
    kohya_prefixes: Mapping[str, str]
    """Component -> prefix of its LoRA keys in the kohya layout that AUTOMATIC1111 and ComfyUI read."""
    kohya_base_version: str
    """``ss_base_model_version`` of a kohya LoRA file."""
    embedding_keys: Mapping[str, str]
    """Text encoder -> tensor name of its rows in an AUTOMATIC1111/ComfyUI embedding file."""
    tiny_decoder: str | None
    """Hub id of the family's TAESD (``identity_decoder="tiny"``); None: none yet, the VAE decodes."""

    def recognises_checkpoint(self, keys: Collection[str]) -> bool:
        """Whether a single file with these tensor names is a full checkpoint of this family."""
        ...

    def recognises_config(self, unet_config: Mapping[str, Any]) -> bool:
        """Whether a diffusers model with this ``unet/config.json`` belongs to this family."""
        ...

    def load_components(
        self, source: str, dtype: torch.dtype, *, allow_pickle: bool, local_files_only: bool
    ) -> dict[str, Any]:
        """`BaseModel` components of a diffusers folder or hub repo (the DDPM training schedule as
        ``noise_scheduler``); safetensors weights only unless ``allow_pickle``."""
        ...

    def load_single_file(self, path: Path, dtype: torch.dtype, config: Path | None) -> dict[str, Any]:
        """`BaseModel` components of one checkpoint file, with component configs from the diffusers
        folder ``config`` (None: the family's own copy), offline."""
        ...

    def pipeline(self, base: BaseModel, scheduler: Any) -> Any:
        """The family's diffusers pipeline over ``base``'s modules with ``scheduler``, no safety checker."""
        ...

    def encode_prompt(
        self, encoders: Sequence[nn.Module], input_ids: torch.Tensor, resolution: int | None = None
    ) -> PromptStates:
        """Encoder states of prompts tokenised by the base's ``tokenizer``; ``encoders`` are the
        ``text_encoders`` components; ``resolution``: the side of the square images the states
        condition (SDXL's size ids), None for ``native_resolution``."""
        ...

    def latent_scale(self, vae: nn.Module) -> float:
        """Factor from VAE latents to the UNet's latent scale (divided out before decoding)."""
        ...

    def lora_target_modules(
        self, unet: Sequence[str], text: Sequence[str], cross_attention_only: bool
    ) -> dict[str, Any]:
        """peft ``target_modules`` per component, from the module-name suffixes of the UNet and text
        encoders; ``cross_attention_only`` keeps the UNet's cross-attention projections only."""
        ...

    def ar_layer_names(self, unet: nn.Module) -> list[str]:
        """Attention-processor names of the cross-attention layers the AR loss reads."""
        ...

    def ar_map_size(self, resolution: int) -> int:
        """Side of the AR layers' attention maps for square images of ``resolution`` pixels."""
        ...

    def build_tiny(self, folder: Path, seed: int = 0) -> TinySD:
        """A tiny model of the family (random weights, real classes and file formats) as a diffusers
        folder and one single file under ``folder``."""
        ...


def cross_attention_layers(unet: nn.Module, level: int) -> list[str]:
    """Processor names of the cross-attention (attn2) of every transformer at UNet resolution ``level``.

    Level 0 is the latent size; level ``level`` is the down block of that index and the up block
    that mirrors it.
    """
    levels = len(unet.down_blocks)
    if levels <= level:
        raise ValueError(
            f"The UNet has {levels} resolution levels; Attention Refocusing needs at least {level + 1}."
        )
    prefixes = (f"down_blocks.{level}.attentions.", f"up_blocks.{levels - 1 - level}.attentions.")
    names = [n for n in unet.attn_processors if n.startswith(prefixes) and n.endswith("attn2.processor")]
    if not names:
        raise ValueError(
            "The UNet has no cross-attention at the Attention Refocusing level; is it a UNet of this family?"
        )
    return names


def unet_lora_targets(modules: Sequence[str], cross_attention_only: bool) -> Any:
    """peft ``target_modules`` of the UNet: the module names, or a pattern for their cross-attention projections only."""
    if not cross_attention_only:
        return list(modules)
    projections = "|".join(re.escape(name) for name in modules if name.startswith("to_"))
    return rf".*attn2\.({projections})"
