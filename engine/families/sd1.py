"""Stable Diffusion 1.x: one CLIP ViT-L text encoder, 512 px, `StableDiffusionPipeline`."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.families.contract import PromptStates, cross_attention_layers, unet_lora_targets

if TYPE_CHECKING:
    import torch
    from torch import nn

    from engine.demo.sd import TinySD
    from engine.models import BaseModel

SD15_CONFIG = Path(__file__).resolve().parents[2] / "assets" / "sd15"
"""SD 1.5's small config and tokenizer files, so a single file loads with no network."""
AR_LEVEL = 2
"""UNet resolution level of the AR layers: the 16x16 maps of SD 1.5 at 512 px (latent 64 / 2**2)."""
LATENT_FACTOR = 8
"""Pixels per latent (the VAE's downsampling)."""


@dataclass(frozen=True, eq=False)
class SD1Family:
    """Stable Diffusion 1.x (1.4, 1.5 and their fine-tunes) as a `ModelFamily` (compared by identity)."""

    name: str = "sd1"
    label: str = "SD 1.x"
    native_resolution: int = 512
    text_encoders: tuple[str, ...] = ("text_encoder",)
    checkpoint_prefixes: tuple[str, ...] = (
        "model.diffusion_model.",
        "first_stage_model.",
        "cond_stage_model.transformer.",
    )
    kohya_prefixes: Mapping[str, str] = field(
        default_factory=lambda: {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    )
    kohya_base_version: str = "sd_v1"
    embedding_keys: Mapping[str, str] = field(default_factory=lambda: {"text_encoder": "emb_params"})
    tiny_decoder: str | None = "madebyollin/taesd"

    def recognises_checkpoint(self, keys: Collection[str]) -> bool:
        return all(any(k.startswith(prefix) for k in keys) for prefix in self.checkpoint_prefixes)

    def recognises_config(self, unet_config: Mapping[str, Any]) -> bool:
        """Any conditional UNet without SDXL's added embeddings or SD 2.x's 1024-wide context."""
        added = unet_config.get("addition_embed_type")
        return not added and unet_config.get("cross_attention_dim") not in (1024, 2048)

    def load_components(
        self, source: str, dtype: torch.dtype, *, allow_pickle: bool, local_files_only: bool
    ) -> dict[str, Any]:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        options = {"local_files_only": local_files_only}
        safetensors = None if allow_pickle else True
        weights = {**options, "use_safetensors": safetensors, "torch_dtype": dtype}
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options),
            "text_encoder": CLIPTextModel.from_pretrained(
                source, subfolder="text_encoder", dtype=dtype, use_safetensors=safetensors, **options
            ),
            "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", **weights),
            "unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights),
            "noise_scheduler": _training_scheduler(
                DDPMScheduler.load_config(source, subfolder="scheduler", **options)
            ),
        }

    def load_single_file(self, path: Path, dtype: torch.dtype, config: Path | None) -> dict[str, Any]:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config or SD15_CONFIG),
            torch_dtype=dtype,
            safety_checker=None,
            requires_safety_checker=False,
            local_files_only=True,
        )
        return {
            "tokenizer": pipe.tokenizer,
            "text_encoder": pipe.text_encoder,
            "vae": pipe.vae,
            "unet": pipe.unet,
            "noise_scheduler": _training_scheduler(pipe.scheduler.config),
        }

    def pipeline(self, base: BaseModel, scheduler: Any) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=base.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def encode_prompt(
        self, encoders: Sequence[nn.Module], input_ids: torch.Tensor, resolution: int | None = None
    ) -> PromptStates:
        """The last hidden states of the one CLIP text encoder; ``input_ids`` ``[batch, 77]``; SD 1.x
        is not conditioned on the image size (``resolution``)."""
        (text_encoder,) = encoders
        return PromptStates(text_encoder(input_ids)[0])

    def latent_scale(self, vae: nn.Module) -> float:
        """The VAE config's ``scaling_factor`` (0.18215 for SD 1.x)."""
        return vae.config.scaling_factor

    def lora_target_modules(
        self, unet: Sequence[str], text: Sequence[str], cross_attention_only: bool
    ) -> dict[str, Any]:
        return {"unet": unet_lora_targets(unet, cross_attention_only), "text_encoder": list(text)}

    def ar_layer_names(self, unet: nn.Module) -> list[str]:
        """attn2 of every transformer in the level-2 down and up blocks (``down_blocks.2``, ``up_blocks.1``)."""
        return cross_attention_layers(unet, AR_LEVEL)

    def ar_map_size(self, resolution: int) -> int:
        return resolution // LATENT_FACTOR // 2**AR_LEVEL

    def build_tiny(self, folder: Path, seed: int = 0) -> TinySD:
        from engine.demo.sd import build_tiny_sd

        return build_tiny_sd(folder, seed)


def _training_scheduler(config: Mapping[str, Any]) -> Any:
    """DDPM training schedule from the model's scheduler config, epsilon prediction, no clipping."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(config, clip_sample=False, prediction_type="epsilon")


SD1 = SD1Family()
