"""Generation on the tiny SDXL: both encoders' rows and LoRAs in, the scales fused, sizes from the artefact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_outputs import RUN, TOKENS, project_with_run
from fixtures_sdxl import ENCODERS, RESOLUTION, make_sdxl_artefact
from PIL import Image

from engine.artefact import load_artefact
from engine.events import ImageStarted
from engine.faces import FaceKit
from engine.generate import GenerationSettings, generate
from engine.models import load_base
from engine.outputs import read_parameters

COMPONENTS = ("unet", *ENCODERS)


@pytest.fixture(scope="module")
def sdxl_base(tiny_sdxl):
    return load_base(tiny_sdxl.folder)


@pytest.fixture(scope="module")
def sdxl_lora(sdxl_base, tmp_path_factory):
    return make_sdxl_artefact(tmp_path_factory.mktemp("artefact") / "final.safetensors", sdxl_base)


@pytest.fixture(scope="module")
def project(sdxl_lora, tmp_path_factory):
    """One project for the module, so the kept base holds the artefact from test to test."""
    return project_with_run(tmp_path_factory.mktemp("store"), sdxl_lora.path)


@pytest.fixture(scope="module")
def no_faces() -> FaceKit:
    from engine.faces.fallback import EllipseParser, HaarDetector

    return FaceKit(HaarDetector(), EllipseParser(), None, fallbacks=("detector", "parser", "recogniser"))


def fast(**values) -> GenerationSettings:
    return GenerationSettings(steps=2, **values)


def pixels(project, record) -> np.ndarray:
    return np.asarray(Image.open(project.path(record.file)).convert("RGB"))


def test_an_sdxl_run_gives_the_same_image_for_the_same_seed_at_its_training_size(project, no_faces):
    first, second = generate(project, RUN, fast(seed=5, count=2), face_kit=no_faces)
    again = generate(project, RUN, fast(seed=5), face_kit=no_faces)[0]
    assert np.array_equal(pixels(project, first), pixels(project, again))
    assert not np.array_equal(pixels(project, first), pixels(project, second))
    # The settings leave the size to the model: the artefact's resolution, not the tiny UNet's 64 px.
    assert pixels(project, first).shape == (RESOLUTION, RESOLUTION, 3)
    assert first.params["width"] == first.params["height"] == RESOLUTION
    parameters = read_parameters(project.path(first.file))
    assert parameters.startswith(
        "a photo of a alice-sks person in the style of alice-style1 <lora:alice-lora:0.9:0.6>\n"
    )
    assert f"Seed: 5, Size: {RESOLUTION}x{RESOLUTION}" in parameters
    assert "MagiCapture run: run-1" in parameters


def test_a_size_given_in_the_settings_wins(project, no_faces):
    record = generate(project, RUN, fast(width=128, height=64), face_kit=no_faces)[0]
    assert pixels(project, record).shape == (64, 128, 3)


def test_unet_and_text_scales_change_the_image(project, no_faces):
    def image(unet: float, text: float) -> np.ndarray:
        settings = fast(seed=1, unet_lora_scale=unet, text_lora_scale=text)
        return pixels(project, generate(project, RUN, settings, face_kit=no_faces)[0])

    off, unet_only, text_only = image(0.0, 0.0), image(0.6, 0.0), image(0.0, 0.9)
    assert not np.array_equal(off, unet_only)
    assert not np.array_equal(off, text_only)
    assert not np.array_equal(unet_only, text_only)


def _module_path(component: torch.nn.Module, path: str) -> str:
    """``path`` in ``component`` (diffusers names text-encoder modules ``text_model.``, which a text
    encoder of this transformers version may not have)."""
    return path if hasattr(component, "text_model") else path.removeprefix("text_model.")


def test_both_encoders_rows_and_the_loras_at_their_scales_are_in_the_weights_while_sampling(
    tiny_sdxl, sdxl_lora, project, no_faces
):
    base = load_base(tiny_sdxl.folder)  # its own base: changed only while generating
    before = {
        name: {k: v.clone() for k, v in getattr(base, name).state_dict().items()} for name in COMPONENTS
    }
    tokenizer_sizes = (len(base.tokenizer), len(base.tokenizer_2))
    artefact = load_artefact(sdxl_lora.path)
    lora = artefact.diffusers_state_dict()
    modules = {key.rsplit(".lora_A.", 1)[0] for key in lora if ".lora_A." in key}
    assert {m.split(".")[0] for m in modules} == set(COMPONENTS)
    scales = {"unet": 0.5, "text_encoder": 0.25, "text_encoder_2": 0.25}
    seen = []

    def at_first_image(event):
        if not isinstance(event, ImageStarted):
            return
        for name, rows in artefact.encoder_embeddings().items():
            table = getattr(base, name).get_input_embeddings().weight
            ids = [
                len(base.tokenizer),
                len(base.tokenizer) + 1,
            ]  # the view's tokenizer adds them after the vocabulary
            assert table.shape[0] == len(base.tokenizer) + 2, name
            for index, token in zip(ids, TOKENS.values(), strict=True):
                torch.testing.assert_close(table[index], rows[token].to(table))
        for module in sorted(modules):
            name, path = module.split(".", 1)
            path = _module_path(getattr(base, name), path)
            weight = getattr(base, name).get_submodule(path).base_layer.weight.detach()
            delta = lora[f"{module}.lora_B.weight"] @ lora[f"{module}.lora_A.weight"]
            torch.testing.assert_close(
                weight - before[name][f"{path}.weight"], scales[name] * delta, atol=1e-5, rtol=1e-4
            )
        seen.append(event)

    settings = fast(unet_lora_scale=scales["unet"], text_lora_scale=scales["text_encoder"])
    generate(project, RUN, settings, base=base, face_kit=no_faces, on_event=at_first_image)
    assert seen, "no image was started"
    # Afterwards the base is as it was: no LoRA layers, the tables and tokenizers at their sizes, the
    # weights back to within the rounding of fusing and unfusing.
    assert (len(base.tokenizer), len(base.tokenizer_2)) == tokenizer_sizes
    for name in COMPONENTS:
        after = getattr(base, name).state_dict()
        assert after.keys() == before[name].keys(), name
        for key, value in before[name].items():
            if key.endswith("token_embedding.weight"):
                assert torch.equal(after[key], value), (name, key)
            torch.testing.assert_close(after[key], value, atol=1e-6, rtol=0, msg=f"{name}.{key}")


def test_an_artefact_of_another_family_is_refused_by_name(sdxl_base, sdxl_lora, no_faces, tmp_path):
    from engine.artefact import save_artefact
    from engine.generate import GenerationError

    trained = load_artefact(sdxl_lora.path)
    path = tmp_path / "sd1.safetensors"
    save_artefact(
        path,
        trained.unet_lora,
        trained.text_lora,
        trained.embeddings,
        {**trained.metadata, "family": "sd1"},
        text_lora_2=trained.text_lora_2,
        embeddings_2=trained.embeddings_2,
    )
    project = project_with_run(tmp_path / "store", path)
    sizes = [getattr(sdxl_base, name).get_input_embeddings().num_embeddings for name in ENCODERS]
    with pytest.raises(GenerationError, match=r"trained on an SD 1\.x model.*is SDXL"):
        generate(project, RUN, fast(), base=sdxl_base, face_kit=no_faces)
    assert [getattr(sdxl_base, name).get_input_embeddings().num_embeddings for name in ENCODERS] == sizes


def test_an_artefact_without_the_second_encoders_rows_is_refused_by_generation_and_export(
    sdxl_base, sdxl_lora, no_faces, tmp_path
):
    from engine.artefact import save_artefact
    from engine.export import ExportError, export_embeddings
    from engine.generate import GenerationError

    trained = load_artefact(sdxl_lora.path)
    path = tmp_path / "final.safetensors"
    save_artefact(  # an SDXL artefact with bigG's LoRA but no bigG rows: damaged, or from an older version
        path,
        trained.unet_lora,
        trained.text_lora,
        trained.embeddings,
        trained.metadata,
        text_lora_2=trained.text_lora_2,
    )
    assert load_artefact(path).missing_encoders() == ["text_encoder_2"]
    assert trained.missing_encoders() == []
    project = project_with_run(tmp_path / "store", path)
    with pytest.raises(GenerationError, match=r"no token embeddings for SDXL's text_encoder_2"):
        generate(project, RUN, fast(), base=sdxl_base, face_kit=no_faces)
    with pytest.raises(ExportError, match=r"no token embeddings for SDXL's text_encoder_2"):
        export_embeddings(project, RUN)
