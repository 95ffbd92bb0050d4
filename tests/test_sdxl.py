"""SDXL, the second model family: the tiny SDXL of the demo kit, its loading and its prompt states."""

from __future__ import annotations

import pytest
import torch

from engine.demo.sdxl import build_tiny_sdxl
from engine.models import safetensors_header


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


def test_the_tiny_single_file_has_the_sdxl_layout_and_the_folders_weights(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    keys = set(safetensors_header(tiny_sdxl.single_file))
    for name in (
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
    ):
        assert name in keys
    folder = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl.folder, add_watermarker=False)
    single = StableDiffusionXLPipeline.from_single_file(
        str(tiny_sdxl.single_file), config=str(tiny_sdxl.folder), local_files_only=True, add_watermarker=False
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, loaded = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), name
    assert single.tokenizer_2.pad_token == "!" and single.tokenizer.pad_token == "<|endoftext|>"
