"""A run's current weights as an artefact file: the LoRA (when injected), the two embeddings, metadata."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engine.data import composed_prompt
from engine.store import now
from engine.training.options import lora_configs

if TYPE_CHECKING:
    from engine.training.loop import Trainer

ARTEFACT = "final.safetensors"
PREVIEW_WEIGHTS = "artefact.safetensors"
"""The weights of a preview checkpoint, in the artefact format."""
RECOMMENDED = {
    "unet_scale": 0.6,
    "text_encoder_scale": 0.9,
    "sampler": "euler_a",
    "steps": 50,
    "guidance": 7.0,
}
"""The released inference settings (METHOD.md section 7), stored in the artefact."""


def save_weights(trainer: Trainer, path: Path, with_lora: bool, **details: Any) -> Path:
    """An artefact of the trainer's current weights: the LoRA (when injected), the two embeddings of
    each text encoder, and metadata plus ``details``."""
    from engine.artefact import save_artefact

    config, base = trainer.config, trainer.base
    configs = lora_configs(config, trainer.options.train_text_encoder, base.family) if with_lora else {}
    loras = {
        name: lora_state(getattr(base, name)) if name in configs else {}
        for name in ("unet", *base.family.text_encoders)
    }
    tokens = (config.identity_token, config.style_token)
    rows = {
        name: dict(zip(tokens, embedding.rows.detach(), strict=True))
        for name, embedding in trainer.placeholders.items()
    }
    metadata = {
        "format": 1,
        "base_model": base.source,
        "family": base.family.name,
        "preset": config.preset,
        "run": trainer.run_id,
        "tokens": {"identity": config.identity_token, "style": config.style_token},
        "prompt": composed_prompt(config.identity_token, config.style_token),
        "resolution": config.resolution,
        "lora": configs,
        "recommended": RECOMMENDED,
        "config": config.to_dict(),
        "created": now(),
        **details,
    }
    return save_artefact(
        path,
        loras["unet"],
        loras["text_encoder"],
        rows["text_encoder"],
        metadata,
        text_lora_2=loras.get("text_encoder_2"),
        embeddings_2=rows.get("text_encoder_2"),
    )


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights of a peft-injected module under peft's saved names (adapter name dropped)."""
    return {k.replace(".default.", "."): v for k, v in module.state_dict().items() if "lora_" in k}
