"""Choosing SDXL (issue 17): what a base source is, named without loading weights; each family's
default hub id; the fp16-fix VAE for SDXL in fp16, from a fake Hugging Face cache, or downloaded
when downloads are on (a download that succeeds is a stand-in for the hub's; one that fails meets a
real refused connection)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import pytest
import torch

from engine.families.sdxl import FP16_FIX_VAE
from engine.models import DEFAULT_BASES, ModelLoadError, identify_base, load_base

COMMIT = "0" * 40


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


def test_without_the_fix_a_vae_that_would_decode_in_fp16_decodes_in_fp32(tiny_sdxl, hub_cache, tmp_path):
    """A fine-tune whose VAE config turns force_upcast off would decode SDXL latents in fp16 (NaNs at full size)."""
    import shutil

    from engine.models import make_pipeline

    folder = tmp_path / "fine-tune"
    shutil.copytree(tiny_sdxl.folder, folder)
    config = json.loads((folder / "vae" / "config.json").read_text())
    (folder / "vae" / "config.json").write_text(json.dumps({**config, "force_upcast": False}))
    base = load_base(folder, device="cpu", dtype="fp16")
    decoded = []
    base.vae.decoder.register_forward_pre_hook(lambda module, args: decoded.append(args[0].dtype))
    make_pipeline(base)("a portrait", num_inference_steps=1, height=64, width=64, output_type="np")
    assert decoded == [torch.float32] and base.vae.dtype == torch.float16


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads on, for this test (the suite runs offline)."""
    for name in ("HF_HUB_OFFLINE", "MAGICAPTURE_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_online_the_fix_vae_is_downloaded_on_first_use(tiny_sdxl, hub_cache, online, tmp_path, monkeypatch):
    asked = []

    def download(repo_id: str, allow_patterns: list[str]) -> str:
        asked.append((repo_id, sorted(allow_patterns)))
        fixed.update(cache_fix_vae(hub_cache, tmp_path))  # as the hub's download leaves it
        return str(next((hub_cache / f"models--{repo_id.replace('/', '--')}" / "snapshots").iterdir()))

    fixed: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp16")
    assert asked == [(FP16_FIX_VAE, ["config.json", "diffusion_pytorch_model.safetensors"])]
    for name, weight in base.vae.state_dict().items():
        torch.testing.assert_close(weight, fixed[name].half(), msg=name)
    assert base.notes == (f"SDXL in fp16: the VAE is the fp16-fix one ({FP16_FIX_VAE}, downloaded).",)
    load_base(tiny_sdxl.folder, device="cpu", dtype="fp16")  # the second load reads the cache
    assert len(asked) == 1


def test_online_a_failed_download_of_the_fix_vae_upcasts_and_says_why(
    tiny_sdxl, hub_cache, online, monkeypatch
):
    refused = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused
    monkeypatch.setenv("HF_ENDPOINT", refused)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", refused)
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp16")
    assert base.vae.config.force_upcast is True
    [note] = base.notes
    assert "is not in the Hugging Face cache and could not be downloaded (" in note
    assert "upcast to fp32" in note


def test_online_a_transfer_broken_midway_upcasts_and_says_why(tiny_sdxl, hub_cache, online, monkeypatch):
    """huggingface_hub's HTTP library raises its own timeout, not an OSError, when a transfer stalls."""
    from huggingface_hub.utils import _http

    timeout = _http.httpx2.ReadTimeout("The read operation timed out")

    def download(*args, **kwargs):
        raise timeout

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp16")
    assert base.vae.config.force_upcast is True
    assert "could not be downloaded (The read operation timed out)" in base.notes[0]


def test_offline_the_fix_vae_is_not_fetched(tiny_sdxl, hub_cache, monkeypatch):
    def download(*args, **kwargs):
        raise AssertionError("no download while offline")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    [note] = load_base(tiny_sdxl.folder, device="cpu", dtype="fp16").notes
    assert "is not in the Hugging Face cache (downloads are off)" in note


def test_in_fp32_the_base_keeps_its_own_vae_and_says_nothing(tiny_sdxl, hub_cache, tmp_path):
    cache_fix_vae(hub_cache, tmp_path)
    base = load_base(tiny_sdxl.folder, device="cpu", dtype="fp32")
    assert base.notes == () and base.vae.config.force_upcast is True


@pytest.fixture
def kit(tiny_sd, tiny_sdxl, tmp_path):
    """A demo kit of the two tiny models (the face and restoration assets are not needed here)."""
    from engine.demo import DemoKit

    return DemoKit(tmp_path, tiny_sd, tiny_sdxl, tmp_path / "taesd", tmp_path / "assets")


def test_the_demo_studio_trains_and_paints_with_the_tiny_model_of_the_chosen_family(kit, tiny_sdxl, tmp_path):
    from engine.store import ProjectStore
    from studio.app import header_html
    from studio.settings import on_save
    from studio.state import Studio
    from studio.train import start_values

    studio = Studio(ProjectStore(tmp_path / "data"), demo=kit, demo_family="sdxl")
    assert studio.base_model == str(tiny_sdxl.folder) and studio.base_family().name == "sdxl"
    assert "Demo model: tiny SDXL" in header_html(studio)
    native = json.loads((tiny_sdxl.folder / "unet" / "config.json").read_text())["sample_size"] * 8
    assert start_values(studio, "fast").resolution == kit.resolution == native  # the tiny SDXL's own size

    line = on_save(studio, studio.settings.base_model, False, False, "sd1")
    assert studio.base_model == str(kit.sd.folder) and line == f"SD 1.x diffusers folder: {kit.sd.folder}"
    assert "Demo model: tiny SD 1.x" in header_html(studio)


def test_the_settings_name_the_family_and_train_at_its_native_size(tiny_sdxl, tmp_path):
    from engine.store import ProjectStore
    from studio.settings import base_chip, describe_base
    from studio.state import Studio, StudioSettings
    from studio.train import start_values

    assert describe_base(str(tiny_sdxl.single_file)) == "SDXL single file: sdxl-tiny.safetensors"
    assert describe_base(str(tmp_path / "missing.safetensors")).startswith("⚠ No model at")
    studio = Studio(ProjectStore(tmp_path / "data"))
    assert start_values(studio, "released").resolution == 512  # SD 1.x's default base
    studio.update_settings(StudioSettings(base_model=str(tiny_sdxl.single_file)))
    assert base_chip(studio) == "Base model: SDXL"
    assert start_values(studio, "released").resolution == 1024


def test_the_studio_flag_picks_the_demo_family():
    from app import parse_args

    assert parse_args([]).demo is None
    assert parse_args(["--demo"]).demo == "sd1"  # plain --demo stays the tiny SD 1.x
    assert parse_args(["--demo", "sdxl", "--port", "7861"]).demo == "sdxl"


def train_settings(*argv: str) -> tuple[dict, str]:
    """What ``magicapture train anna ARGV`` would train with (settings before the preset), and its line on the base."""
    from engine.cli import build_parser
    from engine.cli.commands import _parse_overrides, train_overrides

    args = build_parser().parse_args(["train", "anna", *argv])
    settings, base = train_overrides(args, _parse_overrides(args.set))
    return settings, base.describe()


def test_the_command_names_the_base_family_and_trains_at_its_native_size(tiny_sdxl, hub_cache):
    settings, line = train_settings("--base", str(tiny_sdxl.single_file))
    assert settings["base_model"] == str(tiny_sdxl.single_file) and settings["resolution"] == 1024
    assert line == "SDXL single file: sdxl-tiny.safetensors"
    assert train_settings("--base", str(tiny_sdxl.folder), "--set", "resolution=768")[0]["resolution"] == 768

    settings, line = train_settings("--family", "sdxl")
    assert settings == {"base_model": "stabilityai/stable-diffusion-xl-base-1.0", "resolution": 1024}
    assert line.startswith("SDXL Hugging Face model id: stabilityai/")
    assert train_settings()[0]["base_model"] == DEFAULT_BASES["sd1"]  # no --family: SD 1.x, as before


def test_a_base_of_another_family_than_asked_is_refused(tiny_sdxl):
    from engine.cli import CommandError

    with pytest.raises(CommandError, match="is SDXL but --family asks for SD 1.x"):
        train_settings("--base", str(tiny_sdxl.folder), "--family", "sd1")


def test_train_demo_picks_the_tiny_model_of_either_family(monkeypatch):
    from engine.cli import CommandError
    from engine.demo import build_demo_kit, default_kit_folder

    for name in ("MAGICAPTURE_ASSETS", "MAGICAPTURE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    kit = build_demo_kit(default_kit_folder())
    settings, line = train_settings("--demo", "--family", "sdxl", "--set", "phase2_steps=2")
    assert settings["base_model"] == str(kit.sdxl.folder) and settings["resolution"] == kit.resolution
    assert settings["device"] == "cpu" and settings["phase2_steps"] == 2
    assert os.environ["MAGICAPTURE_ASSETS"] == str(kit.assets)
    assert line == f"SDXL diffusers folder: {kit.sdxl.folder}"
    assert train_settings("--demo")[0]["base_model"] == str(kit.sd.folder)  # plain --demo: the tiny SD 1.x
    with pytest.raises(CommandError, match="takes no --base"):
        train_settings("--demo", "--base", str(kit.sd.folder))


def test_the_cli_takes_every_output_preset_the_studio_offers_sdxl_sizes_included():
    from engine.cli.parser import build_parser
    from engine.presets import presets_for

    parser = build_parser()
    for native in (512, 1024):
        for name in presets_for(native):
            assert parser.parse_args(["generate", "anna", "--preset", name]).preset == name


@pytest.mark.parametrize(
    ("memory", "line"),
    [
        (8.0, "GPU: cuda with 8 GB; memory profile 8gb for SD 1.x, SDXL needs 12 GB."),
        (12.0, "GPU: cuda with 12 GB; memory profile 12gb for SD 1.x, 12gb for SDXL."),
        (16.0, "GPU: cuda with 16 GB; memory profile 12gb for SD 1.x, 16gb for SDXL."),
    ],
)
def test_the_device_line_gives_each_familys_profile_or_what_it_needs(monkeypatch, memory, line):
    import torch

    import engine.devices
    from studio.state import probe_device

    monkeypatch.setattr(engine.devices, "pick_device", lambda preferred=None: torch.device("cuda"))
    monkeypatch.setattr(engine.devices, "gpu_memory_gb", lambda device: memory)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert probe_device() == line
