"""The one place that decides device, dtype and memory options (the VRAM profile)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class VramProfile:
    """Memory options for training on a GPU of a given size."""

    name: str
    vram_gb: int
    mixed_precision: str = "fp16"
    """"fp16", "bf16" or "no"; CPU runs always use fp32."""
    use_8bit_adam: bool = True
    """bitsandbytes AdamW8bit: optimiser state about 4x smaller than torch AdamW."""
    gradient_checkpointing: bool = True
    """Non-reentrant, so the Attention Refocusing maps keep their graph."""
    vae_slicing: bool = True
    train_text_encoder: bool = True
    """LoRA on the text encoder in phase 2 (off frees its activations)."""
    identity_face_window: bool = True
    """Decode only the latent window around the face for the identity loss."""
    identity_reuse_pass: bool = True
    """Reuse the reconstruction UNet pass for the identity branch when the timestep allows it."""


PROFILES: dict[str, VramProfile] = {
    "6gb": VramProfile("6gb", 6, train_text_encoder=False),
    "8gb": VramProfile("8gb", 8),
    "12gb": VramProfile("12gb", 12),
    "24gb": VramProfile("24gb", 24, use_8bit_adam=False, gradient_checkpointing=False, vae_slicing=False),
}
CPU_PROFILE = VramProfile("cpu", 0, mixed_precision="no", gradient_checkpointing=False, vae_slicing=False)


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


def detect_profile(device: torch.device | None = None) -> VramProfile:
    """The largest profile that fits the GPU; the CPU profile without one."""
    device = device or pick_device()
    total = gpu_memory_gb(device)
    if total is None:
        return CPU_PROFILE if device.type == "cpu" else PROFILES["8gb"]
    fitting = [p for p in PROFILES.values() if p.vram_gb <= total + 0.5]
    profile = max(fitting, key=lambda p: p.vram_gb) if fitting else PROFILES["6gb"]
    import torch

    if profile.mixed_precision == "fp16" and torch.cuda.is_bf16_supported():
        profile = replace(profile, mixed_precision="bf16")
    return profile


def lower_profile(name: str) -> VramProfile | None:
    """The next smaller profile (for out-of-memory advice), or None at the bottom."""
    ordered = sorted(PROFILES.values(), key=lambda p: p.vram_gb)
    names = [p.name for p in ordered]
    if name not in names or names.index(name) == 0:
        return None
    return ordered[names.index(name) - 1]
