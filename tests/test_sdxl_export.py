"""Export on the tiny SDXL: the kohya key layout of the UNet and both encoders, the clip_l/clip_g embeddings."""

from __future__ import annotations

import pytest
import torch
from fixtures_outputs import RUN, TOKENS, project_with_run
from fixtures_sdxl import ENCODERS, make_sdxl_artefact
from safetensors import safe_open
from safetensors.torch import load_file

from engine.artefact import load_artefact
from engine.export import USAGE_NOTE, export_embeddings, export_lora
from engine.models import load_base

KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
"""The prefixes A1111 and ComfyUI read in an SDXL LoRA (kohya's sd-scripts layout)."""
SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


@pytest.fixture(scope="module")
def sdxl_base(tiny_sdxl):
    return load_base(tiny_sdxl.folder)


@pytest.fixture(scope="module")
def sdxl_lora(sdxl_base, tmp_path_factory):
    return make_sdxl_artefact(tmp_path_factory.mktemp("artefact") / "final.safetensors", sdxl_base)


@pytest.fixture
def project(sdxl_lora, tmp_path):
    return project_with_run(tmp_path / "store", sdxl_lora.path)


def _kohya_module(component: str, module: torch.nn.Module, path: str) -> str:
    """kohya's name of a module: the prefix, then the module path with "_" for "."; a text encoder's
    path as in transformers' CLIP models (``text_model.encoder...``), whichever the model nests."""
    if component != "unet" and not hasattr(module, "text_model"):
        path = f"text_model.{path}"
    return KOHYA[component] + path.replace(".", "_")


def expected_kohya_modules(sdxl_lora) -> dict[str, str]:
    """kohya name -> component for every module the artefact's LoRA targets, walked in the models."""
    from peft.tuners.lora import LoraLayer

    names = {}
    for component, module in sdxl_lora.modules.items():
        for path, layer in module.named_modules():
            if isinstance(layer, LoraLayer):
                names[_kohya_module(component, module, path)] = component
    return names


def test_the_kohya_lora_has_every_targeted_module_of_the_unet_and_both_encoders_and_nothing_else(
    project, sdxl_lora
):
    path = export_lora(project, RUN, format="a1111")
    state = load_file(str(path))
    expected = expected_kohya_modules(sdxl_lora)
    assert set(expected.values()) == {"unet", *ENCODERS}
    keys = {module + suffix for module in expected for suffix in SUFFIXES}
    assert set(state) - keys == set()  # every exported key is one A1111 and ComfyUI map to a module
    assert keys - set(state) == set()  # every trained module is exported
    stem = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    assert state[f"{stem}.lora_down.weight"].shape == (
        4,
        sdxl_lora.modules["text_encoder_2"].config.hidden_size,
    )
    assert all(state[f"{module}.alpha"].item() == 4.0 for module in expected)  # alpha = rank: scale folded in
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"


def test_the_kohya_weights_are_the_artefacts(project, sdxl_lora):
    state = load_file(str(export_lora(project, RUN, format="a1111")))
    lora = load_artefact(sdxl_lora.path).diffusers_state_dict()
    for key, value in lora.items():
        component, path = key.split(".", 1)
        module, kind = path.rsplit(".lora_", 1)
        name = KOHYA[component] + module.replace(".", "_")
        ours = state[f"{name}.lora_down.weight" if kind.startswith("A") else f"{name}.lora_up.weight"]
        assert torch.equal(ours.reshape(value.shape), value), key


def test_the_diffusers_lora_loads_into_the_sdxl_pipeline(project, sdxl_base):
    from engine.models import make_pipeline

    path = export_lora(project, RUN, format="diffusers")
    assert any(key.startswith("text_encoder_2.") for key in load_file(str(path)))
    pipe = make_pipeline(sdxl_base)
    pipe.load_lora_weights(str(path), adapter_name="export")
    try:
        assert {name for name, adapters in pipe.get_list_adapters().items() if "export" in adapters} == {
            "unet",
            *ENCODERS,
        }
    finally:
        pipe.unload_lora_weights()


def test_one_embedding_file_per_token_holds_clip_l_and_clip_g_at_the_encoders_widths(
    project, sdxl_base, sdxl_lora
):
    paths = export_embeddings(project, RUN)
    assert [p.name for p in paths] == ["alice-sks.safetensors", "alice-style1.safetensors"]
    artefact = load_artefact(sdxl_lora.path)
    widths = {
        "clip_l": sdxl_base.text_encoder.config.hidden_size,
        "clip_g": sdxl_base.text_encoder_2.config.hidden_size,
    }
    assert widths == {"clip_l": 32, "clip_g": 64}  # the tiny stand-ins of 768 and 1280
    rows = {"clip_l": artefact.encoder_embeddings()["text_encoder"], "clip_g": artefact.embeddings_2}
    for path, token in zip(paths, TOKENS.values(), strict=True):
        state = load_file(str(path))
        assert set(state) == {"clip_l", "clip_g"}
        for key, width in widths.items():
            assert state[key].shape == (1, width), (path.name, key)
            assert torch.equal(state[key][0], rows[key][token]), (path.name, key)
    note = (paths[0].parent / USAGE_NOTE).read_text()
    assert "(SDXL)" in note
    assert "alice-sks.safetensors" in note and "alice-style1.safetensors" in note
    export_lora(project, RUN, format="a1111")
    note = (paths[0].parent / USAGE_NOTE).read_text()
    assert "alice-lora.safetensors" in note and "<lora:alice-lora:0.9:0.6>" in note


def test_the_usage_notes_diffusers_lines_load_both_rows_of_each_embedding(project, sdxl_base, monkeypatch):
    import copy
    import dataclasses

    from engine.models import make_pipeline

    paths = export_embeddings(project, RUN)
    note = (paths[0].parent / USAGE_NOTE).read_text()
    section = note.split("\ndiffusers (", 1)[1].splitlines()[1:]
    code = "\n".join(line.strip() for line in section if line.strip().startswith(("from ", "state", "pipe.")))
    assert 'state["clip_g"]' in code and "text_encoder=pipe.text_encoder_2" in code
    parts = {
        name: copy.deepcopy(getattr(sdxl_base, name)) for name in ("tokenizer", "tokenizer_2", *ENCODERS)
    }
    pipe = make_pipeline(dataclasses.replace(sdxl_base, **parts))
    monkeypatch.chdir(paths[0].parent)  # the note's lines run from the export folder
    exec(code, {"pipe": pipe})
    for path in paths:
        state = load_file(str(path))
        word = path.stem
        for key, tokenizer, encoder in (
            ("clip_l", "tokenizer", "text_encoder"),
            ("clip_g", "tokenizer_2", "text_encoder_2"),
        ):
            index = parts[tokenizer].convert_tokens_to_ids(word)
            table = parts[encoder].get_input_embeddings().weight
            assert torch.equal(table[index], state[key][0].to(table)), (word, key)
