from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from fixtures_faces import astronaut, wheel_photo
from fixtures_outputs import RUN, TOKENS, add_photo_output, project_with_run
from PIL import Image

from engine import generate as gen
from engine.events import Finished, PhaseStarted, StepDone
from engine.faces import FaceKit
from engine.generate import GenerationError, GenerationSettings, compose_prompt, fit_prompt, generate, loading
from engine.identity import identity_score, source_embedding
from engine.outputs import read_parameters, sorted_outputs
from engine.references import make_references
from engine.runs import UnknownRun, resolve_artefact


@pytest.fixture(scope="module")
def no_faces() -> FaceKit:
    from engine.faces.fallback import EllipseParser, HaarDetector

    return FaceKit(HaarDetector(), EllipseParser(), None, fallbacks=("detector", "parser", "recogniser"))


@pytest.fixture(scope="module")
def project(lora, tmp_path_factory):
    """One project for the module, so the loaded artefact is reused from test to test."""
    return project_with_run(tmp_path_factory.mktemp("store"), lora.path)


def pixels(project, record) -> np.ndarray:
    return np.asarray(Image.open(project.path(record.file)).convert("RGB"))


def fast(**values) -> GenerationSettings:
    return GenerationSettings(steps=2, **values)


def test_same_seed_gives_the_same_image_and_another_seed_another(project, no_faces):
    first, second = generate(project, RUN, fast(seed=5, count=2), face_kit=no_faces)
    again = generate(project, RUN, fast(seed=5), face_kit=no_faces)[0]
    assert (first.seed, second.seed, again.seed) == (5, 6, 5)
    assert np.array_equal(pixels(project, first), pixels(project, again))
    assert not np.array_equal(pixels(project, first), pixels(project, second))
    assert pixels(project, first).shape == (64, 64, 3)


def test_each_image_carries_its_parameters_in_the_png_and_the_manifest(project, no_faces):
    settings = fast(seed=3, sampler="dpmpp_2m_karras", guidance_scale=7.5, prompt_extra="wearing a suit")
    record = generate(project, None, settings, face_kit=no_faces)[0]
    assert read_parameters(project.path(record.file)) == (
        "a photo of a alice-sks person in the style of alice-style1, wearing a suit <lora:alice-lora:0.9:0.6>\n"
        f"Negative prompt: {gen.DEFAULT_NEGATIVE_PROMPT}\n"
        "Steps: 2, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3, Size: 64x64, Model: sd, "
        "Lora UNet scale: 0.6, Lora text encoder scale: 0.9, MagiCapture run: run-1, "
        'MagiCapture prompt: "a photo of a <sks> person in the style of <style1>, wearing a suit", '
        f"MagiCapture negative prompt: {json.dumps(gen.DEFAULT_NEGATIVE_PROMPT)}"
    )
    entry = project.manifest()["outputs"][-1]
    assert entry["id"] == record.id and entry["file"] == f"outputs/{record.id}.png"
    assert entry["run"] == RUN and entry["identity"] is None and entry["created"]
    assert (
        entry["params"]["seed"] == 3 and entry["params"]["artefact"] == f"trainings/{RUN}/final.safetensors"
    )


def test_unet_and_text_encoder_lora_scales_act_separately(project, no_faces):
    def image(unet: float, text: float) -> np.ndarray:
        settings = fast(seed=1, unet_lora_scale=unet, text_lora_scale=text)
        return pixels(project, generate(project, RUN, settings, face_kit=no_faces)[0])

    off, unet_only, text_only = image(0.0, 0.0), image(0.6, 0.0), image(0.0, 0.9)
    assert not np.array_equal(off, unet_only)
    assert not np.array_equal(off, text_only)
    assert not np.array_equal(unet_only, text_only)


def test_the_lora_is_fused_while_sampling(project, no_faces):
    from peft.tuners.tuners_utils import BaseTunerLayer

    seen = []

    def on_event(event):
        if isinstance(event, StepDone):
            kept = loading._BASES.values()[0].base
            layers = [m for part in (kept.unet, kept.text_encoder) for m in part.modules()]
            layers = [m for m in layers if isinstance(m, BaseTunerLayer)]
            seen.append(bool(layers) and all(m.merged for m in layers))

    generate(project, RUN, fast(), face_kit=no_faces, on_event=on_event)
    assert seen and all(seen)


def test_the_fused_lora_gives_the_image_of_the_unfused_one_at_the_same_scales(lora, base):
    from engine.artefact import load_artefact
    from engine.models import make_pipeline

    view, installed = loading.install(base, load_artefact(lora.path))
    try:
        pipe = make_pipeline(view)
        pipe.set_progress_bar_config(disable=True)
        pipe.set_adapters(gen.ADAPTER, adapter_weights={"unet": 0.6, "text_encoder": 0.9})
        prompt = compose_prompt(TOKENS)
        unfused = gen.sample_image(pipe, prompt, fast(), 4, lambda step: None, None)
        loading.fuse(pipe, installed, 0.6, 0.9)
        fused = gen.sample_image(pipe, prompt, fast(), 4, lambda step: None, None)
        loading.fuse(pipe, installed, 0.0, 0.9)
        other = gen.sample_image(pipe, prompt, fast(), 4, lambda step: None, None)
    finally:
        loading._uninstall(base, installed)
    assert np.abs(fused.astype(int) - unfused.astype(int)).max() <= 1
    assert not np.array_equal(fused, other)


def test_the_loaded_base_is_kept_between_calls(project, no_faces, monkeypatch):
    generate(project, RUN, fast(), face_kit=no_faces)
    kept = loading._BASES.values()[0].base

    def no_reload(*args, **kwargs):
        raise AssertionError("the base model was loaded again")

    monkeypatch.setattr("engine.models.load_base", no_reload)
    generate(project, RUN, fast(seed=2), face_kit=no_faces)
    assert loading._BASES.values()[0].base is kept


def test_a_base_passed_in_is_left_as_it_was(project, base, no_faces):
    from engine.models import make_pipeline

    def plain() -> np.ndarray:
        pipe = make_pipeline(base)
        pipe.set_progress_bar_config(disable=True)
        import torch

        generator = torch.Generator().manual_seed(0)
        return pipe(
            "a photo of a person", num_inference_steps=2, generator=generator, output_type="np"
        ).images[0]

    before, vocabulary = plain(), len(base.tokenizer)
    record = generate(project, RUN, fast(), base=base, face_kit=no_faces)[0]
    assert project.path(record.file).is_file()
    assert len(base.tokenizer) == vocabulary
    assert base.text_encoder.get_input_embeddings().num_embeddings == vocabulary
    assert not any("lora" in name for name, _ in base.unet.named_modules())
    assert np.array_equal(before, plain())


def test_prompt_uses_the_training_wording_and_never_doubles_tokens():
    assert compose_prompt(TOKENS) == "a photo of a <sks> person in the style of <style1>"
    assert (
        compose_prompt(TOKENS, "  wearing   a suit ")
        == "a photo of a <sks> person in the style of <style1>, wearing a suit"
    )
    assert compose_prompt(TOKENS, "<sks> person on a beach") == "<sks> person on a beach"


def test_long_prompts_are_cut_to_77_clip_tokens_with_a_warning(project, base, no_faces):
    text = "a photo of a <sks> person " + " ".join(f"word{i}" for i in range(80))
    cut, warning = fit_prompt(base.tokenizer, text)
    assert warning is not None and "75" in warning
    assert text.startswith(cut) and len(base.tokenizer(cut).input_ids) <= 77
    assert fit_prompt(base.tokenizer, "a short prompt") == ("a short prompt", None)

    record = generate(project, RUN, fast(prompt_extra=" ".join(["tall"] * 90)), face_kit=no_faces)[0]
    assert record.warnings and "cut" in record.warnings[0]
    assert record.params["prompt"].startswith("a photo of a <sks> person in the style of <style1>, tall")
    words = record.params["prompt"].replace("<sks>", "alice-sks").replace("<style1>", "alice-style1")
    assert read_parameters(project.path(record.file)).splitlines()[0] == f"{words} <lora:alice-lora:0.9:0.6>"


def test_progress_events_and_cancel(project, no_faces):
    events, cancel = [], threading.Event()

    def on_event(event):
        events.append(event)
        if isinstance(event, StepDone) and event.global_step == 3:
            cancel.set()

    before = len(project.manifest()["outputs"])
    records = generate(project, RUN, fast(count=3), face_kit=no_faces, on_event=on_event, cancel=cancel)
    assert len(records) == 1  # the second image was stopped half-way and dropped
    started = [e for e in events if isinstance(e, PhaseStarted)]
    assert len(started) == 1 and started[0].steps == 6
    steps = [e for e in events if isinstance(e, StepDone)]
    assert [(e.step, e.global_step, e.total_steps) for e in steps] == [(1, 1, 6), (2, 2, 6), (3, 3, 6)]
    assert isinstance(events[-1], Finished)
    assert len(project.manifest()["outputs"]) == before + 1


def test_settings_and_runs_are_checked(project, no_faces):
    with pytest.raises(GenerationError, match="dpmpp_2m_karras"):
        GenerationSettings(sampler="plms")
    with pytest.raises(GenerationError, match="multiple of 8"):
        GenerationSettings(width=500)
    with pytest.raises(UnknownRun, match="no finished training run 'nope'"):
        generate(project, "nope", fast(), face_kit=no_faces)


def test_identity_score_against_the_source_photos(face_assets, monkeypatch, tmp_path):
    from engine.faces import load_face_kit
    from engine.store import ProjectStore

    project = ProjectStore(tmp_path).create("carol")
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(face_assets))
    kit = load_face_kit()
    photo = astronaut()
    face = kit.detector.detect(photo)[0]
    path = project.path("photos", "source", "a", "embedding.npy")
    path.parent.mkdir(parents=True)
    np.save(path, kit.scorer.embed(photo, face))

    def add_source(manifest):
        manifest["images"].append(
            {
                "id": "a",
                "role": "source",
                "embedding": "photos/source/a/embedding.npy",
                "embedding_model": kit.scorer.name,
            }
        )

    project.update(add_source)
    reference = source_embedding(project, kit)
    assert identity_score(kit, photo, reference) == pytest.approx(1.0, abs=1e-3)
    other = identity_score(kit, wheel_photo("Tom_Hanks_54745.png"), reference)
    assert other is not None and other < 0.999
    assert identity_score(kit, np.full((64, 64, 3), 128, np.uint8), reference) is None


def test_outputs_sort_best_identity_first(tmp_path):
    from engine.store import ProjectStore

    project = ProjectStore(tmp_path).create("dave")
    image = np.zeros((8, 8, 3), np.uint8)
    for name, score in (("low", 0.3), ("none", None), ("high", 0.8)):
        add_photo_output(project, image, name, identity=score)
    assert [r.id for r in sorted_outputs(project)] == ["high", "low", "none"]


def test_outputs_made_in_the_same_second_show_the_later_first(tmp_path):
    """A post-processed copy lands in the same second as its original: the copy comes first."""
    from engine.store import ProjectStore

    project = ProjectStore(tmp_path).create("erin")
    image = np.zeros((8, 8, 3), np.uint8)
    for name in ("original-a", "original-b", "upscaled-a", "upscaled-b"):
        add_photo_output(project, image, name)
    assert [r.id for r in sorted_outputs(project)] == ["upscaled-b", "upscaled-a", "original-b", "original-a"]


def test_style_references_are_painted_by_the_plain_base_and_go_through_intake(base, no_faces, tmp_path):
    from engine.intake import Refused
    from engine.store import ProjectStore

    project = ProjectStore(tmp_path).create("erin")
    results = make_references(
        project, "studio headshot, grey backdrop", 2, base_model=base.source, kit=no_faces, steps=2
    )
    # The tiny model paints 64 px noise, scaled up to the model's size (engine.references.painted_photo):
    # intake finds no face in it and refuses it as it would such an upload.
    assert [type(r) for r in results] == [Refused, Refused] and results[0].reason == "no_face"
    assert loading._BASES.values()[0].installed is None  # no LoRA or placeholder rows in the base it used
    with pytest.raises(GenerationError, match="Describe the style"):
        make_references(project, "  ", 1, base_model=base.source, kit=no_faces)


def test_the_latest_finished_run_is_the_default(lora, tmp_path):
    project = project_with_run(tmp_path, lora.path)
    newer = project.path("trainings", "run-2", "final.safetensors")
    newer.parent.mkdir(parents=True)
    newer.write_bytes(lora.path.read_bytes())

    def add_runs(manifest):
        manifest["trainings"][0]["updated"] = "2024-05-01T10:00:00+00:00"
        manifest["trainings"].insert(
            0,
            {
                "id": "run-2",
                "artefact": "trainings/run-2/final.safetensors",
                "updated": "2024-06-01T10:00:00+00:00",
            },
        )
        manifest["trainings"].append(
            {"id": "run-3", "status": "running", "updated": "2024-07-01T10:00:00+00:00"}
        )

    project.update(add_runs)
    assert resolve_artefact(project, None) == (newer, "run-2")
    assert resolve_artefact(project, RUN)[1] == RUN
    assert resolve_artefact(project, str(newer)) == (newer, "run-2")
