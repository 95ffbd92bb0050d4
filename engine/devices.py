"""The one place that decides device, dtype and memory options (the VRAM profile)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine.errors import UserError

if TYPE_CHECKING:
    import torch


class ProfileError(UserError, ValueError):
    """A memory profile named for a family that has none of that size; the message lists the family's."""


@dataclass(frozen=True)
class VramProfile:
    """Memory options for training one model family on a GPU of a given size."""

    name: str
    vram_gb: int
    family: str = "sd1"
    """The `engine.families` name of the family the profile is for."""
    mixed_precision: str = "fp16"
    """"fp16", "bf16" or "no"; CPU runs always use fp32."""
    use_8bit_adam: bool = True
    """bitsandbytes AdamW8bit: optimiser state about 4x smaller than torch AdamW."""
    gradient_checkpointing: bool = True
    """Non-reentrant, so the Attention Refocusing maps keep their graph."""
    vae_slicing: bool = True
    train_text_encoder: bool = True
    """LoRA on the text encoder(s) in phase 2 (off frees their activations)."""
    identity_face_window: bool = True
    """Decode only the latent window around the face for the identity loss."""
    identity_reuse_pass: bool = True
    """Reuse the reconstruction UNet pass for the identity branch when the timestep allows it."""


def _table(*profiles: VramProfile) -> dict[str, VramProfile]:
    return {profile.name: profile for profile in profiles}


PROFILES: dict[str, VramProfile] = _table(
    VramProfile("6gb", 6, train_text_encoder=False),
    VramProfile("8gb", 8),
    VramProfile("12gb", 12),
    VramProfile("24gb", 24, use_8bit_adam=False, gradient_checkpointing=False, vae_slicing=False),
)
"""SD 1.x at 512 px."""
SDXL_PROFILES: dict[str, VramProfile] = _table(
    VramProfile("12gb", 12, "sdxl", train_text_encoder=False),
    VramProfile("16gb", 16, "sdxl"),
    VramProfile("24gb", 24, "sdxl", use_8bit_adam=False),
)
"""SDXL at 1024 px: its fp16 weights alone take 6.5 GB, so every profile keeps gradient
checkpointing and the 12 GB one trains UNet-only LoRA (kohya's SDXL default). Latents are
cached (`engine.data`), but the text encoders' outputs are not: every training prompt holds
``<sks>`` or ``<style1>``, whose rows train in both phases, so the hidden states and bigG's pooled
embedding change at every step. Only the added time ids depend on nothing trained, and they are a
constant of the resolution. The figures behind each size are in `engine.preflight.arithmetic`."""
UNKNOWN_FAMILY = "unknown"
"""The family of a base model that cannot be read before it loads (`engine.preflight.model_family`)."""
EITHER_PROFILES: dict[str, VramProfile] = _table(
    *sorted({**PROFILES, **SDXL_PROFILES}.values(), key=lambda profile: profile.vram_gb)
)
"""For a base model of unknown family: at each size the profile that suits either family. SDXL's
where both have one (each of its options as frugal as SD 1.x's of the size: SD 1.x trains more
slowly or, at 12 GB, without text-encoder LoRA), SD 1.x's on GPUs too small for SDXL."""
FAMILY_PROFILES: dict[str, dict[str, VramProfile]] = {
    "sd1": PROFILES,
    "sdxl": SDXL_PROFILES,
    UNKNOWN_FAMILY: EITHER_PROFILES,
}
CPU_PROFILE = VramProfile("cpu", 0, mixed_precision="no", gradient_checkpointing=False, vae_slicing=False)
"""Every family on the CPU (fp32)."""


def profiles_for(family: str = "sd1") -> dict[str, VramProfile]:
    """The GPU profiles of the family called ``family`` (or `UNKNOWN_FAMILY`), by name, smallest first."""
    return FAMILY_PROFILES.get(family, PROFILES)


def fitting_profile(total_gb: float, family: str = "sd1") -> VramProfile:
    """The family's largest profile that fits ``total_gb`` of GPU memory; its smallest if none does."""
    ordered = sorted(profiles_for(family).values(), key=lambda p: p.vram_gb)
    fitting = [p for p in ordered if p.vram_gb <= total_gb + 0.5]
    return fitting[-1] if fitting else ordered[0]


def profile_named(name: str, family: str = "sd1") -> VramProfile:
    """The profile ``name`` ("cpu", "12gb"...) of ``family``; a size the family has no profile
    called so takes the family's largest profile for a GPU of that size.

    Raises `ProfileError` when the family has no profile that small.
    """
    if name == "cpu":
        return CPU_PROFILE
    table = profiles_for(family)
    if name in table:
        return table[name]
    size = float(name.removesuffix("gb")) if name.removesuffix("gb").isdigit() else 0.0
    smaller = [p for p in table.values() if p.vram_gb <= size]
    if not smaller:
        label = {"sdxl": "SDXL"}.get(family, "SD 1.x")
        raise ProfileError(
            f"The '{name}' memory profile is too small for {label}; choose one of "
            f"{', '.join(table)} (or auto)."
        )
    return max(smaller, key=lambda p: p.vram_gb)


def pick_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given, else CUDA, then Apple MPS, then CPU."""
    import torch

    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, preferred: str | None = None) -> torch.dtype:
    """Weights dtype for inference: fp16 on CUDA/MPS (bf16 if asked and supported), fp32 on CPU."""
    import torch

    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if preferred:
        if preferred not in names:
            raise ValueError(f"Unknown dtype {preferred!r}; choose one of {', '.join(names)}.")
        return names[preferred]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def gpu_memory_gb(device: torch.device) -> float | None:
    """Total memory of a CUDA device in GiB, or None elsewhere."""
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2**30


def detect_profile(device: torch.device | None = None, family: str = "sd1") -> VramProfile:
    """The family's largest profile that fits the GPU; the CPU profile without one."""
    device = device or pick_device()
    total = gpu_memory_gb(device)
    if total is None:
        return CPU_PROFILE if device.type == "cpu" else fitting_profile(8, family)
    profile = fitting_profile(total, family)
    import torch

    if profile.mixed_precision == "fp16" and torch.cuda.is_bf16_supported():
        profile = replace(profile, mixed_precision="bf16")
    return profile


def lower_profile(name: str, family: str = "sd1") -> VramProfile | None:
    """The family's next smaller profile (for out-of-memory advice), or None at the bottom."""
    ordered = sorted(profiles_for(family).values(), key=lambda p: p.vram_gb)
    names = [p.name for p in ordered]
    if name not in names or names.index(name) == 0:
        return None
    return ordered[names.index(name) - 1]
