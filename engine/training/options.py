"""What a run decides before it loads anything: memory and speed options, LoRA targets, the accelerator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from engine.config import ConfigError, TrainingConfig

if TYPE_CHECKING:
    from accelerate import Accelerator

    from engine.families import ModelFamily


@dataclass(frozen=True)
class Options:
    """Memory and speed options of one run: the config's values, else the VRAM profile's."""

    profile: str
    device: torch.device
    mixed_precision: str
    use_8bit_adam: bool
    gradient_checkpointing: bool
    vae_slicing: bool
    train_text_encoder: bool
    identity_face_window: bool
    identity_reuse_pass: bool
    family: str = "sd1"
    """The base model's family: the profile came from its table (`engine.devices.profiles_for`)."""

    @property
    def weight_dtype(self) -> torch.dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mixed_precision, torch.float32)

    @property
    def identity_dtype(self) -> torch.dtype | None:
        """Precision of the identity branch (decode and recogniser); None: the run's own.

        Under fp16 the decoder's backward overflows and the gradient scaler then skips the whole
        step, so the branch runs in bf16 where the GPU has it, else in fp32.
        """
        if self.mixed_precision != "fp16":
            return None
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32


def resolve_options(config: TrainingConfig, family: str | None = None) -> Options:
    """The options of a run of ``config``: each option the config leaves unset comes from its VRAM profile.

    The profile is the one of that name in the table of the base model's ``family`` (read from
    ``config.base_model`` when not given; `engine.devices.profile_named`), or, for ``"auto"``, the
    family's largest that fits the GPU.
    """
    from engine.devices import detect_profile, pick_device, profile_named
    from engine.preflight.device import model_family

    family = family or model_family(config.base_model)
    device = pick_device(None if config.device == "auto" else config.device)
    if config.vram_profile == "auto":
        profile = detect_profile(device, family)
    else:
        profile = profile_named(config.vram_profile, family)
    values = {}
    for name in (
        "use_8bit_adam",
        "gradient_checkpointing",
        "vae_slicing",
        "train_text_encoder",
        "identity_face_window",
        "identity_reuse_pass",
    ):
        value = getattr(config, name)
        values[name] = getattr(profile, name) if value is None else value
    mixed = config.mixed_precision or profile.mixed_precision
    if device.type != "cuda":
        mixed = "no"
    return Options(profile=profile.name, device=device, mixed_precision=mixed, family=family, **values)


def lora_configs(
    config: TrainingConfig, train_text_encoder: bool, family: ModelFamily | None = None
) -> dict[str, dict[str, Any]]:
    """peft LoraConfig arguments per component: the UNet and (if trained) the text encoders.

    ``family`` (default: SD 1.x) maps the configured module names to each component's targets.
    """
    from engine.families import DEFAULT_FAMILY

    family = family or DEFAULT_FAMILY
    if config.lora_cross_attention_only and not any(t.startswith("to_") for t in config.lora_unet_targets):
        raise ConfigError(
            "lora_cross_attention_only needs attention projections (to_q, to_k...) in lora_unet_targets."
        )
    init = "gaussian" if config.lora_init == "gaussian" else True  # peft's True: kaiming-uniform A
    common = {"r": config.lora_rank, "lora_alpha": config.lora_alpha, "init_lora_weights": init}
    targets = family.lora_target_modules(
        config.lora_unet_targets, config.lora_text_targets, config.lora_cross_attention_only
    )
    trained = {"unet", *(family.text_encoders if train_text_encoder else ())}
    return {name: {**common, "target_modules": value} for name, value in targets.items() if name in trained}


def make_accelerator(options: Options, gradient_accumulation_steps: int = 1) -> Accelerator:
    """An accelerator with the options' precision and device.

    In a single process accelerate's process-wide state is reset first, so that each new run (the
    studio trains repeatedly; benchmarks and tests build several trainers) chooses its own precision
    and device; under ``accelerate launch`` the launched state is kept.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if PartialState._shared_state and not PartialState().use_distributed:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=options.mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        cpu=options.device.type == "cpu",
    )
