from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.demo.sd import clip_vocabulary
from engine.models import ModelLoadError, load_base, make_pipeline

SD15_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "sd15" / "tokenizer"


def _sample(base, seed: int, sampler: str = "euler_a") -> np.ndarray:
    pipe = make_pipeline(base, sampler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    out = pipe(
        "a photo of a person",
        num_inference_steps=3,
        generator=generator,
        height=64,
        width=64,
        output_type="np",
    )
    return out.images[0]


@pytest.mark.slow
def test_folder_and_single_file_give_the_same_image(tiny_sd):
    folder = load_base(tiny_sd.folder)
    single = load_base(tiny_sd.single_file, config=tiny_sd.folder)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    first = _sample(folder, seed=3)
    # Equal weights at other memory alignments (every UNet tensor of the single file starts at another
    # offset mod 64 bytes): the CPU kernels may then sum in another order, a last-bit difference.
    np.testing.assert_allclose(first, _sample(single, seed=3), rtol=0, atol=1e-5)
    assert np.abs(first - _sample(folder, seed=4)).max() > 1e-2


def test_training_schedule_is_sd1_ddpm(tiny_sd):
    base = load_base(tiny_sd.folder)
    config = base.noise_scheduler.config
    assert (config.num_train_timesteps, config.beta_schedule, config.prediction_type) == (
        1000,
        "scaled_linear",
        "epsilon",
    )
    assert config.beta_start == pytest.approx(0.00085) and config.beta_end == pytest.approx(0.012)
    assert base.dtype == torch.float32 and base.device.type == "cpu"


def test_tokenizer_has_the_real_clip_vocabulary(tiny_sd):
    base = load_base(tiny_sd.folder)
    assert base.tokenizer("a photo of a person").input_ids == [49406, 320, 1125, 539, 320, 2533, 49407]
    assert len(base.tokenizer) == 49408


def test_committed_sd15_tokenizer_matches_the_clip_vocabulary():
    vocab, merges = clip_vocabulary()
    assert json.loads((SD15_TOKENIZER / "vocab.json").read_text("utf-8")) == vocab
    assert (SD15_TOKENIZER / "merges.txt").read_text("utf-8").splitlines()[1:] == merges


def test_missing_path_is_reported(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base(tmp_path / "nothing.safetensors")


def test_pickle_checkpoint_refused_by_default(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ModelLoadError, match="allow pickle explicitly"):
        load_base(ckpt)


def test_truncated_single_file_is_reported(tiny_sd, tmp_path):
    cut = tmp_path / "cut.safetensors"
    data = tiny_sd.single_file.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_base(cut, config=tiny_sd.folder)


def test_garbage_file_is_reported(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        load_base(bad)


def test_a_partial_sdxl_checkpoint_is_named_and_refused(tmp_path):
    from safetensors.torch import save_file

    xl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(xl))
    with pytest.raises(ModelLoadError, match=r"not a full SDXL checkpoint \(no model.diffusion_model."):
        load_base(xl)


def test_lora_file_is_not_a_base_model(tmp_path):
    from safetensors.torch import save_file

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2)}, str(lora))
    with pytest.raises(ModelLoadError, match="not a full SD 1.x checkpoint"):
        load_base(lora)


def test_an_sdxl_folder_without_the_second_encoder_is_refused(tiny_sd, tmp_path):
    folder = tmp_path / "xl"
    shutil.copytree(tiny_sd.folder, folder)
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["addition_embed_type"] = "text_time"
    config_file.write_text(json.dumps(config))
    with pytest.raises(
        ModelLoadError, match="is an SDXL model .* but has no tokenizer_2, text_encoder_2 folder"
    ):
        load_base(folder)


def test_unknown_sampler_is_refused(tiny_sd):
    with pytest.raises(ValueError, match="euler_a"):
        make_pipeline(load_base(tiny_sd.folder), "plms")


def test_the_pickle_opt_in_can_come_from_the_environment(tmp_path, monkeypatch):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    monkeypatch.setenv("MAGICAPTURE_ALLOW_PICKLE", "1")
    with pytest.raises(Exception) as caught:
        load_base(ckpt)
    assert "allow pickle explicitly" not in str(caught.value)
    monkeypatch.setenv("MAGICAPTURE_ALLOW_PICKLE", "0")
    with pytest.raises(ModelLoadError, match="allow pickle explicitly"):
        load_base(ckpt)


def test_the_tiny_decoder_loads_frozen_and_decodes_latents_at_eight_times_their_size(tiny_decoder):
    from engine.models import load_tiny_decoder

    decoder = load_tiny_decoder(tiny_decoder, torch.device("cpu"), torch.float32)
    assert not any(p.requires_grad for p in decoder.parameters())
    latents = torch.randn(2, 4, 5, 7, requires_grad=True)
    images = decoder.decode(latents).sample
    assert images.shape == (2, 3, 40, 56)
    images.mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_a_missing_or_pickle_only_tiny_decoder_is_refused_with_the_way_out(tiny_decoder, tmp_path):
    from engine.models import load_tiny_decoder

    with pytest.raises(ModelLoadError, match="No tiny decoder at"):
        load_tiny_decoder(tmp_path / "nowhere", torch.device("cpu"), torch.float32)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_decoder, pickled)
    weights = pickled / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), pickled / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="identity_decoder=vae"):
        load_tiny_decoder(pickled, torch.device("cpu"), torch.float32)
