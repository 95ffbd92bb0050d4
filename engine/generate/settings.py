"""What to sample (`GenerationSettings`, checked when made) and `GenerationError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import UserError

DEFAULT_NEGATIVE_PROMPT = (
    "blurry, lowres, out of focus, deformed face, asymmetric eyes, distorted features, bad anatomy, "
    "extra limbs, watermark, text, signature, jpeg artifacts, oversaturated"
)
"""Portrait-oriented negative prompt used unless the user gives one."""


class GenerationError(UserError):
    """Generation cannot run as asked; the message says what to change."""


def _field(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class GenerationSettings:
    """What to sample; the defaults are the released inference settings (METHOD.md section 7)."""

    prompt_extra: str = _field(
        "",
        "Words added after the training wording, e.g. 'wearing a navy suit'. Text that contains a "
        "placeholder token (<sks>, <style1>...) is used as the whole prompt instead.",
    )
    negative_prompt: str = _field(DEFAULT_NEGATIVE_PROMPT, "What the image should not show.")
    seed: int = _field(0, "Seed of the first image; image i of the batch uses seed + i.")
    count: int = _field(1, "Number of images (batch count).")
    sampler: str = _field("euler_a", "euler_a (Euler ancestral), dpmpp_2m_karras (DPM++ 2M Karras) or ddim.")
    steps: int = _field(50, "Denoising steps.")
    guidance_scale: float = _field(7.0, "Classifier-free guidance (CFG) scale.")
    unet_lora_scale: float = _field(0.6, "Strength of the LoRA in the UNet (0 turns it off).")
    text_lora_scale: float = _field(0.9, "Strength of the LoRA in the text encoder (0 turns it off).")
    width: int | None = _field(
        None, "Image width in pixels (a multiple of 8); None: the base model's native size."
    )
    height: int | None = _field(
        None, "Image height in pixels (a multiple of 8); None: the base model's native size."
    )

    def __post_init__(self) -> None:
        from engine.models import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise GenerationError(f"Unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}.")
        if self.count < 1 or self.steps < 1:
            raise GenerationError(f"count and steps must be at least 1 (got {self.count} and {self.steps}).")
        if self.seed < 0 or self.seed + self.count > 2**63:
            raise GenerationError(f"The seed must be a non-negative 64-bit integer (got {self.seed}).")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value < 64 or value % 8):
                raise GenerationError(f"{name} must be a multiple of 8 of at least 64 pixels (got {value}).")
