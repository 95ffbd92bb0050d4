"""SDXL loose ends: the config's help names both families, SDXL's VAE encodes in fp32 without the
fp16-fix VAE, a base of unknown family is said to be unknown, a demo generation's files."""

from __future__ import annotations

import dataclasses

from engine.config import TrainingConfig


def _help(name: str) -> str:
    return {item.name: item for item in dataclasses.fields(TrainingConfig)}[name].metadata["help"]


def test_the_base_model_help_names_both_families():
    text = _help("base_model")
    assert "SD 1.x" in text and "SDXL" in text
    assert "hub id" in text and "folder" in text and ".safetensors" in text
    assert "1024" in _help("resolution") and "512" in _help("resolution")
    assert "encoders" in _help("train_text_encoder")


def _fp16_trainer(project, base_model, monkeypatch, tmp_path):
    """A trainer set up as a run in fp16 has it (its weights cast to fp16, latents cached), on the CPU.

    The accelerator is a plain one: only the options' weight dtype (fp16) matters for the cache. No
    fp16-fix VAE is in the (empty) Hugging Face cache.
    """
    import torch
    from tiny import tiny_config

    from engine.training.loop import Trainer
    from engine.training.options import make_accelerator, resolve_options

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    config = tiny_config(base_model, identity_weight=0.0, latent_cache_variants=1)
    plain = resolve_options(config)
    fp16 = dataclasses.replace(plain, mixed_precision="fp16")
    assert fp16.weight_dtype == torch.float16
    trainer = Trainer(project, "fp16", config, fp16, make_accelerator(plain), lambda event: None, None)
    return trainer


def _encoder_dtypes(vae) -> list:
    """Records the dtype of the input and the weights of each call of the VAE's encoder (the real module)."""
    seen = []
    vae.encoder.register_forward_pre_hook(
        lambda module, args: seen.append((args[0].dtype, module.conv_in.weight.dtype))
    )
    return seen


def test_sdxl_in_fp16_without_the_fix_vae_encodes_its_latents_in_fp32(
    tiny_sdxl, isolated_home, monkeypatch, tmp_path
):
    import torch

    from engine.demo.portraits import make_project
    from engine.models import load_base

    trainer = _fp16_trainer(make_project(isolated_home), tiny_sdxl.folder, monkeypatch, tmp_path)
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp32")
    assert base.vae.config.force_upcast
    seen = _encoder_dtypes(base.vae)
    trainer.setup(base, None)
    assert seen and set(seen) == {(torch.float32, torch.float32)}, seen
    assert base.vae.dtype == torch.float16, "the VAE goes back to the run's dtype after the encode"
    means = torch.stack([view.mean for views in trainer.data.views for view in views])
    assert torch.isfinite(means).all() and means.abs().sum() > 0


def test_sd1_in_fp16_keeps_encoding_in_fp16(tiny_sd, isolated_home, monkeypatch, tmp_path):
    import torch

    from engine.demo.portraits import make_project
    from engine.models import load_base

    trainer = _fp16_trainer(make_project(isolated_home), tiny_sd.folder, monkeypatch, tmp_path)
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
