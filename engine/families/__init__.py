"""Base-model families: the contract (`ModelFamily`), the registry, and detection.

One module per family (``sd1.py``, ``sdxl.py``) owns everything that differs between families; the
contract is in ``contract.py``. `engine.models.load_base` reads what a base model is made of (a
single file's tensor names through its bounded header reader, or a diffusers ``unet/config.json``),
asks `detect_family`, loads the components through the family and puts the family on the
`BaseModel`; from there the engine asks ``base.family``. Families that are recognised but not
supported (yet) are refused by name with `UnsupportedModel`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import UserError
from engine.families.contract import ModelFamily, PromptStates, cross_attention_layers
from engine.families.sd1 import SD1
from engine.families.sdxl import SDXL

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "ModelFamily",
    "PromptStates",
    "UnsupportedModel",
    "cross_attention_layers",
    "detect_family",
    "family_named",
]

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (SD1, SDXL)}
"""Supported families by name, in detection order."""
DEFAULT_FAMILY: ModelFamily = SD1
"""The family of a model whose make-up cannot be read before loading it (a pickle checkpoint)."""


class UnsupportedModel(UserError, ValueError):
    """A base model of a family the engine does not support; the message names what it looks like."""


@dataclass(frozen=True)
class _Recognised:
    """A family that is recognised only to be refused by name."""

    label: str
    key_prefixes: tuple[str, ...]
    """Tensor-name prefixes of its single-file checkpoints."""
    matches_config: Callable[[Mapping[str, Any]], bool]
    """Whether a diffusers ``unet/config.json`` is one of its models."""
    note: str | None = None
    """What to tell the user; None: the list of supported families."""

    def refusal(self, source: str, kind: str) -> str:
        *others, last = [f.label for f in FAMILIES.values()]
        supported = f"{', '.join(others)} and {last} are" if others else f"{last} is"
        return f"{source} is a {self.label} {kind}; {self.note or f'only {supported} supported'}."


UNSUPPORTED = (
    _Recognised(
        "Stable Diffusion XL refiner",
        ("conditioner.embedders.0.model.",),
        lambda c: c.get("addition_embed_type") == "text_time" and c.get("cross_attention_dim") == 1280,
        "the refiner only refines the last steps of another model's images. Use an SDXL base model "
        "or a fine-tune of it",
    ),
    _Recognised(
        "Flux/SD3", ("double_blocks.", "joint_blocks.", "model.diffusion_model.joint_blocks"), lambda c: False
    ),
    _Recognised(
        "Stable Diffusion 2.x", ("cond_stage_model.model.",), lambda c: c.get("cross_attention_dim") == 1024
    ),
)
"""Recognised families that are refused, checked before the supported ones."""


def family_named(name: str) -> ModelFamily:
    """The supported family called ``name`` (as recorded in an artefact's metadata)."""
    if name not in FAMILIES:
        raise UnsupportedModel(
            f"Unknown model family {name!r}; this version knows {', '.join(FAMILIES)}. Update MagiCapture."
        )
    return FAMILIES[name]


def detect_family(
    source: str, *, keys: Collection[str] | None = None, unet_config: Mapping[str, Any] | None = None
) -> ModelFamily:
    """The family of the base model ``source`` (named in messages) from what was read of it.

    ``keys``: the tensor names of a single ``.safetensors`` file; ``unet_config``: the
    ``unet/config.json`` of a diffusers folder or repo; neither: `DEFAULT_FAMILY` (a pickle file,
    whose names cannot be read without unpickling it). Raises `UnsupportedModel` for a recognised
    unsupported family, and for a file that is no family's full checkpoint (a LoRA, an embedding).
    """
    if keys is not None:
        return _checkpoint_family(source, keys)
    if unet_config is None:
        return DEFAULT_FAMILY
    for other in UNSUPPORTED:
        if other.matches_config(unet_config):
            raise UnsupportedModel(other.refusal(source, "model"))
    for family in FAMILIES.values():
        if family.recognises_config(unet_config):
            return family
    known = ", ".join(f.label for f in FAMILIES.values())
    raise UnsupportedModel(f"{source} is not a model of a known family ({known}).")


def _checkpoint_family(source: str, keys: Collection[str]) -> ModelFamily:
    for other in UNSUPPORTED:
        if any(k.startswith(other.key_prefixes) for k in keys):
            raise UnsupportedModel(other.refusal(source, "checkpoint"))
    for family in FAMILIES.values():
        if family.recognises_checkpoint(keys):
            return family
    closest = max(
        FAMILIES.values(),
        key=lambda f: sum(any(k.startswith(p) for k in keys) for p in f.checkpoint_prefixes),
    )
    missing = [p for p in closest.checkpoint_prefixes if not any(k.startswith(p) for k in keys)]
    raise UnsupportedModel(
        f"{source} is not a full {closest.label} checkpoint (no {', '.join(missing)} weights). "
        "A LoRA or embedding file is not a base model."
    )
