"""A tiny SDXL artefact made without training: LoRA injected into copies of the UNet and both text
encoders, random ``lora_B`` weights and random rows for both encoders, saved as the trainer saves it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from fixtures_outputs import RUN, TEXT_TARGETS, TOKENS, UNET_TARGETS

ENCODERS = ("text_encoder", "text_encoder_2")
RESOLUTION = 96
"""The artefact's training resolution: not the tiny SDXL's native 64, so sizes taken from it show."""


@dataclass
class TinySDXLLora:
    """The peft-injected copies the artefact was taken from, by `BaseModel` component name."""

    modules: dict[str, torch.nn.Module]
    path: Path


def make_sdxl_artefact(path: Path, base, *, rank: int = 4, alpha: float = 8.0, seed: int = 0) -> TinySDXLLora:
    """A LoRA on the UNet and both text encoders and both encoders' rows of the two tokens."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from engine.artefact import save_artefact

    torch.manual_seed(seed)
    targets = base.family.lora_target_modules(UNET_TARGETS, TEXT_TARGETS, False)
    configs = {
        name: {
            "r": rank,
            "lora_alpha": alpha,
            "init_lora_weights": "gaussian",
            "target_modules": targets[name],
        }
        for name in ("unet", *ENCODERS)
    }
    modules = {
        name: inject_adapter_in_model(LoraConfig(**config), copy.deepcopy(getattr(base, name))).eval()
        for name, config in configs.items()
    }
    with torch.no_grad():
        for module in modules.values():
            for name, parameter in module.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.3)
    rows = {
        name: {token: torch.randn(getattr(base, name).config.hidden_size) * 0.5 for token in TOKENS.values()}
        for name in ENCODERS
    }
    metadata = {
        "format": 1,
        "family": "sdxl",
        "base_model": str(base.source),
        "run": RUN,
        "tokens": dict(TOKENS),
        "resolution": RESOLUTION,
        "lora": configs,
    }
    lora = {name: get_peft_model_state_dict(module) for name, module in modules.items()}
    save_artefact(
        path,
        lora["unet"],
        lora["text_encoder"],
        rows["text_encoder"],
        metadata,
        text_lora_2=lora["text_encoder_2"],
        embeddings_2=rows["text_encoder_2"],
    )
    return TinySDXLLora(modules, path)
