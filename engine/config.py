"""Training configuration: every knob of the method in one dataclass, and the presets.

Each field has a default (the authors' released, effective values), a one-line help and, where it
is a number or a choice, the allowed range; `TrainingConfig` refuses anything outside it with a
`ConfigError`. Presets: ``released`` (default), ``paper`` (the paper's stated values, with real
gradient accumulation) and ``fast`` (fewer steps for a first look). Memory options left at ``None``
come from the VRAM profile (`engine.devices`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from engine.errors import UserError
from engine.models import DEFAULT_BASE

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
"""The devices torch trains on that a setting may name."""
MAX_TOKEN_BYTES = 64
"""The most UTF-8 bytes of a placeholder token's exported word (the token without ``<>``, as
`engine.store.safe_name` keeps it): an embedding is exported as ``<project>-<word>.safetensors``,
and with the longest project folder name (`engine.store.MAX_NAME_BYTES`) and an atomic write's
temporary name that still fits a 255-byte file name."""

PROFILE_NAMES = ("auto", "cpu", "6gb", "8gb", "12gb", "16gb", "24gb")
MEMORY_FIELDS = (
    "vram_profile",
    "device",
    "mixed_precision",
    "gradient_checkpointing",
    "vae_slicing",
    "identity_face_window",
    "identity_reuse_pass",
)
"""Fields that change memory and speed but not what is trained: a resumed run may change them."""


class ConfigError(UserError, ValueError):
    """A training setting is unknown or out of range; the message names it and the allowed values."""


def _field(
    default: Any, help: str, *, range: tuple[float, float] | None = None, choices: tuple | None = None
) -> Any:
    metadata: dict[str, Any] = {"help": help}
    if range is not None:
        metadata["range"] = range
    if choices is not None:
        metadata["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainingConfig:
    """All settings of one MagiCapture training run (two phases)."""

    preset: str = _field(
        "released", "Name of the preset these values started from (recorded in the artefact)."
    )
    base_model: str = _field(
        DEFAULT_BASE,
        "Base model of either family, SD 1.x or SDXL (read from the model itself): hub id, diffusers "
        "folder or one .safetensors file.",
    )
    seed: int = _field(
        0, "Seed of every random choice; same seed and photos give the same run.", range=(0, 2**32 - 1)
    )
    resolution: int = _field(
        512,
        "Training image size in pixels (square, a multiple of 8); the CLI and the studio use the base "
        "model's native size: 512 for SD 1.x, 1024 for SDXL.",
        range=(64, 1024),
    )

    # Tokens
    identity_token: str = _field("<sks>", "Placeholder token of the person (source images).")
    style_token: str = _field("<style1>", "Placeholder token of the style (reference images).")
    identity_init_word: str = _field(
        "person", "Single-token word whose embedding initialises the identity token."
    )
    style_init_std: float = _field(
        0.017, "Std of the normal initialisation of the style token.", range=(0.0, 1.0)
    )

    # Schedule
    phase1_steps: int = _field(
        1200, "Optimiser steps of phase 1 (token embeddings only).", range=(0, 100_000)
    )
    phase2_steps: int = _field(
        1500, "Optimiser steps of phase 2 (LoRA plus the two embeddings).", range=(0, 100_000)
    )
    phase1_lr: float = _field(2e-3, "Learning rate of the two embeddings in phase 1.", range=(0.0, 1.0))
    phase2_unet_lr: float = _field(4e-4, "Learning rate of the UNet LoRA in phase 2.", range=(0.0, 1.0))
    phase2_text_lr: float = _field(
        4e-5, "Learning rate of the text-encoder LoRA in phase 2.", range=(0.0, 1.0)
    )
    phase2_embedding_lr: float = _field(
        1e-4, "Learning rate of the two embeddings in phase 2.", range=(0.0, 1.0)
    )
    phase1_weight_decay: float = _field(0.0, "AdamW weight decay in phase 1.", range=(0.0, 1.0))
    phase2_weight_decay: float = _field(1e-3, "AdamW weight decay in phase 2.", range=(0.0, 1.0))
    lr_schedule: str = _field(
        "linear", "Learning-rate schedule of each phase.", choices=("linear", "constant")
    )
    train_batch_size: int = _field(1, "Samples per process per micro-step.", range=(1, 64))
    gradient_accumulation_steps: int = _field(
        1, "Micro-steps per optimiser step (real accumulation).", range=(1, 64)
    )
    scale_lr: bool = _field(
        False, "Multiply learning rates by the effective batch (batch x accumulation x processes)."
    )
    max_grad_norm: float = _field(1.0, "Gradient clipping norm (0 turns clipping off).", range=(0.0, 1e6))
    phase1_max_timestep: int = _field(1000, "Phase-1 timesteps are drawn from U[0, this).", range=(1, 1000))
    phase2_max_timestep: int = _field(800, "Phase-2 timesteps are drawn from U[0, this).", range=(1, 1000))
    embedding_norm_pull: bool = _field(
        True, "Phase 1: after each step pull each new embedding's norm toward the target."
    )
    embedding_norm_target: float = _field(0.4, "Norm the phase-1 pull aims at.", range=(0.0, 100.0))

    # LoRA
    lora_rank: int = _field(4, "LoRA rank.", range=(1, 256))
    lora_alpha: float = _field(4.0, "LoRA alpha (scale = alpha / rank).", range=(0.0, 1024.0))
    lora_init: str = _field(
        "gaussian", "Initialisation of LoRA A (B starts at zero).", choices=("gaussian", "kaiming")
    )
    lora_unet_targets: list[str] = _field(
        ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj"], "UNet module names (suffixes) that get LoRA."
    )
    lora_cross_attention_only: bool = _field(
        False, "Restrict UNet LoRA to cross-attention (attn2) projections (paper)."
    )
    lora_text_targets: list[str] = _field(
        ["q_proj", "k_proj", "v_proj", "out_proj"],
        "Text-encoder modules with LoRA (in both of SDXL's encoders).",
    )

    # Losses
    style_weight: float = _field(
        2.0, "Weight of reference and composed reconstruction early in each phase.", range=(0.0, 100.0)
    )
    style_weight_fraction: float = _field(
        0.5, "Fraction of each phase that uses the style weight.", range=(0.0, 1.0)
    )
    mask_floor: float = _field(
        0.0, "Reconstruction weight outside the mask (the released code used about 0.01).", range=(0.0, 1.0)
    )
    ar_weight: float = _field(2.5, "Weight of the Attention Refocusing loss (phase 2).", range=(0.0, 100.0))
    ar_detach_range: bool = _field(
        True,
        "Detach each map's min and max in the AR rescaling (paper, released; ar_loss=rescaled). Off, the "
        "gradient also flows through them, so the loss cannot be lowered by shrinking the token's attention everywhere.",
    )
    ar_loss: str = _field(
        "outside_share",
        "Form of the AR loss: outside_share (the share of the token's attention mass outside its "
        "region: blind to scale, so shrinking attention does not lower it; the default, chosen by the "
        "toy AR ablation in the README) or rescaled (METHOD.md: min-max rescaled maps penalised "
        "outside the region; its minimum includes a collapsed map).",
        choices=("rescaled", "outside_share"),
    )
    ar_collapse_fraction: float = _field(
        0.1,
        "Warn when a token's mean attention falls below this fraction of its level at the start of "
        "phase 2 (0: never).",
        range=(0.0, 1.0),
    )
    identity_weight: float = _field(
        0.25, "Weight of the identity loss (phase 2); 0 turns it off.", range=(0.0, 100.0)
    )
    identity_on_source: bool = _field(
        True, "Also apply the identity loss to source samples (released), not only composed."
    )
    identity_max_timestep: int = _field(800, "Identity loss only from timesteps below this.", range=(1, 1000))
    identity_fallback_landmarks: bool = _field(
        False,
        "When the detector finds no face in the estimate, use the training image's landmarks instead of "
        "skipping the identity loss (METHOD.md skips; the released code fell back).",
    )
    identity_window_margin: float = _field(
        0.3, "Margin around the face box of the decoded window, in box sizes.", range=(0.0, 4.0)
    )
    identity_decoder: str = _field(
        "tiny",
        "Decoder of the identity branch: tiny (TAESD, a 1.2 M-weight approximation of the VAE decoder: "
        "the phase-2 step costs what a plain LoRA step does; each run checks it against the VAE on your "
        "photos and warns if they disagree) or vae (the base model's VAE, as METHOD.md: slower, more memory).",
        choices=("vae", "tiny"),
    )
    tiny_decoder_model: str = _field(
        "",
        "TAESD weights for identity_decoder=tiny: hub id or diffusers folder; empty: the TAESD of the base "
        "model's family (SD 1.x: madebyollin/taesd, SDXL: madebyollin/taesdxl).",
    )
    task_mix: list[float] = _field(
        [1.0, 1.0, 1.0], "Phase-2 sampling weights of source : reference : composed."
    )

    # Data
    flip_probability: float = _field(
        0.5, "Probability of a horizontal flip (mask and landmarks flip too).", range=(0.0, 1.0)
    )
    color_jitter: float = _field(
        0.1, "Brightness, contrast and saturation jitter amplitude.", range=(0.0, 1.0)
    )
    latent_cache_variants: int = _field(
        4, "Augmented VAE latents cached per image (0: augment and encode every step).", range=(0, 64)
    )

    # Memory and speed (None: from the VRAM profile)
    vram_profile: str = _field("auto", "Memory profile: auto-detected or named.", choices=PROFILE_NAMES)
    device: str = _field("auto", "Device to train on: auto, cpu, cuda, cuda:N or mps.")
    mixed_precision: str | None = _field(
        None, "fp16, bf16 or no (CPU always no).", choices=(None, "no", "fp16", "bf16")
    )
    use_8bit_adam: bool | None = _field(None, "bitsandbytes 8-bit AdamW instead of torch AdamW.")
    gradient_checkpointing: bool | None = _field(
        None, "Non-reentrant gradient checkpointing (keeps the AR maps live)."
    )
    vae_slicing: bool | None = _field(None, "Decode one image at a time in the VAE.")
    train_text_encoder: bool | None = _field(
        None, "LoRA on the text encoder (SDXL: both encoders) in phase 2."
    )
    identity_face_window: bool | None = _field(
        None, "Decode only the latent window around the face for the identity loss."
    )
    identity_reuse_pass: bool | None = _field(
        None, "Identity estimate from the reconstruction pass when its timestep allows."
    )

    # Output
    checkpoint_every: int = _field(
        250, "Save a checkpoint every N optimiser steps (and at phase ends).", range=(1, 100_000)
    )
    keep_checkpoints: int = _field(2, "Checkpoints kept on disk (oldest deleted first).", range=(1, 100))
    preview_every: int = _field(
        250, "Preview samples and attention maps every N steps (0: never).", range=(0, 100_000)
    )
    preview_seeds: list[int] = _field([0, 1], "Seeds of the preview samples.")
    preview_steps: int = _field(25, "Sampling steps of a preview.", range=(1, 200))
    preview_guidance: float = _field(7.0, "Classifier-free guidance of the previews.", range=(0.0, 50.0))

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            _check(item, getattr(self, item.name))
        if self.resolution % 8:
            raise ConfigError(f"resolution must be a multiple of 8 (got {self.resolution}).")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps (got {self.device!r}).")
        if self.phase1_steps + self.phase2_steps == 0:
            raise ConfigError("phase1_steps and phase2_steps are both 0; at least one phase needs steps.")
        for name in ("identity_token", "style_token", "identity_init_word"):
            value = getattr(self, name)
            if not value or any(c.isspace() for c in value):
                raise ConfigError(f"{name} must be one word without spaces (got {value!r}).")
        if self.identity_token == self.style_token:
            raise ConfigError(
                f"identity_token and style_token must differ (both are {self.identity_token!r})."
            )
        words = {
            name: _exported_word(name, getattr(self, name)) for name in ("identity_token", "style_token")
        }
        if words["identity_token"] == words["style_token"]:
            raise ConfigError(
                f"identity_token {self.identity_token!r} and style_token {self.style_token!r} would be "
                f"exported under one file name ({words['style_token']!r}); make them differ in letters or digits."
            )
        if len(self.task_mix) != 3 or min(self.task_mix) < 0 or sum(self.task_mix) <= 0:
            raise ConfigError(
                f"task_mix needs three non-negative weights, not all zero (got {self.task_mix!r})."
            )
        if not self.preview_seeds or len(self.preview_seeds) > 16:
            raise ConfigError(f"preview_seeds needs 1 to 16 seeds (got {len(self.preview_seeds)}).")
        if not self.lora_unet_targets:
            raise ConfigError("lora_unet_targets is empty; name at least one UNet module for LoRA.")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingConfig:
        """Inverse of `to_dict`; unknown keys are refused."""
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown training setting(s): {', '.join(unknown)}.")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainingConfig:
        """A copy with ``changes`` applied (validated)."""
        return TrainingConfig.from_dict({**self.to_dict(), **changes})


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "text", "bool": "true or false"}
_PLURALS = {"int": "integers", "float": "numbers", "str": "strings"}


def _exported_word(name: str, token: str) -> str:
    """The word ``token`` is exported as (its embedding's file name after the project's), or `ConfigError`."""
    from engine.store import InvalidName, safe_name

    try:
        word = safe_name(token.strip("<>"))
    except InvalidName as error:
        raise ConfigError(f"{name} {token!r} cannot name an exported embedding file: {error}") from None
    size = len(word.encode("utf-8"))
    if size > MAX_TOKEN_BYTES:
        raise ConfigError(
            f"{name} {token[:24]!r}... is too long: its exported file name takes {size} bytes and at most "
            f"{MAX_TOKEN_BYTES} fit (letters such as 'é' or '漢' take two to four bytes each)."
        )
    return word


def _check(item: dataclasses.Field, value: Any) -> None:
    """Refuse a value of the wrong type or outside the field's range or choices."""
    kind = str(item.type)
    optional = "None" in kind
    if value is None and optional:
        return
    base = kind.replace(" | None", "")
    if base.startswith("list["):
        inner = _TYPES[base[5:-1]]
        if not isinstance(value, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, inner) for v in value
        ):
            raise ConfigError(f"{item.name} must be a list of {_PLURALS[base[5:-1]]} (got {value!r}).")
        return
    expected = _TYPES[base]
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        raise ConfigError(f"{item.name} must be {_TYPE_WORDS[base]} (got {value!r}).")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{item.name} must be a finite number (got {value!r}).")
    choices = item.metadata.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{item.name} must be one of {allowed} (got {value!r}).")
    low, high = item.metadata.get("range", (None, None))
    if low is not None and not low <= value <= high:
        raise ConfigError(f"{item.name} must be between {low:g} and {high:g} (got {value!r}).")


PRESETS: dict[str, dict[str, Any]] = {
    "released": {},
    "paper": {
        "phase1_lr": 5e-4,
        "phase2_unet_lr": 1e-4,
        # The paper's "text embeddings 1e-5": used for the text-encoder LoRA (the released script's
        # learning_rate_text, 4e-5 effective) and for the two embeddings.
        "phase2_text_lr": 1e-5,
        "phase2_embedding_lr": 1e-5,
        "gradient_accumulation_steps": 4,
        "identity_weight": 1.0,
        "identity_on_source": False,
        "style_weight": 1.0,
        "embedding_norm_pull": False,
        "lora_cross_attention_only": True,
    },
    "fast": {
        "phase1_steps": 300,
        "phase2_steps": 400,
        "checkpoint_every": 100,
        "preview_every": 100,
        "latent_cache_variants": 2,
    },
}


def preset(name: str = "released", **overrides: Any) -> TrainingConfig:
    """The named preset with ``overrides`` applied; unknown names or settings raise `ConfigError`."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return TrainingConfig.from_dict({**PRESETS[name], "preset": name, **overrides})
