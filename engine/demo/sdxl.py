"""A tiny Stable Diffusion XL with random weights, saved as a diffusers folder and as one file.

Same classes and file formats as SDXL 1.0 base, tiny widths: a three-level UNet (a plain down
block, then two cross-attention down blocks, with transformer depths growing per level as SDXL's
1, 2, 10 do; the mirrored up blocks; a cross-attention mid block) with the ``text_time`` added
embedding; a CLIP-L-style `CLIPTextModel` and an OpenCLIP-bigG-style `CLIPTextModelWithProjection`
of different widths (as 768 and 1280 are, which is how diffusers tells them apart in a single
file) whose penultimate states concatenate to the cross-attention width; two CLIP tokenizers (the
second pads with "!" as OpenCLIP does); the VAE with SDXL's scaling factor. The single file uses
the original SDXL key layout (``model.diffusion_model.``, ``first_stage_model.``,
``conditioner.embedders.0.transformer.``, ``conditioner.embedders.1.model.``), so diffusers'
``from_single_file`` converter runs on it exactly as on a real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.demo.sd import TINY_RESOLUTION, TinySD, _unet_key, to_original_layout, write_clip_tokenizer
from engine.store import atomic_path, atomic_write_json

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["TINY_RESOLUTION", "build_tiny_sdxl", "to_sdxl_original_layout", "write_open_clip_tokenizer"]

CLIP_L_WIDTH = 32
"""Width of the tiny CLIP-L stand-in (SDXL: 768)."""
CLIP_G_WIDTH = 64
"""Width of the tiny OpenCLIP-bigG stand-in and of its pooled projection (SDXL: 1280)."""
TIME_EMBED_WIDTH = 8
"""Width of each of the six embedded time ids (SDXL: 256)."""
OPEN_CLIP_PAD = "!"
"""OpenCLIP pads with token 0, which is "!" in the CLIP vocabulary."""


def write_open_clip_tokenizer(folder: Path) -> None:
    """SDXL's second tokenizer: the CLIP vocabulary and merges, padding with "!" as OpenCLIP does."""
    folder = Path(folder)
    write_clip_tokenizer(folder)
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        values = json.loads((folder / name).read_text())
        atomic_write_json(folder / name, {**values, "pad_token": OPEN_CLIP_PAD})


def _tiny_text_encoders() -> tuple[Any, Any]:
    """CLIP-L and OpenCLIP-bigG stand-ins: three layers, widths `CLIP_L_WIDTH` and `CLIP_G_WIDTH`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    # Token ids as in SDXL's own text-encoder configs, including their legacy end id of 2.
    ids = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2}
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            **ids,
            pad_token_id=1,
            hidden_size=CLIP_L_WIDTH,
            intermediate_size=2 * CLIP_L_WIDTH,
            num_hidden_layers=3,
            num_attention_heads=4,
            projection_dim=CLIP_L_WIDTH,
            hidden_act="quick_gelu",
        )
    )
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            **ids,
            pad_token_id=1,
            hidden_size=CLIP_G_WIDTH,
            intermediate_size=2 * CLIP_G_WIDTH,
            num_hidden_layers=3,
            num_attention_heads=4,
            projection_dim=CLIP_G_WIDTH,
            hidden_act="gelu",
        )
    )
    return text_encoder, text_encoder_2


def build_tiny_sdxl(folder: Path, seed: int = 0) -> TinySD:
    """Build the tiny SDXL under ``folder`` (``sdxl/`` and ``sdxl-tiny.safetensors``)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from safetensors.torch import save_file

    folder = Path(folder)
    pipe_dir = folder / "sdxl"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_WIDTH,
        projection_class_embeddings_input_dim=CLIP_G_WIDTH + 6 * TIME_EMBED_WIDTH,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=TINY_RESOLUTION,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    text_encoder, text_encoder_2 = _tiny_text_encoders()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
    )
    unet.save_pretrained(pipe_dir / "unet")
    vae.save_pretrained(pipe_dir / "vae")
    text_encoder.save_pretrained(pipe_dir / "text_encoder")
    text_encoder_2.save_pretrained(pipe_dir / "text_encoder_2")
    scheduler.save_pretrained(pipe_dir / "scheduler")
    write_clip_tokenizer(pipe_dir / "tokenizer")
    write_open_clip_tokenizer(pipe_dir / "tokenizer_2")
    atomic_write_json(pipe_dir / "model_index.json", MODEL_INDEX)

    single_file = folder / "sdxl-tiny.safetensors"
    state = to_sdxl_original_layout(unet, vae, text_encoder, text_encoder_2)
    with atomic_path(single_file) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return TinySD(pipe_dir, single_file)


MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
"""The ``model_index.json`` of SDXL 1.0 base."""


def to_sdxl_original_layout(
    unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, text_encoder_2: nn.Module
) -> dict[str, torch.Tensor]:
    """One original-layout SDXL checkpoint from the diffusers UNet, VAE and two text encoders."""
    attention_up_blocks = {i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind}
    levels = len(unet.config.block_out_channels)
    state = {_sdxl_unet_key(k, levels, attention_up_blocks): v for k, v in unet.state_dict().items()}
    vae_levels = len(vae.config.block_out_channels)
    state.update(to_original_layout({}, vae.state_dict(), {}, vae_levels))  # the VAE part only
    for key, value in text_encoder.state_dict().items():
        text_key = key if key.startswith("text_model.") else f"text_model.{key}"
        state[f"conditioner.embedders.0.transformer.{text_key}"] = value
    state.update(_open_clip_layout(text_encoder_2, "conditioner.embedders.1.model."))
    return state


def _sdxl_unet_key(key: str, levels: int, attention_up_blocks: set[int]) -> str:
    """Diffusers SDXL UNet key -> original key: SD 1.x's names plus the added embedding (``label_emb``),
    and upsamplers after the up blocks' attention wherever those blocks have one."""
    if key.startswith("add_embedding."):
        tail = key.removeprefix("add_embedding.").replace("linear_1.", "0.").replace("linear_2.", "2.")
        return f"model.diffusion_model.label_emb.0.{tail}"
    if key.startswith("up_blocks.") and ".upsamplers.0." in key:
        block = int(key.split(".")[1])
        slot = 2 if block in attention_up_blocks else 1
        tail = key.partition(".upsamplers.0.")[2]
        return f"model.diffusion_model.output_blocks.{3 * block + 2}.{slot}.{tail}"
    return _unet_key(key, levels)


def _open_clip_layout(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP's tensor names for a `CLIPTextModelWithProjection` (fused q/k/v, transposed projection)."""
    import torch

    text = model.text_model
    state = {
        "token_embedding.weight": text.embeddings.token_embedding.weight,
        "positional_embedding": text.embeddings.position_embedding.weight,
        "ln_final.weight": text.final_layer_norm.weight,
        "ln_final.bias": text.final_layer_norm.bias,
        "text_projection": model.text_projection.weight.T,
    }
    for index, layer in enumerate(text.encoder.layers):
        block, attention = f"transformer.resblocks.{index}.", layer.self_attn
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        state.update(
            {
                f"{block}ln_1.weight": layer.layer_norm1.weight,
                f"{block}ln_1.bias": layer.layer_norm1.bias,
                f"{block}attn.in_proj_weight": torch.cat([p.weight for p in projections]),
                f"{block}attn.in_proj_bias": torch.cat([p.bias for p in projections]),
                f"{block}attn.out_proj.weight": attention.out_proj.weight,
                f"{block}attn.out_proj.bias": attention.out_proj.bias,
                f"{block}ln_2.weight": layer.layer_norm2.weight,
                f"{block}ln_2.bias": layer.layer_norm2.bias,
                f"{block}mlp.c_fc.weight": layer.mlp.fc1.weight,
                f"{block}mlp.c_fc.bias": layer.mlp.fc1.bias,
                f"{block}mlp.c_proj.weight": layer.mlp.fc2.weight,
                f"{block}mlp.c_proj.bias": layer.mlp.fc2.bias,
            }
        )
    return {prefix + key: value.detach() for key, value in state.items()}
