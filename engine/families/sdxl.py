"""Stable Diffusion XL: CLIP-L and OpenCLIP bigG text encoders, 1024 px, `StableDiffusionXLPipeline`."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.families.contract import PromptStates, cross_attention_layers, unet_lora_targets
from engine.families.sd1 import SD15_CONFIG, _training_scheduler

if TYPE_CHECKING:
    import torch
    from torch import nn

    from engine.demo.sd import TinySD
    from engine.models import BaseModel

logger = logging.getLogger(__name__)

SDXL_CONFIG = Path(__file__).resolve().parents[2] / "assets" / "sdxl"
"""SDXL 1.0 base's small config files, so a single file loads with no network. Both tokenizers
read SD 1.5's vocabulary files (``assets/sd15/tokenizer``): OpenAI's CLIP and OpenCLIP share one
BPE vocabulary, and SDXL's second tokenizer differs only in padding."""
AR_LEVEL = 2
"""UNet resolution level of the AR layers: the 32x32 maps at 1024 px (latent 128 / 2**2); see docs/sdxl.md."""
LATENT_FACTOR = 8
"""Pixels per latent (the VAE's downsampling)."""
END_ID = 49407
"""``<|endoftext|>`` in the CLIP vocabulary: the end of every prompt."""
COMPONENTS = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "unet", "vae", "scheduler")
"""The subfolders of an SDXL diffusers folder."""
OPEN_CLIP_PAD_ID = 0
"""The id OpenCLIP (SDXL's second tokenizer) pads with after the end token ("!")."""
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"
"""SDXL's VAE fine-tuned to run in fp16 without overflowing (MIT licence): used in fp16, from the
Hugging Face cache or downloaded on first use (unless downloads are off)."""
FIX_VAE_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
"""The files of `FP16_FIX_VAE` the loader reads (and downloads)."""


@dataclass(frozen=True, eq=False)
class SDXLFamily:
    """Stable Diffusion XL 1.0 base and its fine-tunes as a `ModelFamily` (compared by identity)."""

    name: str = "sdxl"
    label: str = "SDXL"
    native_resolution: int = 1024
    text_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2")
    checkpoint_prefixes: tuple[str, ...] = (
        "model.diffusion_model.",
        "first_stage_model.",
        "conditioner.embedders.0.transformer.",
        "conditioner.embedders.1.model.",
    )
    kohya_prefixes: Mapping[str, str] = field(
        default_factory=lambda: {
            "unet": "lora_unet_",
            "text_encoder": "lora_te1_",
            "text_encoder_2": "lora_te2_",
        }
    )
    kohya_base_version: str = "sdxl_base_v1-0"
    embedding_keys: Mapping[str, str] = field(
        default_factory=lambda: {"text_encoder": "clip_l", "text_encoder_2": "clip_g"}
    )
    tiny_decoder: str | None = "madebyollin/taesdxl"
    """TAESD trained on SDXL's latent space (MIT licence; SD 1.x's TAESD does not decode SDXL latents)."""

    def recognises_checkpoint(self, keys: Collection[str]) -> bool:
        return all(any(k.startswith(prefix) for k in keys) for prefix in self.checkpoint_prefixes)

    def recognises_config(self, unet_config: Mapping[str, Any]) -> bool:
        """A UNet with SDXL's added text and time embeddings (the refiner is refused before this)."""
        return unet_config.get("addition_embed_type") == "text_time"

    def load_components(
        self, source: str, dtype: torch.dtype, *, allow_pickle: bool, local_files_only: bool
    ) -> dict[str, Any]:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        folder = Path(source)
        missing = [name for name in COMPONENTS if folder.is_dir() and not (folder / name).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"{source} is an SDXL model (its UNet has SDXL's added embeddings) but has no "
                f"{', '.join(missing)} folder; an SDXL diffusers folder has {', '.join(COMPONENTS)}."
            )
        options = {"local_files_only": local_files_only}
        safetensors = None if allow_pickle else True
        weights = {**options, "use_safetensors": safetensors, "torch_dtype": dtype}
        encoders = {"dtype": dtype, "use_safetensors": safetensors, **options}
        parts = {
            "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **options),
            "tokenizer_2": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **options),
            "text_encoder": CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **encoders),
            "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
                source, subfolder="text_encoder_2", **encoders
            ),
            "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", **weights),
            "unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", **weights),
            "noise_scheduler": _training_scheduler(
                DDPMScheduler.load_config(source, subfolder="scheduler", **options)
            ),
        }
        return _pooling_at_the_end_token(_fp16_vae(parts, dtype))

    def load_single_file(self, path: Path, dtype: torch.dtype, config: Path | None) -> dict[str, Any]:
        from diffusers import StableDiffusionXLPipeline
        from transformers import CLIPTokenizer

        tokenizers = {}
        if config is None:
            vocabulary = SD15_CONFIG / "tokenizer"
            tokenizers = {
                "tokenizer": CLIPTokenizer.from_pretrained(vocabulary),
                "tokenizer_2": CLIPTokenizer.from_pretrained(vocabulary, pad_token="!"),
            }
        pipe = StableDiffusionXLPipeline.from_single_file(
            str(path),
            config=str(config or SDXL_CONFIG),
            torch_dtype=dtype,
            add_watermarker=False,
            local_files_only=True,
            **tokenizers,
        )
        parts = {name: getattr(pipe, name) for name in ("tokenizer", "tokenizer_2", "vae", "unet")}
        parts |= {name: getattr(pipe, name) for name in self.text_encoders}
        parts["noise_scheduler"] = _training_scheduler(pipe.scheduler.config)
        return _pooling_at_the_end_token(_fp16_vae(parts, dtype))

    def pipeline(self, base: BaseModel, scheduler: Any) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            text_encoder_2=base.text_encoder_2,
            tokenizer=base.tokenizer,
            tokenizer_2=base.tokenizer_2,
            unet=base.unet,
            scheduler=scheduler,
            add_watermarker=False,
        )

    def encode_prompt(
        self, encoders: Sequence[nn.Module], input_ids: torch.Tensor, resolution: int | None = None
    ) -> PromptStates:
        """Both encoders' penultimate hidden states side by side (``[batch, 77, 768 + 1280]``), the
        second's pooled projection as ``text_embeds`` and the size ids as ``time_ids``.

        ``input_ids`` come from the first tokenizer; the second encoder reads them padded as its
        own tokenizer pads (`open_clip_ids`). ``time_ids`` are (original size, crop top-left,
        target size) of a square ``resolution`` image, uncropped: ``[r, r, 0, 0, r, r]``.
        """
        import torch

        clip_l, clip_g = encoders
        states_l = clip_l(input_ids, output_hidden_states=True)
        states_g = clip_g(open_clip_ids(input_ids), output_hidden_states=True)
        hidden = torch.cat([states_l.hidden_states[-2], states_g.hidden_states[-2]], dim=-1)
        side = resolution or self.native_resolution
        time_ids = torch.tensor([side, side, 0, 0, side, side], dtype=hidden.dtype, device=hidden.device)
        added = {"text_embeds": states_g.text_embeds, "time_ids": time_ids.expand(len(input_ids), -1)}
        return PromptStates(hidden, added)

    def latent_scale(self, vae: nn.Module) -> float:
        """The VAE config's ``scaling_factor`` (0.13025 for SDXL)."""
        return vae.config.scaling_factor

    def lora_target_modules(
        self, unet: Sequence[str], text: Sequence[str], cross_attention_only: bool
    ) -> dict[str, Any]:
        encoders = {name: list(text) for name in self.text_encoders}
        return {"unet": unet_lora_targets(unet, cross_attention_only), **encoders}

    def ar_layer_names(self, unet: nn.Module) -> list[str]:
        """attn2 of every transformer in the level-2 down and up blocks (``down_blocks.2``, ``up_blocks.0``)."""
        return cross_attention_layers(unet, AR_LEVEL)

    def ar_map_size(self, resolution: int) -> int:
        return resolution // LATENT_FACTOR // 2**AR_LEVEL

    def build_tiny(self, folder: Path, seed: int = 0) -> TinySD:
        from engine.demo.sdxl import build_tiny_sdxl

        return build_tiny_sdxl(folder, seed)


def open_clip_ids(input_ids: torch.Tensor) -> torch.Tensor:
    """CLIP-tokenised prompts ``[batch, tokens]`` as SDXL's second tokenizer gives them: the same
    ids up to the end token, then OpenCLIP's padding instead of repeated end tokens."""
    end = (input_ids == END_ID).int()
    return input_ids.masked_fill(end.cumsum(-1) - end > 0, OPEN_CLIP_PAD_ID)


def cached_fp16_fix_vae() -> Path | None:
    """The folder of `FP16_FIX_VAE` in the Hugging Face cache (``$HF_HUB_CACHE``), or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(FP16_FIX_VAE, name) for name in FIX_VAE_FILES]
    if not all(isinstance(path, str) for path in found):
        return None
    return Path(found[0]).parent


def fp16_fix_vae() -> tuple[Path | None, str]:
    """The folder of `FP16_FIX_VAE`: from the Hugging Face cache, else downloaded (about 330 MB) unless
    downloads are off; with where it came from, or why there is none."""
    from huggingface_hub import snapshot_download

    from engine.assets import offline

    folder = cached_fp16_fix_vae()
    if folder is not None:
        return folder, "from the Hugging Face cache"
    if offline():
        return None, "is not in the Hugging Face cache (downloads are off)"
    try:
        return Path(snapshot_download(FP16_FIX_VAE, allow_patterns=list(FIX_VAE_FILES))), "downloaded"
    # The hub's errors are OSErrors; a transfer broken midway raises its HTTP library's own.
    except Exception as error:
        reason = " ".join(str(error).split())[:200]
        return None, f"is not in the Hugging Face cache and could not be downloaded ({reason})"


def _fp16_vae(parts: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """In fp16, the fp16-fix VAE (`fp16_fix_vae`) in place of the base's when it is of the same shape;
    else the base's VAE with ``force_upcast`` (encodes and decodes in fp32). Says which in ``notes`` and the log."""
    import torch
    from diffusers import AutoencoderKL

    if dtype != torch.float16:
        return parts
    vae, (folder, why) = parts["vae"], fp16_fix_vae()
    shape = ("block_out_channels", "latent_channels", "layers_per_block")
    if folder is not None:
        config = AutoencoderKL.load_config(folder)
        if all(config.get(key) == vae.config.get(key) for key in shape):
            fixed = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, use_safetensors=True)
            note = f"SDXL in fp16: the VAE is the fp16-fix one ({FP16_FIX_VAE}, {why})."
            logger.info(note)
            return {**parts, "vae": fixed, "notes": (note,)}
        why = f"({why}) is not this model's VAE shape"
    vae.register_to_config(force_upcast=True)
    note = (
        f"SDXL in fp16: the fp16-fix VAE ({FP16_FIX_VAE}) {why}, so the base's VAE encodes training "
        f"photos and decodes images upcast to fp32 (diffusers' force_upcast): slower and more memory. "
        f"Download {FP16_FIX_VAE} to run the VAE in fp16."
    )
    logger.warning(note)
    return {**parts, "notes": (note,)}


def _pooling_at_the_end_token(parts: dict[str, Any]) -> dict[str, Any]:
    """Make the text encoders pool at the end token. SDXL's configs keep CLIP's legacy end id (2),
    for which transformers pools at the highest id in the prompt: a placeholder token, once added."""
    for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        model, end = parts[encoder], parts[tokenizer].eos_token_id
        model.config.eos_token_id = end
        getattr(model, "text_model", model).eos_token_id = end
    return parts


SDXL = SDXLFamily()
