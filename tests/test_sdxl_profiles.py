"""Memory profiles per model family (issue 17): SDXL's 12/16/24 GB table beside SD 1.x's, the
automatic pick and the out-of-memory advice from the base model's family, and the pre-flight
estimate of an SDXL run from the estimated rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine import preflight
from engine.config import preset
from engine.devices import (
    PROFILES,
    ProfileError,
    VramProfile,
    lower_profile,
    profile_named,
    profiles_for,
)
from engine.errors import UserError
from engine.preflight import GB, DeviceInfo
from engine.training import resolve_options

ROOT = Path(__file__).resolve().parent.parent
SDXL_BASE = str(ROOT / "assets" / "sdxl")
"""SDXL 1.0 base's configs: a diffusers folder's make-up without weights (enough to read the family)."""
SD15_BASE = str(ROOT / "assets" / "sd15")


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from engine.demo.sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


def gpu(total_gb: float) -> DeviceInfo:
    return DeviceInfo("cuda", "Test GPU", round(total_gb * GB), False)


def test_sd1_profiles_keep_their_names_and_options():
    assert list(PROFILES) == ["6gb", "8gb", "12gb", "24gb"] and profiles_for("sd1") is PROFILES
    assert PROFILES["6gb"] == VramProfile("6gb", 6, train_text_encoder=False)
    assert PROFILES["24gb"] == VramProfile(
        "24gb", 24, use_8bit_adam=False, gradient_checkpointing=False, vae_slicing=False
    )
    assert {p.family for p in PROFILES.values()} == {"sd1"}


def test_sdxl_has_its_own_profiles_with_checkpointing_and_unet_only_lora_when_small():
    table = profiles_for("sdxl")
    assert list(table) == ["12gb", "16gb", "24gb"]
    assert {p.family for p in table.values()} == {"sdxl"}
    assert all(p.gradient_checkpointing and p.mixed_precision == "fp16" for p in table.values())
    assert table["12gb"].train_text_encoder is False and table["12gb"].use_8bit_adam
    assert table["16gb"].train_text_encoder and table["16gb"].use_8bit_adam


def test_the_auto_pick_and_the_smaller_profile_follow_the_family():
    picks = {size: preflight.auto_profile(gpu(size), "sdxl") for size in (8, 11.6, 16, 20, 24)}
    assert picks == {8: "12gb", 11.6: "12gb", 16: "16gb", 20: "16gb", 24: "24gb"}
    assert preflight.auto_profile(gpu(16)) == "12gb", "SD 1.x has no 16 GB profile"
    assert lower_profile("24gb", "sdxl").name == "16gb" and lower_profile("24gb").name == "12gb"
    assert lower_profile("12gb", "sdxl") is None and lower_profile("12gb").name == "8gb"


def test_a_named_profile_is_read_in_the_family_table():
    assert profile_named("16gb", "sdxl") is profiles_for("sdxl")["16gb"]
    assert profile_named("16gb", "sd1") is PROFILES["12gb"], "a 16 GB GPU's largest SD 1.x profile"
    assert profile_named("cpu", "sdxl").name == "cpu"
    with pytest.raises(ProfileError, match="too small for SDXL; choose one of 12gb, 16gb, 24gb") as refused:
        profile_named("8gb", "sdxl")
    assert isinstance(refused.value, UserError)


def test_the_family_and_size_are_read_from_the_base_model(tiny_sdxl, tiny_sd):
    assert preflight.model_family(str(tiny_sdxl.folder)) == "sdxl"
    assert preflight.model_family(str(tiny_sdxl.single_file)) == "sdxl"
    assert preflight.model_family(str(tiny_sd.folder)) == "sd1"
    assert preflight.model_size(str(tiny_sdxl.folder)) == "tiny-sdxl"
    assert preflight.model_size(str(tiny_sdxl.single_file)) == "tiny-sdxl"
    assert preflight.model_size(SDXL_BASE) == "sdxl"
    assert preflight.model_size(str(tiny_sd.folder)) == "tiny"


def test_resolve_options_take_the_sdxl_profile_of_the_base_model(tiny_sdxl):
    small = resolve_options(preset(base_model=str(tiny_sdxl.folder), device="cpu", vram_profile="12gb"))
    assert (small.family, small.profile, small.train_text_encoder, small.gradient_checkpointing) == (
        "sdxl", "12gb", False, True,
    )  # fmt: skip
    middle = resolve_options(preset(base_model=str(tiny_sdxl.single_file), device="cpu", vram_profile="16gb"))
    assert (middle.profile, middle.train_text_encoder) == ("16gb", True)
    with pytest.raises(ProfileError, match="'6gb'"):
        resolve_options(preset(base_model=str(tiny_sdxl.folder), device="cpu", vram_profile="6gb"))
    sd = resolve_options(preset(base_model=SD15_BASE, device="cpu", vram_profile="6gb"))
    assert (sd.family, sd.profile, sd.train_text_encoder) == ("sd1", "6gb", False)


def test_out_of_memory_advice_names_the_smaller_profile_of_the_family(tiny_sdxl):
    from engine.training.run import _failure_message

    options = resolve_options(preset(base_model=str(tiny_sdxl.folder), device="cpu", vram_profile="24gb"))
    message = _failure_message(torch.OutOfMemoryError("injected"), options, "run-1")
    assert "'24gb' profile" in message and "smaller '16gb' VRAM profile" in message


def test_an_sdxl_run_gets_an_estimate_from_the_estimated_sdxl_rows():
    config = preset("released", base_model=SDXL_BASE, resolution=1024, vram_profile="auto")
    found = preflight.estimate(config, gpu(16))
    assert (found.model, found.family, found.profile) == ("sdxl", "sdxl", "16gb")
    assert found.peak_bytes is not None and found.fits and not found.warnings
    assert found.basis.startswith("Estimated from SDXL 1.0 base's parameter counts")
    text = preflight.summary(found)
    assert "sdxl model, 1024 px, profile 16gb" in text and "no GPU has measured it yet" in text
    assert "python -m" not in text
    twelve = preflight.estimate(config, gpu(12))
    assert twelve.profile == "12gb" and twelve.needed_bytes <= 12 * GB, "the issue's goal: fits 12 GB"
    assert twelve.peak_bytes < found.peak_bytes, "UNet-only LoRA"
    big = preflight.estimate(
        preset("released", base_model=SDXL_BASE, resolution=1024, vram_profile="24gb"), gpu(8)
    )
    assert big.fits is False and big.suggested_profile is None, "no SD 1.x profile is offered for SDXL"
    small = preflight.estimate(preset("released", base_model=SDXL_BASE, vram_profile="8gb"), gpu(24))
    assert small.fits is False and "too small for SDXL" in small.warnings[0]


def test_by_the_estimate_the_12gb_profile_also_fits_a_10_gb_gpu_as_taesd_xl_decodes_the_face():
    """The issue's stretch goal: TAESD-XL's decode (0.27 GiB) in place of the VAE's (1.71 GiB)."""
    ten = preflight.estimate(preset("released", base_model=SDXL_BASE, resolution=1024), gpu(10))
    assert ten.profile == "12gb" and ten.fits and ten.needed_bytes <= 10 * GB


def test_the_estimate_counts_taesd_xl_as_bench_sdxl_activations_does():
    """The identity branch's figures in the arithmetic are the meta-device count's (TAESD's architecture)."""
    from bench.sdxl_activations import taesd_decode_activations
    from engine.preflight import arithmetic

    figures = taesd_decode_activations((64,))
    assert figures["64x64"]["checkpointed_peak_gib"] == arithmetic.IDENTITY_DECODE_GIB
    assert figures["parameters"] == arithmetic.TINY_DECODER_PARAMETERS


def test_the_shipped_table_has_an_estimated_row_per_sdxl_profile():
    rows = [r for r in preflight.load_table() if r.model == "sdxl" and r.device == "cuda"]
    assert sorted(r.profile for r in rows) == ["12gb", "16gb", "24gb"]
    assert all(r.estimated and r.resolution == 1024 for r in rows)
    assert all(6 * GB < r.resident_bytes < r.peak_bytes < 16 * GB for r in rows)
    assert not any(r.estimated for r in preflight.load_table() if r.model != "sdxl")
    on_cpu = [r for r in preflight.load_table() if r.model == "sdxl" and r.device == "cpu"]
    assert {(r.profile, r.resolution, r.estimated) for r in on_cpu} == {
        ("cpu", 512, False),
        ("12gb", 512, False),
    }
    assert all("--model sdxl-512" in r.measured for r in on_cpu)  # the SDXL-shaped model, measured
    rebuilt = preflight.build_table([], keep=preflight.load_table())
    assert len(rebuilt["rows"]) == len(preflight.load_table())
    measured = dataclasses.replace(rows[0], estimated=False, peak_bytes=1, measured="a GPU")
    replaced = preflight.build_table([], keep=[measured])["rows"]
    kept = [r for r in replaced if (r["model"], r["profile"]) == ("sdxl", measured.profile)]
    assert kept == [measured.__dict__], "a measured row replaces the estimate"
