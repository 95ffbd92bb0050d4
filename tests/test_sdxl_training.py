"""Training on the tiny SDXL: both phases, both encoders' rows, the resume and the artefact."""

from __future__ import annotations

import threading

import pytest
import torch
from fixtures_training import demo_face_kit, tiny_face_kit
from tiny import tiny_config

import engine.models
from engine.artefact import load_artefact
from engine.config import preset
from engine.demo.portraits import make_project
from engine.events import Cancelled, PhaseStarted, PreviewSaved, Status, StepDone, read_events
from engine.models import load_base
from engine.training import TrainingCancelled, train, use_preview

ENCODERS = ("text_encoder", "text_encoder_2")


@pytest.fixture
def project(isolated_home):
    return make_project(isolated_home)


def _weights(base) -> dict[str, torch.Tensor]:
    """Every weight of the base under one name, LoRA tensors apart (``.base_layer`` dropped)."""
    state = {}
    for name in ("unet", "vae", *ENCODERS):
        for key, value in getattr(base, name).state_dict().items():
            state[f"{name}.{key.replace('.base_layer', '')}"] = value.detach().clone()
    return state


def _rows(base) -> dict[str, torch.Tensor]:
    return {name: getattr(base, name).get_input_embeddings().rows.detach().clone() for name in ENCODERS}


@pytest.mark.slow
def test_both_phases_train_only_both_encoders_placeholder_rows_and_the_lora(
    project, tiny_sdxl, tiny_decoder, monkeypatch
):
    base = load_base(tiny_sdxl.folder)
    before = _weights(base)
    config = tiny_config(
        tiny_sdxl.folder,
        phase1_steps=1,
        phase2_steps=2,
        train_text_encoder=True,
        identity_fallback_landmarks=True,  # the identity term runs (TAESD decodes with gradient)
        identity_decoder=preset().identity_decoder,  # the default, TAESD: the demo kit's, given as demo mode does
        tiny_decoder_model=str(tiny_decoder),
    )
    events, rows, time_ids = [], {}, []

    def record(event):
        events.append(event)
        if isinstance(event, PhaseStarted):
            rows[event.phase] = _rows(base)

    base.unet.register_forward_pre_hook(
        lambda module, args, kwargs: time_ids.append(kwargs["added_cond_kwargs"]["time_ids"].clone()),
        with_kwargs=True,
    )
    decodes = []
    load = engine.models.load_tiny_decoder

    def load_counted(*args):  # the real loader; each decode of the loaded TAESD is counted
        decoder = load(*args)
        decoder.decoder.register_forward_hook(lambda *_: decodes.append(1))
        return decoder

    monkeypatch.setattr(engine.models, "load_tiny_decoder", load_counted)
    path = train(project, config, base=base, face_kit=tiny_face_kit(), on_event=record)

    after = _weights(base)
    for key, value in before.items():
        if key.endswith("token_embedding.weight"):  # the tables grew by the two placeholder rows
            grown = after[key.replace("token_embedding.weight", "token_embedding.base.weight")]
            assert grown.shape[0] == value.shape[0] + 2 and torch.equal(grown[: value.shape[0]], value), key
        else:
            assert torch.equal(after[key], value), key
    lora = {k for k in after if "lora_" in k}
    assert {k.split(".")[0] for k in lora} == {"unet", *ENCODERS}
    final = _rows(base)
    for name in ENCODERS:  # both rows of both encoders train, in each phase
        assert final[name].shape[1] == getattr(base, name).config.hidden_size
        for index in (0, 1):
            assert (rows[2][name][index] - rows[1][name][index]).norm() > 1e-6, (name, index)
            assert (final[name][index] - rows[2][name][index]).norm() > 1e-6, (name, index)
    assert all(torch.equal(ids, torch.tensor([[64.0, 64, 0, 0, 64, 64]]).expand_as(ids)) for ids in time_ids)
    loading = f"Loading the tiny identity decoder {tiny_decoder}."
    assert any(e.message == loading for e in events if isinstance(e, Status))
    assert len(decodes) >= 2  # TAESD decoded the face window in both phase-2 steps (and the start check)
    assert all("identity" in e.losses for e in events if isinstance(e, StepDone) and e.phase == 2)

    artefact = load_artefact(path)
    assert artefact.metadata["family"] == "sdxl" and artefact.family.name == "sdxl"
    assert artefact.metadata["config"]["identity_decoder"] == "tiny"
    assert artefact.metadata["config"]["tiny_decoder_model"] == str(tiny_decoder)
    encoders = artefact.encoder_embeddings()
    for name in ENCODERS:
        assert set(encoders[name]) == {"<sks>", "<style1>"}
        assert torch.equal(encoders[name]["<sks>"], final[name][0])
        assert torch.equal(encoders[name]["<style1>"], final[name][1])
    assert artefact.embeddings == encoders["text_encoder"]
    loras = artefact.encoder_loras()
    assert set(loras) == set(ENCODERS)
    for name, weights in (("unet", artefact.unet_lora), *loras.items()):
        assert weights and any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k), name


def test_the_phase_one_norm_pull_aims_at_each_encoders_own_scale(project, tiny_sdxl):
    """The pull's target (0.4) is tuned to CLIP-L; bigG's rows aim at the same multiple of its own "person" row."""
    base = load_base(tiny_sdxl.folder)
    person = {}
    for name in ENCODERS:
        (token,) = base.tokenizer(["person"], add_special_tokens=False).input_ids[0]
        person[name] = getattr(base, name).get_input_embeddings().weight[token].norm().item()
    # lr 0.01: the pull's strength min(1, 100 lr) is 1, so one step puts each norm on its target.
    config = tiny_config(
        tiny_sdxl.folder, phase1_steps=1, phase2_steps=0, embedding_norm_pull=True, phase1_lr=0.01
    )
    train(project, config, base=base, face_kit=tiny_face_kit())
    norms = {name: rows.norm(dim=-1) for name, rows in _rows(base).items()}
    target = config.embedding_norm_target
    torch.testing.assert_close(norms["text_encoder"], torch.full((2,), target))
    scaled = target * person["text_encoder_2"] / person["text_encoder"]
    assert abs(scaled - target) > 0.05  # the tiny encoders' rows differ in scale, as CLIP-L's and bigG's do
    torch.testing.assert_close(norms["text_encoder_2"], torch.full((2,), scaled))


@pytest.fixture
def one_thread():
    """Bitwise reproducible CPU training (as tests/test_train.py's: 8-bit AdamW's last bits vary with threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _final_tensors(path) -> dict[str, torch.Tensor]:
    artefact = load_artefact(path)
    tensors = {f"unet.{k}": v for k, v in artefact.unet_lora.items()}
    for name, lora in artefact.encoder_loras().items():
        tensors |= {f"{name}.{k}": v for k, v in lora.items()}
    for name, rows in artefact.encoder_embeddings().items():
        tensors |= {f"{name}.{k}": v for k, v in rows.items()}
    return tensors


@pytest.mark.slow
def test_a_stopped_and_resumed_sdxl_run_ends_bit_identical_to_an_uninterrupted_one(
    project, tiny_sdxl, one_thread
):
    config = tiny_config(tiny_sdxl.folder, phase1_steps=1, phase2_steps=2, train_text_encoder=True)

    def run(step=None, resume=None):
        cancel = threading.Event()

        def watch(event):
            if isinstance(event, StepDone) and event.global_step == step:
                cancel.set()

        base = load_base(tiny_sdxl.folder)
        return train(
            project, config, base=base, face_kit=tiny_face_kit(), on_event=watch, cancel=cancel, resume=resume
        )

    reference = _final_tensors(run())
    assert {k.split(".")[0] for k in reference} == {"unet", "text_encoder", "text_encoder_2"}
    with pytest.raises(TrainingCancelled) as stopped:  # end of phase 1: phase 2 loads both encoders' rows
        run(step=1)
    run_id = stopped.value.run
    with pytest.raises(TrainingCancelled):  # mid phase 2: optimiser, schedule, RNG and all LoRAs come back
        run(step=2, resume=run_id)
    resumed = _final_tensors(run(resume=run_id))
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    events = read_events(project.path("trainings", run_id, "events.jsonl"))
    assert [e.global_step for e in events if isinstance(e, Cancelled)] == [1, 2]
    assert [e.global_step for e in events if isinstance(e, StepDone)] == [1, 2, 3]


@pytest.mark.slow
def test_the_artefact_loads_into_the_sdxl_pipeline_with_both_encoders_lora_and_rows(
    isolated_home, tiny_sdxl, tmp_path
):
    from engine.models import make_pipeline

    project = make_project(isolated_home, embedding_dim=512)  # previews are scored by the demo ArcFace

    config = tiny_config(
        tiny_sdxl.folder,
        phase1_steps=1,
        phase2_steps=1,
        train_text_encoder=True,
        preview_every=2,
        preview_steps=2,
    )
    events = []
    kit = demo_face_kit(tmp_path)
    path = train(project, config, base=load_base(tiny_sdxl.folder), face_kit=kit, on_event=events.append)
    artefact = load_artefact(path)
    (preview,) = [e for e in events if isinstance(e, PreviewSaved)]  # sampled by the SDXL pipeline
    assert set(preview.attention_maps) == {"<sks>", "<style1>"} and len(preview.images) == 2
    chosen = load_artefact(use_preview(project, path.parent.name, preview.global_step))
    kept = _final_tensors(chosen.path)
    # The chosen preview keeps text_encoder_2's LoRA and rows.
    assert kept.keys() == _final_tensors(path).keys()
    assert all(torch.equal(v, _final_tensors(path)[k]) for k, v in kept.items())
    state = artefact.diffusers_state_dict()
    assert {key.split(".")[0] for key in state} == {"unet", *ENCODERS}

    pipe = make_pipeline(load_base(tiny_sdxl.folder))  # StableDiffusionXLPipeline
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(state, adapter_name="magicapture")
    for name in ("unet", *ENCODERS):  # transformers' CLIPTextModel names its modules without text_model.
        loaded = {
            key.replace(".magicapture.", ".").removeprefix("text_model."): value
            for key, value in getattr(pipe, name).state_dict().items()
            if "lora_" in key
        }
        prefix = f"{name}."
        expected = {
            k.removeprefix(prefix).removeprefix("text_model."): v
            for k, v in state.items()
            if k.startswith(prefix)
        }
        assert loaded.keys() == expected.keys(), name
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), name

    for name, tokenizer in (("text_encoder", pipe.tokenizer), ("text_encoder_2", pipe.tokenizer_2)):
        rows = artefact.encoder_embeddings()[name]
        encoder = getattr(pipe, name)
        assert all(row.shape == (encoder.config.hidden_size,) for row in rows.values())
        pipe.load_textual_inversion(
            list(rows.values()), token=list(rows), text_encoder=encoder, tokenizer=tokenizer
        )
        ids = tokenizer.convert_tokens_to_ids(list(rows))
        table = encoder.get_input_embeddings().weight
        assert all(torch.equal(table[i], row) for i, row in zip(ids, rows.values(), strict=True)), name
    image = pipe(
        artefact.metadata["prompt"], num_inference_steps=2, height=64, width=64, output_type="np"
    ).images[0]
    assert image.shape == (64, 64, 3)


def test_the_demo_kit_carries_the_tiny_sdxl_as_a_folder_and_a_single_file(tmp_path):
    from engine.demo import KIT_VERSION, build_demo_kit
    from engine.families.sdxl import SDXL

    kit = build_demo_kit(tmp_path / "kit")
    assert kit.sdxl.folder.is_dir() and kit.sdxl.single_file.is_file()
    assert load_base(kit.sdxl.folder).family is SDXL
    assert load_base(kit.sdxl.single_file, config=kit.sdxl.folder).family is SDXL
    assert load_base(kit.sd.folder).family.name == "sd1"
    assert build_demo_kit(tmp_path / "kit") == kit and KIT_VERSION != "2"  # reused; older kits are rebuilt
