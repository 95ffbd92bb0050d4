"""The trained artefact: one ``.safetensors`` file with the LoRA, the two embeddings and metadata.

Keys follow diffusers' LoRA format (what ``StableDiffusionLoraLoaderMixin.save_lora_weights`` writes
for peft adapters): ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` and ``text_encoder.<module>...``,
plus ``embeddings.<token>`` for the placeholder tokens. The file's metadata holds ``magicapture``
(JSON: base model, tokens, preset...) and diffusers' ``lora_adapter_metadata`` (the LoRA ranks and
alphas), so generation can apply it with ``pipe.load_lora_weights(path)`` and
``pipe.load_textual_inversion(artefact.embeddings[token], token=token)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.store import atomic_path

if TYPE_CHECKING:
    import torch

METADATA_KEY = "magicapture"
LORA_METADATA_KEY = "lora_adapter_metadata"
"""diffusers' key for the LoraConfig arguments (rank, alpha, targets) of each model."""
PREFIXES = {"unet": "unet.", "text_encoder": "text_encoder.", "embeddings": "embeddings."}


class ArtefactError(Exception):
    """A file is not a readable MagiCapture artefact; the message names it."""


@dataclass
class Artefact:
    """A loaded artefact; LoRA keys are given without their ``unet.``/``text_encoder.`` prefix."""

    unet_lora: dict[str, torch.Tensor]
    text_lora: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor]
    """Token -> embedding row ``[hidden]``."""
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_artefact(
    path: Path,
    unet_lora: dict[str, torch.Tensor],
    text_lora: dict[str, torch.Tensor],
    embeddings: dict[str, torch.Tensor],
    metadata: dict[str, Any],
) -> Path:
    """Write the artefact atomically.

    ``metadata["lora"]`` may map ``"unet"`` / ``"text_encoder"`` to their LoraConfig arguments
    (``r``, ``lora_alpha``, ``target_modules``...); they are stored where diffusers reads them.
    """
    from safetensors.torch import save_file

    tensors = {}
    for prefix, part in ((PREFIXES["unet"], unet_lora), (PREFIXES["text_encoder"], text_lora), (PREFIXES["embeddings"], embeddings)):
        for key, value in part.items():
            tensors[prefix + key] = value.detach().to("cpu").contiguous()
    header = {"format": "pt", METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str)}
    adapters = {
        f"{name}.{key}": value
        for name, config in metadata.get("lora", {}).items()
        if (unet_lora if name == "unet" else text_lora)
        for key, value in config.items()
    }
    if adapters:
        header[LORA_METADATA_KEY] = json.dumps(adapters, sort_keys=True)
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


def load_artefact(path: Path) -> Artefact:
    """Read an artefact written by `save_artefact`."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    parts: dict[str, dict[str, Any]] = {name: {} for name in PREFIXES}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            for key in handle.keys():
                name = next((n for n, p in PREFIXES.items() if key.startswith(p)), None)
                if name is None:
                    raise ArtefactError(f"{path.name} has an unexpected tensor {key!r}; it is not a MagiCapture artefact.")
                parts[name][key[len(PREFIXES[name]) :]] = handle.get_tensor(key)
    except FileNotFoundError as error:
        raise ArtefactError(f"There is no artefact at {path}.") from error
    except (SafetensorError, OSError) as error:
        raise ArtefactError(f"{path} is not a readable .safetensors file ({error}).") from error
    if METADATA_KEY not in header:
        raise ArtefactError(f"{path.name} has no MagiCapture metadata; it is not an artefact of this app.")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ArtefactError(f"The metadata of {path.name} is damaged ({error}).") from error
    return Artefact(parts["unet"], parts["text_encoder"], parts["embeddings"], metadata, path)
