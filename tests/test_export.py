from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from fixtures_outputs import RUN, add_photo_output, make_artefact
from PIL import Image
from safetensors.torch import load_file

from engine.export import ExportError, export_embeddings, export_lora, export_outputs_zip


def sample(pipe, prompt: str = "a photo of a person") -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt, num_inference_steps=2, generator=generator, output_type="np").images[0]


@pytest.fixture
def pipe(base):
    from engine.models import make_pipeline

    pipe = make_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    if pipe.get_list_adapters():
        pipe.unload_lora_weights()


def peft_weights(module, adapter: str) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(module, adapter_name=adapter)


def test_diffusers_export_loads_and_changes_the_output(project, pipe):
    path = export_lora(project, None, format="diffusers")
    assert path == project.path("exports", RUN, "alice-lora-diffusers.safetensors")
    keys = load_file(str(path)).keys()
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in keys
    plain = sample(pipe)
    pipe.load_lora_weights(str(path), adapter_name="export")
    assert not np.array_equal(plain, sample(pipe))


def test_exported_lora_applies_the_trained_alpha(base, pipe, tmp_path):
    """An artefact with alpha 8 at rank 4 (scale 2) must act like the peft model it was taken from."""
    from engine.store import ProjectStore

    trained = make_artefact(tmp_path / "final.safetensors", base, rank=4, alpha=8.0, seed=3)
    other = ProjectStore().create("bob")
    latents, timestep, context = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    ids = base.tokenizer("a photo of a person", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = trained.unet(latents, timestep, context).sample, trained.text_encoder(ids)[0]
        plain = base.unet(latents, timestep, context).sample, base.text_encoder(ids)[0]
    assert all(
        (e - p).abs().max() > 0.05 for e, p in zip(expected, plain, strict=True)
    )  # the LoRA is far from a no-op
    for fmt in ("diffusers", "a1111"):
        path = export_lora(other, str(trained.path), format=fmt)
        pipe.load_lora_weights(str(path), adapter_name=fmt)
        with torch.no_grad():
            got = base.unet(latents, timestep, context).sample, base.text_encoder(ids)[0]
        assert all(torch.allclose(g, e, atol=2e-4) for g, e in zip(got, expected, strict=True)), fmt
        pipe.unload_lora_weights()


def test_kohya_file_has_the_names_a1111_and_comfyui_read_and_converts_back(project, pipe):
    kohya = export_lora(project, RUN, format="a1111")
    diffusers = export_lora(project, RUN, format="diffusers")
    assert kohya == project.path("exports", RUN, "alice-lora.safetensors")
    state = load_file(str(kohya))
    stem = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    assert {f"{stem}.lora_down.weight", f"{stem}.lora_up.weight", f"{stem}.alpha"} <= state.keys()
    text = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    assert {f"{text}.lora_down.weight", f"{text}.lora_up.weight", f"{text}.alpha"} <= state.keys()
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj.alpha" in state
    assert not any(k.startswith(("unet.", "text_encoder.", "lora_te1_")) for k in state)
    assert float(state[f"{stem}.alpha"]) == state[f"{stem}.lora_down.weight"].shape[0]
    with open(kohya, "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))["__metadata__"]
    assert header["ss_network_dim"] == "4" and header["ss_base_model_version"] == "sd_v1"

    pipe.load_lora_weights(str(kohya), adapter_name="kohya")
    from_kohya = peft_weights(pipe.unet, "kohya"), peft_weights(pipe.text_encoder, "kohya"), sample(pipe)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(diffusers), adapter_name="diffusers")
    from_diffusers = (
        peft_weights(pipe.unet, "diffusers"),
        peft_weights(pipe.text_encoder, "diffusers"),
        sample(pipe),
    )
    for converted, original in zip(from_kohya[:2], from_diffusers[:2], strict=True):
        assert converted.keys() == original.keys() and len(original) > 0
        assert all(torch.equal(converted[key], value) for key, value in original.items())
    assert np.array_equal(from_kohya[2], from_diffusers[2])


def test_embeddings_export_in_the_a1111_format(project, pipe, lora):
    paths = export_embeddings(project, RUN)
    assert [p.name for p in paths] == ["alice-sks.safetensors", "alice-style1.safetensors"]
    for path in paths:
        state = load_file(str(path))
        assert list(state) == ["emb_params"] and state["emb_params"].shape == (1, 32)
    from engine.artefact import load_artefact

    artefact = load_artefact(lora.path)
    tokenizer_size = len(pipe.tokenizer)
    pipe.load_textual_inversion(str(paths[0]), token="<sks>")
    try:
        row = pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids("<sks>")]
        assert torch.equal(row, artefact.embeddings["<sks>"])
    finally:
        pipe.unload_textual_inversion("<sks>")
    assert len(pipe.tokenizer) == tokenizer_size


def test_zip_of_outputs_with_their_parameters(project):
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    add_photo_output(project, image, "one")
    add_photo_output(project, image, "two")
    path = export_outputs_zip(project, ["two", "one"])
    assert path.parent == project.path("exports") and path.suffix == ".zip"
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["one.png", "params.json", "two.png"]
        listing = json.loads(archive.read("params.json"))
        assert [e["id"] for e in listing] == ["two", "one"] and listing[0]["params"]["seed"] == 7
        with archive.open("one.png") as handle, Image.open(handle) as picture:
            assert np.array_equal(np.asarray(picture), image)
            assert picture.info["parameters"].startswith("a photo of a <sks> person")

    jpeg = export_outputs_zip(project, ["one"], image_format="jpeg")
    with zipfile.ZipFile(jpeg) as archive, archive.open("one.jpg") as handle, Image.open(handle) as picture:
        assert picture.format == "JPEG" and picture.size == (30, 40)
    with pytest.raises(ExportError, match="no output image.*three"):
        export_outputs_zip(project, ["one", "three"])


def test_export_refuses_unknown_formats(project):
    with pytest.raises(ExportError, match="a1111, diffusers"):
        export_lora(project, RUN, format="ckpt")
