"""SDXL loose ends: the config's help names both families, SDXL's VAE encodes in fp32 without the
fp16-fix VAE, a base of unknown family is said to be unknown, a demo generation's files."""

from __future__ import annotations

import dataclasses

import pytest

from engine.config import TrainingConfig


def _help(name: str) -> str:
    return {item.name: item for item in dataclasses.fields(TrainingConfig)}[name].metadata["help"]


def test_the_base_model_help_names_both_families():
    text = _help("base_model")
    assert "SD 1.x" in text and "SDXL" in text
    assert "hub id" in text and "folder" in text and ".safetensors" in text
    assert "1024" in _help("resolution") and "512" in _help("resolution")
    assert "encoders" in _help("train_text_encoder")


def _fp16_trainer(project, base_model):
    """A trainer whose setup treats a base as a run in fp16 does (its weights cast to fp16, latents
    cached), on the CPU. The accelerator is a plain one: only the options' weight dtype matters here.
    The base is loaded in fp32 and cast by the trainer, so its VAE config's own ``force_upcast`` decides
    (the loader's fp16-fix VAE choice is for bases it loads in fp16)."""
    import torch
    from tiny import tiny_config

    from engine.training.loop import Trainer
    from engine.training.options import make_accelerator, resolve_options

    config = tiny_config(base_model, identity_weight=0.0, latent_cache_variants=1)
    plain = resolve_options(config)
    fp16 = dataclasses.replace(plain, mixed_precision="fp16")
    assert fp16.weight_dtype == torch.float16
    return Trainer(project, "fp16", config, fp16, make_accelerator(plain), lambda event: None, None)


def _encoder_dtypes(vae) -> list:
    """Records the dtype of the input and the weights of each call of the VAE's encoder (the real module)."""
    seen = []
    vae.encoder.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].dtype, module.conv_in.weight.dtype))
    )
    return seen


def test_sdxl_in_fp16_without_the_fix_vae_encodes_its_latents_in_fp32(tiny_sdxl, isolated_home):
    import torch

    from engine.demo.portraits import make_project
    from engine.models import load_base

    trainer = _fp16_trainer(make_project(isolated_home), tiny_sdxl.folder)
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp32")
    assert base.vae.config.force_upcast
    with torch.no_grad():  # activations beyond fp16's 65504, as real SDXL's VAE has: inf, then NaN in fp16
        base.vae.encoder.conv_in.weight.mul_(1e5)
    seen = _encoder_dtypes(base.vae)
    trainer.setup(base, None)
    means = torch.stack([view.mean for views in trainer.data.views for view in views])
    assert torch.isfinite(means).all(), "latents NaN or inf: the encode overflowed"
    assert seen and set(seen) == {(torch.float32, torch.float32)}, seen
    assert base.vae.dtype == torch.float16, "the VAE goes back to the run's dtype after the encode"


def test_sd1_in_fp16_keeps_encoding_in_fp16(tiny_sd, isolated_home):
    import torch

    from engine.demo.portraits import make_project
    from engine.models import load_base

    trainer = _fp16_trainer(make_project(isolated_home), tiny_sd.folder)
    base = load_base(tiny_sd.folder, device="cpu", dtype="fp32")
    seen = _encoder_dtypes(base.vae)
    trainer.setup(base, None)
    assert seen and set(seen) == {(torch.float16, torch.float16)}, seen
    means = torch.stack([view.mean for views in trainer.data.views for view in views])
    assert torch.isfinite(means).all()


def test_the_fp16_fix_vae_or_another_precision_needs_no_upcast(tiny_sdxl, tiny_sd):
    import torch

    from engine.models import load_base, vae_upcast

    sdxl = load_base(tiny_sdxl.folder, device="cpu", dtype="fp32")
    assert not vae_upcast(sdxl), "fp32 weights"
    sdxl.vae.to(torch.float16)
    assert vae_upcast(sdxl)
    sdxl.vae.register_to_config(force_upcast=False)  # what the fp16-fix VAE's config says
    assert not vae_upcast(sdxl)
    sdxl.vae.register_to_config(force_upcast=True)
    sdxl.vae.to(torch.bfloat16)
    assert not vae_upcast(sdxl), "bf16 has fp32's range"
    sd = load_base(tiny_sd.folder, device="cpu", dtype="fp16")
    assert sd.vae.config.force_upcast and not vae_upcast(sd), "SD 1.x's pipelines ignore the flag"


UNKNOWN_HUB_ID = "someone/portrait-model-never-downloaded"
"""A hub id that is in no cache and is no family's default."""


@pytest.fixture
def offline_empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MAGICAPTURE_OFFLINE", "1")


def _gpu(total_gb: float):
    from engine.preflight import GB, DeviceInfo

    return DeviceInfo("cuda", "Test GPU", round(total_gb * GB), False)


def test_a_hub_id_of_unreadable_family_is_unknown_not_sd1(offline_empty_cache):
    from engine import preflight

    assert preflight.model_family(UNKNOWN_HUB_ID) == "unknown"
    assert preflight.model_size(UNKNOWN_HUB_ID) == "unknown"


def test_its_profile_suits_either_family_and_the_user_is_told(offline_empty_cache):
    from engine import preflight
    from engine.config import preset
    from engine.devices import PROFILES, SDXL_PROFILES, profile_named

    config = preset(base_model=UNKNOWN_HUB_ID, resolution=1024, vram_profile="auto")
    picks = {size: preflight.estimate(config, _gpu(size)) for size in (8, 16, 24)}
    assert {size: found.profile for size, found in picks.items()} == {8: "8gb", 16: "16gb", 24: "24gb"}
    for size, found in picks.items():
        assert found.family == "unknown" and found.peak_bytes is None
        profile = profile_named(found.profile, "unknown")
        assert profile.gradient_checkpointing, f"{size} GB: checkpointing, as an SDXL model needs"
        text = preflight.summary(found)
        assert "family" in text and "SD 1.x or SDXL" in text and "not known" in text, text
    assert profile_named("24gb", "unknown") == SDXL_PROFILES["24gb"] != PROFILES["24gb"]
    assert profile_named("8gb", "unknown") == PROFILES["8gb"], "a GPU too small for SDXL: SD 1.x's"


def test_training_options_for_an_unknown_family_are_the_safe_ones(offline_empty_cache):
    from engine.config import preset
    from engine.training import resolve_options

    options = resolve_options(preset(base_model=UNKNOWN_HUB_ID, device="cpu", vram_profile="24gb"))
    assert (options.family, options.profile, options.gradient_checkpointing) == ("unknown", "24gb", True)


def test_two_portraits_post_processed_are_four_pngs_each_in_the_manifest(lora, tmp_path, monkeypatch):
    """Item 4: a batch of two with post-processing (the studio suggests GFPGAN for SDXL runs) leaves
    the two raw images and their two post-processed versions; every PNG is one manifest entry."""
    from pathlib import Path

    from fixtures_outputs import RUN, project_with_run

    from engine.demo.restore import build_restore_assets
    from engine.faces import FaceKit
    from engine.faces.fallback import EllipseParser, HaarDetector
    from engine.generate import GenerationSettings, generate
    from engine.outputs import output_records
    from engine.postprocess import postprocess_output

    assets = build_restore_assets(tmp_path / "assets")
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(assets.gfpgan.parent))
    kit = FaceKit(HaarDetector(), EllipseParser(), None, fallbacks=("detector", "parser", "recogniser"))
    project = project_with_run(tmp_path / "store", lora.path)
    raw = generate(project, RUN, GenerationSettings(steps=2, count=2), face_kit=kit)
    done = [postprocess_output(project, record.id, restore="gfpgan", face_kit=kit) for record in raw]
    files = sorted(path.name for path in project.path("outputs").iterdir())
    records = output_records(project)
    assert len(files) == 4 and files == sorted(Path(record.file).name for record in records)
    assert [record.parent for record in done] == [record.id for record in raw]
    assert all(record.parent is None for record in raw)


def test_loading_an_uncached_hub_id_offline_says_so(offline_empty_cache):
    from engine.models import ModelLoadError, load_base

    with pytest.raises(ModelLoadError) as refused:
        load_base(UNKNOWN_HUB_ID)
    message = str(refused.value)
    assert UNKNOWN_HUB_ID in message and "not in the Hugging Face cache" in message and "offline" in message
