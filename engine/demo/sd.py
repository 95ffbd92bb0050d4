"""A tiny Stable Diffusion 1.x with random weights, saved as a diffusers folder and as one file.

The UNet has SD 1.5's block structure (three cross-attention down blocks and a plain one, a
cross-attention mid block, a plain up block and three cross-attention up blocks, two layers per
block), so every layer the method reads (the Attention Refocusing layers) exists; only the widths
are tiny. The tokenizer carries the real CLIP BPE vocabulary, built from the copy that ships inside
the open_clip wheel. The single file uses the original (LDM) key names, so diffusers'
``from_single_file`` converter runs on it exactly as on a real checkpoint.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from engine.store import atomic_path, atomic_write_json, atomic_write_text

TINY_RESOLUTION = 64
"""Image size the tiny model is trained and sampled at (latent 8x8)."""


@dataclass(frozen=True)
class TinySD:
    folder: Path
    """Diffusers layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    single_file: Path
    """The same weights as one original-layout ``.safetensors`` checkpoint."""


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable unicode characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocabulary (49,408 tokens) and BPE merges, from the file inside open_clip's wheel."""
    import open_clip

    bpe_file = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe_file) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer(folder: Path) -> None:
    """Write vocab.json, merges.txt and the tokenizer config of SD 1.x's CLIP tokenizer."""
    vocab, merges = clip_vocabulary()
    atomic_write_text(Path(folder) / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    atomic_write_text(Path(folder) / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    atomic_write_json(Path(folder) / "special_tokens_map.json", special)
    config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    atomic_write_json(Path(folder) / "tokenizer_config.json", config)


def build_tiny_sd(folder: Path, seed: int = 0) -> TinySD:
    """Build the tiny pipeline under ``folder`` (``sd/`` and ``sd-tiny.safetensors``)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    pipe_dir = folder / "sd"
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
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
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        steps_offset=1,
    )
    unet.save_pretrained(pipe_dir / "unet")
    vae.save_pretrained(pipe_dir / "vae")
    text_encoder.save_pretrained(pipe_dir / "text_encoder")
    scheduler.save_pretrained(pipe_dir / "scheduler")
    write_clip_tokenizer(pipe_dir / "tokenizer")
    atomic_write_json(pipe_dir / "model_index.json", _model_index())

    single_file = folder / "sd-tiny.safetensors"
    state = to_original_layout(
        unet.state_dict(), vae.state_dict(), text_encoder.state_dict(), len(unet.config.block_out_channels)
    )
    with atomic_path(single_file) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    return TinySD(pipe_dir, single_file)


def build_tiny_decoder(folder: Path, seed: int = 0) -> Path:
    """A tiny TAESD (`AutoencoderTiny`, random weights) saved as a diffusers folder ``folder/taesd``."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    blocks = (8, 8, 8, 8)
    decoder = AutoencoderTiny(
        encoder_block_out_channels=blocks,
        decoder_block_out_channels=blocks,
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    decoder.save_pretrained(Path(folder) / "taesd")
    return Path(folder) / "taesd"


def _model_index() -> dict:
    return {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(key: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        key = key.replace(f".{new}.", f".{old}.")
    return key


def _unet_key(key: str, levels: int, layers: int = 2) -> str:
    """Diffusers UNet key -> original LDM key (``model.diffusion_model.`` prefix)."""
    head, _, rest = key.partition(".")
    simple = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    if head in simple:
        new = f"{simple[head]}.{rest}"
    elif head == "time_embedding":
        new = rest.replace("linear_1", "time_embed.0").replace("linear_2", "time_embed.2")
    else:
        parts = rest.split(".")
        if head == "mid_block":
            kind, index, tail = parts[0], int(parts[1]), ".".join(parts[2:])
            slot = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, index)]
            new = _rename(f"middle_block.{slot}.{tail}", _RESNET_NAMES if kind == "resnets" else {})
        else:
            block, kind, index, tail = int(parts[0]), parts[1], int(parts[2]), ".".join(parts[3:])
            if head == "down_blocks":
                if kind == "downsamplers":
                    new = f"input_blocks.{(layers + 1) * (block + 1)}.0.{tail.replace('conv.', 'op.')}"
                else:
                    slot = 0 if kind == "resnets" else 1
                    new = f"input_blocks.{(layers + 1) * block + index + 1}.{slot}.{tail}"
            else:
                if kind == "upsamplers":
                    has_attention = block > 0
                    new = f"output_blocks.{(layers + 1) * block + layers}.{2 if has_attention else 1}.{tail}"
                else:
                    slot = 0 if kind == "resnets" else 1
                    new = f"output_blocks.{(layers + 1) * block + index}.{slot}.{tail}"
            new = _rename("." + new, _RESNET_NAMES if kind == "resnets" else {})[1:]
    return f"model.diffusion_model.{new}"


def _vae_key(key: str, levels: int) -> str:
    """Diffusers AutoencoderKL key -> original key (``first_stage_model.`` prefix)."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = key.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
    key = key.replace("mid_block.attentions.0", "mid.attn_1")
    if "mid.attn_1" in key:
        key = _rename(key, _VAE_ATTENTION_NAMES)
    for i in range(levels):
        key = key.replace(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.")
        key = key.replace(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
        key = key.replace(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.")
        key = key.replace(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
    return f"first_stage_model.{key}"


def to_original_layout(unet: dict, vae: dict, text_encoder: dict, levels: int) -> dict:
    """Merge diffusers state dicts into one original-layout SD 1.x checkpoint."""
    state = {_unet_key(k, levels): v for k, v in unet.items()}
    for key, value in vae.items():
        new = _vae_key(key, levels)
        if "mid.attn_1" in new and value.ndim == 2:
            value = value[:, :, None, None]
        state[new] = value
    for key, value in text_encoder.items():
        text_key = key if key.startswith("text_model.") else f"text_model.{key}"
        state[f"cond_stage_model.transformer.{text_key}"] = value
    return state
