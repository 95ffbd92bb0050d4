"""Choosing SDXL (issue 17): what a base source is, named without loading weights; each family's
default hub id; the fp16-fix VAE for SDXL in fp16, from a fake Hugging Face cache (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from engine.demo.sdxl import build_tiny_sdxl
from engine.families.sdxl import FP16_FIX_VAE
from engine.models import DEFAULT_BASES, ModelLoadError, identify_base, load_base

COMMIT = "0" * 40


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache (``$HF_HUB_CACHE``) of this test's own."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo: str, files: dict[str, Path]) -> Path:
    """Put ``files`` (name in the repo -> local file) into ``cache`` as a download of ``repo`` leaves them."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(source.read_bytes())
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    return snapshot


def cache_fix_vae(cache: Path, tmp_path: Path, **config) -> dict[str, torch.Tensor]:
    """A tiny AutoencoderKL saved as the fp16-fix VAE's repo; returns its weights."""
    from diffusers import AutoencoderKL

    torch.manual_seed(123)
    shape = {
        "block_out_channels": (8, 16, 16, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
    }
    vae = AutoencoderKL(**{**shape, **config}, scaling_factor=0.13025, force_upcast=False)
    vae.save_pretrained(tmp_path / "fix")
    names = ("config.json", "diffusion_pytorch_model.safetensors")
    cache_repo(cache, FP16_FIX_VAE, {name: tmp_path / "fix" / name for name in names})
    return vae.state_dict()


def test_each_source_is_described_with_its_family(tiny_sd, tiny_sdxl, hub_cache):
    assert identify_base(tiny_sdxl.folder).describe() == f"SDXL diffusers folder: {tiny_sdxl.folder}"
    assert identify_base(tiny_sdxl.single_file).describe() == "SDXL single file: sdxl-tiny.safetensors"
    assert identify_base(tiny_sd.folder).describe() == f"SD 1.x diffusers folder: {tiny_sd.folder}"
    assert identify_base(tiny_sd.single_file).describe() == f"SD 1.x single file: {tiny_sd.single_file.name}"
    assert identify_base(DEFAULT_BASES["sdxl"]).describe() == (
        "SDXL Hugging Face model id: stabilityai/stable-diffusion-xl-base-1.0 (downloaded on first use)."
    )
    assert identify_base(DEFAULT_BASES["sd1"]).family.name == "sd1"
    unknown = identify_base("someone/some-model")
    assert unknown.family is None and "its family is read then" in unknown.describe()


def test_a_cached_hub_repo_is_named_by_its_unet_config(tiny_sdxl, hub_cache):
    config = {"unet/config.json": tiny_sdxl.folder / "unet" / "config.json"}
    cache_repo(hub_cache, "someone/photoreal-xl", config)
    assert (
        identify_base("someone/photoreal-xl").describe() == "SDXL Hugging Face model id: someone/photoreal-xl"
    )


def test_sources_load_base_refuses_are_refused_by_name(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="does not exist"):
        identify_base(str(tmp_path / "nothing.safetensors"))
    (tmp_path / "photos").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        identify_base(tmp_path / "photos")
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not read")
    with pytest.raises(ModelLoadError, match="pickle"):
        identify_base(pickle)
    monkeypatch.setenv("MAGICAPTURE_ALLOW_PICKLE", "1")
    assert (
        identify_base(pickle).describe().startswith("SD 1.x pickle checkpoint: model.ckpt (taken as SD 1.x")
    )
    refiner = tmp_path / "refiner"
    (refiner / "unet").mkdir(parents=True)
    (refiner / "unet" / "config.json").write_text(
        json.dumps({"addition_embed_type": "text_time", "cross_attention_dim": 1280})
    )
    with pytest.raises(ModelLoadError, match="refiner"):
        identify_base(refiner)


@pytest.mark.parametrize("form", ["folder", "single_file"])
def test_sdxl_in_fp16_decodes_with_the_cached_fp16_fix_vae(tiny_sdxl, hub_cache, tmp_path, form):
    fixed = cache_fix_vae(hub_cache, tmp_path)
    config = tiny_sdxl.folder if form == "single_file" else None  # the tiny widths, not SDXL 1.0's
    base = load_base(getattr(tiny_sdxl, form), device="cpu", dtype="fp16", config=config)
    assert base.vae.dtype == torch.float16
    for name, weight in base.vae.state_dict().items():
        torch.testing.assert_close(weight, fixed[name].half(), msg=name)
    assert base.notes == (
        f"SDXL in fp16: the VAE is the fp16-fix one ({FP16_FIX_VAE}, from the Hugging Face cache).",
    )


def test_without_the_fix_the_base_vae_is_upcast_to_decode(tiny_sdxl, hub_cache, tmp_path):
    from diffusers import AutoencoderKL

    own = AutoencoderKL.from_pretrained(tiny_sdxl.folder, subfolder="vae").state_dict()
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp16")
    assert base.vae.config.force_upcast is True  # StableDiffusionXLPipeline decodes in fp32
    torch.testing.assert_close(
        base.vae.state_dict()["decoder.conv_out.weight"], own["decoder.conv_out.weight"].half()
    )
    [note] = base.notes
    assert "is not in the Hugging Face cache" in note and "upcast to fp32" in note

    cache_fix_vae(hub_cache, tmp_path, block_out_channels=(8, 16, 16, 32))  # another model's VAE
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp16")
    torch.testing.assert_close(
        base.vae.state_dict()["decoder.conv_out.weight"], own["decoder.conv_out.weight"].half()
    )
    assert "not this model's VAE shape" in base.notes[0]


def test_in_fp32_the_base_keeps_its_own_vae_and_says_nothing(tiny_sdxl, hub_cache, tmp_path):
    cache_fix_vae(hub_cache, tmp_path)
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp32")
    assert base.notes == () and base.vae.config.force_upcast is True
