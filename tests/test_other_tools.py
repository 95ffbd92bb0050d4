"""Outputs that reproduce in other tools: the PNG ``parameters`` text, the LoRA's metadata, the usage note.

AUTOMATIC1111's reading of the text is re-stated here (`parse_infotext`, `extra_networks`): a prompt,
a ``Negative prompt:`` line, then ``Key: value`` pairs; ``<name:arg:arg>`` tags in the prompt. Every
expected name is taken from the files the export writes, never spelled out.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from fixtures_outputs import RUN
from safetensors import safe_open
from safetensors.torch import load_file

from engine.export import USAGE_NOTE, export_embeddings, export_lora
from engine.faces import FaceKit
from engine.generate import GenerationSettings, generate
from engine.outputs import read_parameters

PAIR = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
"""One ``Key: value`` pair of the last line; a value is a JSON string or runs to the next comma."""
TAG = re.compile(r"<(\w+):([^>]+)>")
"""An extra-network tag: ``<lora:NAME:te:unet>``."""


def parse_infotext(text: str) -> dict[str, str]:
    """The fields AUTOMATIC1111 fills when this text is pasted: Prompt, Negative prompt, each pair (a size as -1, -2)."""
    *lines, last = text.strip().split("\n")
    if len(PAIR.findall(last)) < 3:
        lines, last = [*lines, last], ""
    prompt, negative, in_negative = [], [], False
    for line in (line.strip() for line in lines):
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in PAIR.findall(last):
        value = json.loads(value) if value[:1] == value[-1:] == '"' and len(value) > 1 else value
        if size := re.fullmatch(r"(\d+)x(\d+)", value):
            fields[f"{key}-1"], fields[f"{key}-2"] = size.groups()  # width, height
        else:
            fields[key] = value
    return fields


def extra_networks(prompt: str) -> tuple[str, dict[str, list[str]]]:
    """The prompt without its tags, and each network's arguments (what A1111 strips and activates)."""
    found: dict[str, list[str]] = {}

    def take(match: re.Match) -> str:
        found[match.group(1)] = match.group(2).split(":")
        return ""

    return TAG.sub(take, prompt), found


def lora_scales(arguments: list[str]) -> tuple[str, float, float]:
    """A1111's Lora extension: name, text-encoder multiplier, UNet multiplier (the te one when absent)."""
    te = float(arguments[1]) if len(arguments) > 1 else 1.0
    unet = float(arguments[2]) if len(arguments) > 2 else te
    return arguments[0], te, unet


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def embedding_words(paths: list[Path]) -> dict[str, str]:
    """Placeholder token -> the word A1111 knows the exported embedding by (its file stem)."""
    return {metadata(path)["magicapture_token"]: path.stem for path in paths}


@pytest.fixture(scope="module")
def no_faces() -> FaceKit:
    from engine.faces.fallback import EllipseParser, HaarDetector

    return FaceKit(HaarDetector(), EllipseParser(), None, fallbacks=("detector", "parser", "recogniser"))


@pytest.fixture(scope="module")
def single_file_base(tiny_sd):
    from engine.models import load_base

    return load_base(tiny_sd.single_file, config=tiny_sd.folder)


@pytest.fixture
def pipe(base):
    from engine.models import make_pipeline

    pipe = make_pipeline(base)
    pipe.set_progress_bar_config(disable=True)
    yield pipe
    if pipe.get_list_adapters():
        pipe.unload_lora_weights()


def test_png_parameters_reproduce_in_a1111_with_the_exported_files(
    project, single_file_base, tiny_sd, no_faces
):
    settings = GenerationSettings(steps=2, seed=4, unet_lora_scale=0.5, text_lora_scale=0.8)
    record = generate(project, RUN, settings, base=single_file_base, face_kit=no_faces)[0]
    lora = export_lora(project, RUN, format="a1111")
    words = embedding_words(export_embeddings(project, RUN))

    fields = parse_infotext(read_parameters(project.path(record.file)))
    prompt, networks = extra_networks(fields["Prompt"])
    name, te, unet = lora_scales(networks["lora"])
    assert name == lora.stem == metadata(lora)["ss_output_name"]  # A1111's file name and alias
    assert (te, unet) == (0.8, 0.5)
    expected = record.params["prompt"]
    for token, word in words.items():
        assert token in expected
        expected = expected.replace(token, word)
    assert prompt.strip() == expected and "<sks>" not in fields["Prompt"]
    digest = hashlib.sha256(Path(tiny_sd.single_file).read_bytes()).hexdigest()
    assert fields["Model hash"] == digest[:10] and fields["Model"] == Path(tiny_sd.single_file).stem
    assert (fields["Steps"], fields["Seed"], fields["Size-1"], fields["Sampler"]) == (
        "2",
        "4",
        "64",
        "Euler a",
    )


def test_a_diffusers_folder_base_has_no_model_hash(project, base, no_faces):
    """A1111 hashes the one checkpoint file it loads; a folder is no such file, so no hash is claimed."""
    record = generate(project, RUN, GenerationSettings(steps=1), base=base, face_kit=no_faces)[0]
    fields = parse_infotext(read_parameters(project.path(record.file)))
    assert "Model hash" not in fields and fields["Model"] == Path(base.source).name
    assert "lora" in extra_networks(fields["Prompt"])[1]


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_the_exported_lora_recommends_the_generation_scales(project, fmt):
    defaults = GenerationSettings()
    header = metadata(export_lora(project, RUN, format=fmt))
    assert float(header["magicapture.recommended_unet_scale"]) == defaults.unet_lora_scale
    assert float(header["magicapture.recommended_text_encoder_scale"]) == defaults.text_lora_scale
    hint = header["modelspec.usage_hint"]
    assert f"{defaults.unet_lora_scale:g}" in hint and f"{defaults.text_lora_scale:g}" in hint


def test_the_usage_note_names_the_files_beside_it_and_their_words(project):
    defaults = GenerationSettings()
    diffusers = export_lora(project, RUN, format="diffusers")
    note = diffusers.with_name(USAGE_NOTE)
    named = set(re.findall(r"[\w.-]+\.safetensors", note.read_text("utf-8")))
    assert named == {diffusers.name}  # only what is there yet

    kohya = export_lora(project, RUN, format="a1111")
    words = embedding_words(export_embeddings(project, RUN))
    text = note.read_text("utf-8")
    present = {path.name for path in note.parent.glob("*.safetensors")}
    assert (
        set(re.findall(r"[\w.-]+\.safetensors", text))
        == present
        == {diffusers.name, kohya.name, *(f"{word}.safetensors" for word in words.values())}
    )
    assert "<sks>" not in text and "<style1>" not in text
    a1111 = next(line for line in text.splitlines() if "<lora:" in line)
    prompt, networks = extra_networks(a1111.split(":", 1)[1])
    name, te, unet = lora_scales(networks["lora"])
    assert (name, te, unet) == (kohya.stem, defaults.text_lora_scale, defaults.unet_lora_scale)
    assert all(re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", prompt) for word in words.values())
    for word in words.values():
        assert f"embedding:{word}" in text  # ComfyUI's prompt syntax
    assert re.search(rf"lora_name:?\s+{re.escape(kohya.name)}", text)
    assert re.search(rf"strength_model:?\s+{defaults.unet_lora_scale:g}\b", text)
    assert re.search(rf"strength_clip:?\s+{defaults.text_lora_scale:g}\b", text)


def test_the_notes_diffusers_lines_load_the_lora_and_the_embeddings_under_their_words(
    project, pipe, monkeypatch
):
    """Run the note's ``pipe.`` lines in the export folder; the tokenizer then knows each word."""
    diffusers = export_lora(project, RUN, format="diffusers")
    paths = export_embeddings(project, RUN)
    words = embedding_words(paths)
    lines = [line.strip() for line in diffusers.with_name(USAGE_NOTE).read_text("utf-8").splitlines()]
    code = [line for line in lines if line.startswith("pipe.")]
    assert any("load_textual_inversion" in line and "token=" in line for line in code)
    monkeypatch.chdir(diffusers.parent)
    unknown = pipe.tokenizer.unk_token_id
    try:
        for line in code:
            exec(line, {"pipe": pipe})  # noqa: S102 (the note's own lines, on the tiny pipeline)
        assert pipe.get_list_adapters()["unet"]  # the LoRA is loaded
        for path in paths:
            word = words[metadata(path)["magicapture_token"]]
            index = pipe.tokenizer.convert_tokens_to_ids(word)
            assert index != unknown and index in pipe.tokenizer(f"a photo of {word}").input_ids
            row = pipe.text_encoder.get_input_embeddings().weight[index]
            assert torch.equal(row, load_file(str(path))["emb_params"][0])
    finally:
        for word in words.values():
            if word in pipe.tokenizer.get_vocab():
                pipe.unload_textual_inversion(word)
