from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pytest
import torch
from fixtures_training import demo_face_kit, tiny_face_kit
from tiny import tiny_config

from engine import checkpoint as ckpt
from engine.artefact import load_artefact
from engine.config import preset
from engine.demo.portraits import make_project
from engine.events import (
    Cancelled,
    CheckpointSaved,
    Failed,
    Finished,
    MethodReport,
    PhaseStarted,
    PreviewSaved,
    StepDone,
    read_events,
)
from engine.models import load_base
from engine.store import StorageFull
from engine.training import (
    PREVIEW_WEIGHTS,
    TrainingCancelled,
    TrainingError,
    lora_configs,
    resolve_options,
    resume_available,
    train,
)


@pytest.fixture
def project(isolated_home):
    return make_project(isolated_home)


def run(project, tiny_sd, config, **kwargs):
    """Train on a fresh tiny base; returns (artefact path, base after training, events)."""
    events = []
    base = load_base(tiny_sd.folder)
    path = train(project, config, base=base, face_kit=tiny_face_kit(), on_event=events.append, **kwargs)
    return path, base, events


def _frozen_state(base) -> dict[str, torch.Tensor]:
    """Every base weight except the LoRA tensors and the placeholder rows."""
    state = {f"unet.{k}": v for k, v in base.unet.state_dict().items()}
    state.update({f"text.{k}": v for k, v in base.text_encoder.state_dict().items()})
    return {
        k.replace(".base_layer", ""): v.clone()
        for k, v in state.items()
        if "lora_" not in k and not k.endswith(".rows")
    }


def test_resolve_options_take_the_profile_unless_overridden():
    cpu = resolve_options(preset(device="cpu", vram_profile="auto"))
    assert (cpu.profile, cpu.mixed_precision, cpu.gradient_checkpointing, cpu.use_8bit_adam) == (
        "cpu",
        "no",
        False,
        True,
    )
    eight = resolve_options(preset(device="cpu", vram_profile="8gb", gradient_checkpointing=False))
    assert (
        eight.gradient_checkpointing is False and eight.identity_face_window and eight.mixed_precision == "no"
    )
    assert resolve_options(preset(device="cpu", vram_profile="6gb")).train_text_encoder is False


@pytest.mark.parametrize(("name", "wrapped"), [("released", 16 * 9), ("paper", 16 * 4)])
def test_lora_targets_of_the_presets(tiny_sd, name, wrapped):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    configs = lora_configs(preset(name), train_text_encoder=True)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd.folder / "unet")
    inject_adapter_in_model(LoraConfig(**configs["unet"]), unet)
    modules = {n.rsplit(".lora_A", 1)[0] for n, _ in unet.named_parameters() if ".lora_A." in n}
    assert (
        len(modules) == wrapped
    )  # 16 transformer blocks: attn1 + attn2 (4 projections each) + ff, or attn2 only
    if name == "paper":
        assert all(".attn2.to_" in m for m in modules)
    assert configs["text_encoder"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert "text_encoder" not in lora_configs(preset(name), train_text_encoder=False)


def test_phase_one_changes_only_the_two_placeholder_rows(project, tiny_sd):
    base = load_base(tiny_sd.folder)
    before = {
        **{f"unet.{k}": v.clone() for k, v in base.unet.state_dict().items()},
        **{f"text.{k}": v.clone() for k, v in base.text_encoder.state_dict().items()},
    }
    started = {}

    def snapshot(event):  # the rows as phase 1 starts: their initial values
        if isinstance(event, PhaseStarted):
            rows = base.text_encoder.get_input_embeddings()
            started[event.phase] = rows.merged_weight()[rows.token_ids].detach().clone()

    config = tiny_config(tiny_sd.folder, phase2_steps=0)
    path = train(project, config, base=base, face_kit=tiny_face_kit(), on_event=snapshot)
    table = base.text_encoder.get_input_embeddings()
    ids = table.token_ids
    merged = table.merged_weight()
    original = before["text.embeddings.token_embedding.weight"]
    changed = (merged[: original.shape[0]] != original).any(dim=1).nonzero().flatten().tolist()
    assert changed == []  # the original vocabulary is untouched...
    assert merged.shape[0] == original.shape[0] + 2 and ids == [original.shape[0], original.shape[0] + 1]
    artefact = load_artefact(path)
    person = original[base.tokenizer.convert_tokens_to_ids("person</w>")]
    torch.testing.assert_close(started[1][0], person.float().to(started[1]))  # initialised as "person"
    for index, token in enumerate(("<sks>", "<style1>")):  # ...while both new rows trained
        assert (artefact.embeddings[token].float() - started[1][index].float()).norm() > 1e-4, token
    after = _frozen_state(base)
    for key, value in after.items():
        if key != "text.embeddings.token_embedding.base.weight":
            assert torch.equal(value, before[key]), key
    assert not artefact.unet_lora and not artefact.text_lora


@pytest.mark.slow
def test_phase_two_changes_lora_and_the_two_rows_only(project, tiny_sd):
    base = load_base(tiny_sd.folder)
    original = {k: v.clone() for k, v in _frozen_state(base).items()}
    table_before = base.text_encoder.get_input_embeddings().weight.detach().clone()
    config = tiny_config(tiny_sd.folder, phase1_steps=1, phase2_steps=2, gradient_checkpointing=True)
    events, rows_at_phase_two = [], []

    def record(event):
        events.append(event)
        if isinstance(event, PhaseStarted) and event.phase == 2:
            rows = base.text_encoder.get_input_embeddings()
            rows_at_phase_two.append(rows.merged_weight()[rows.token_ids].detach().clone())

    path = train(project, config, base=base, face_kit=tiny_face_kit(), on_event=record)
    after = _frozen_state(base)
    table = after.pop("text.embeddings.token_embedding.base.weight")
    torch.testing.assert_close(table[: table_before.shape[0]], table_before, rtol=0, atol=0)
    for key, value in after.items():
        assert torch.equal(value, original[key]), key
    artefact = load_artefact(path)
    assert artefact.unet_lora and artefact.text_lora
    assert any(v.abs().sum() > 0 for k, v in artefact.unet_lora.items() if "lora_B" in k)
    assert any(v.abs().sum() > 0 for k, v in artefact.text_lora.items() if "lora_B" in k)
    for index, token in enumerate(("<sks>", "<style1>")):  # both rows train in phase 2 too
        assert (artefact.embeddings[token].float() - rows_at_phase_two[0][index].float()).norm() > 1e-5, token
    losses = [e.losses for e in events if isinstance(e, StepDone) and e.phase == 2]
    assert all("attention" in terms for terms in losses)
    assert "attention" not in [e.losses for e in events if isinstance(e, StepDone)][0]


@pytest.mark.slow
def test_full_run_writes_a_loadable_artefact_previews_and_replayable_events(
    isolated_home, tiny_sd, tiny_decoder, tmp_path
):
    project = make_project(isolated_home, embedding_dim=512)
    config = tiny_config(
        tiny_sd.folder,
        preview_every=2,
        preview_steps=2,
        checkpoint_every=2,
        identity_fallback_landmarks=True,
        identity_decoder=preset().identity_decoder,  # the default decoder (TAESD), the kit's
        tiny_decoder_model=str(tiny_decoder),
    )
    events = []
    kit = demo_face_kit(tmp_path)  # the production recogniser path: ONNX ArcFace converted to torch
    path = train(project, config, base=load_base(tiny_sd.folder), face_kit=kit, on_event=events.append)
    assert path.name == "final.safetensors" and path.is_file()
    artefact = load_artefact(path)
    assert artefact.metadata["tokens"] == {"identity": "<sks>", "style": "<style1>"}
    assert artefact.metadata["preset"] == "released" and artefact.metadata["base_model"] == str(
        tiny_sd.folder
    )
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in artefact.unet_lora)

    from engine.generate import loaded
    from engine.models import make_pipeline

    with loaded(artefact, load_base(tiny_sd.folder)) as (view, _):
        pipe = make_pipeline(view)
        pipe.set_progress_bar_config(disable=True)
        lora = {k.replace(".magicapture.", "."): v for k, v in pipe.unet.state_dict().items() if "lora_" in k}
        expected = {
            k.removeprefix("unet."): v
            for k, v in artefact.diffusers_state_dict().items()
            if k.startswith("unet.")
        }
        assert lora.keys() == expected.keys() == artefact.unet_lora.keys()
        assert all(torch.equal(lora[k], expected[k]) for k in lora)
        ids = pipe.tokenizer("a <sks> in <style1>").input_ids
        rows = pipe.text_encoder.get_input_embeddings().weight
        torch.testing.assert_close(rows[ids[2]], artefact.embeddings["<sks>"])
        image = pipe(
            artefact.metadata["prompt"], num_inference_steps=2, height=64, width=64, output_type="np"
        ).images[0]
    assert image.shape == (64, 64, 3)

    optimiser = json.dumps(
        ckpt.read_json(ckpt.checkpoints(path.parent / "checkpoints")[-1] / "optimizer.json")
    )
    assert "__bnb_optimizer_quant_state__" in optimiser and '"state1"' in optimiser  # bitsandbytes AdamW8bit

    previews = [e for e in events if isinstance(e, PreviewSaved)]
    assert [p.global_step for p in previews] == [2, 4]
    for preview in previews:
        assert len(preview.images) == 2 and all(__import__("os").path.isfile(p) for p in preview.images)
        assert set(preview.attention_maps) == {"<sks>", "<style1>"}
        assert len(preview.identity) == 2 and all(s is None or -1 <= s <= 1 for s in preview.identity)
        scored = [s for s in preview.identity if s is not None]
        assert preview.identity_mean == (round(sum(scored) / len(scored), 4) if scored else None)
    kept = [load_artefact(Path(p.checkpoint) / PREVIEW_WEIGHTS) for p in previews]  # they stay after rotation
    assert not kept[0].unet_lora and set(kept[0].embeddings) == {"<sks>", "<style1>"}  # phase 1: no LoRA yet
    assert kept[1].unet_lora.keys() == artefact.unet_lora.keys()
    assert all(torch.equal(kept[1].unet_lora[k], v) for k, v in artefact.unet_lora.items())
    assert [type(e) for e in events][-1] is Finished
    assert [e.to_dict() for e in read_events(path.parent / "events.jsonl")] == [e.to_dict() for e in events]
    steps = [e for e in events if isinstance(e, StepDone)]
    assert [s.global_step for s in steps] == [1, 2, 3, 4] and all(s.it_per_s > 0 for s in steps)
    assert any("identity" in s.losses for s in steps if s.phase == 2)
    reports = [e for e in events if isinstance(e, MethodReport)]
    assert [(r.phase, r.global_step, r.steps) for r in reports] == [(1, 2, 2), (2, 4, 4)]
    assert reports[0].attention == {} and set(reports[1].attention) == {"<sks>", "<style1>"}
    assert all(0 < level < 1 for level in reports[1].attention.values())
    assert all(0 <= share <= 1 for share in reports[1].outside_share.values())
    tried = sum(tries for _, tries in reports[1].face_found.values())
    assert tried >= 1 and all(key.split()[0] in ("source", "composed") for key in reports[1].face_found)
    assert reports[1].detection_rate is not None and reports[1].skipped_steps == 0
    assert reports[1].decoder_identity_cosine is not None  # TAESD checked against the VAE at phase-2 start
    assert [e.global_step for e in events if isinstance(e, CheckpointSaved)] == [2, 4]
    entry = project.manifest()["trainings"][-1]
    assert entry["status"] == "finished" and entry["artefact"].endswith("final.safetensors")
    assert entry["final_artefact"] == entry["artefact"] and entry["artefact_step"] is None


def _final_tensors(path):
    artefact = load_artefact(path)
    return {
        **artefact.unet_lora,
        **{f"t.{k}": v for k, v in artefact.text_lora.items()},
        **artefact.embeddings,
    }


@pytest.fixture
def one_thread():
    """Bitwise reproducible CPU training: on some CPUs two uninterrupted multi-threaded runs with
    bitsandbytes' 8-bit AdamW already differ in the last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_stopped_and_resumed_runs_end_like_an_uninterrupted_one(project, tiny_sd, one_thread):
    config = tiny_config(tiny_sd.folder, phase1_steps=1, phase2_steps=2)
    reference = _final_tensors(run(project, tiny_sd, config)[0])

    def cancel_at(step):
        cancel = threading.Event()
        return cancel, lambda e: cancel.set() if isinstance(e, StepDone) and e.global_step == step else None

    cancel, watch = cancel_at(1)  # end of phase 1: phase 2 starts from the checkpoint
    with pytest.raises(TrainingCancelled) as stopped:
        train(
            project,
            config,
            base=load_base(tiny_sd.folder),
            face_kit=tiny_face_kit(),
            on_event=watch,
            cancel=cancel,
        )
    run_id = stopped.value.run
    assert stopped.value.checkpoint.name == "step-1"
    assert project.manifest()["trainings"][-1]["status"] == "stopped"
    assert resume_available(project) == run_id

    cancel, watch = cancel_at(2)  # mid phase 2: optimiser, schedule and RNG state come back
    with pytest.raises(TrainingCancelled):
        train(
            project,
            config,
            base=load_base(tiny_sd.folder),
            face_kit=tiny_face_kit(),
            on_event=watch,
            cancel=cancel,
            resume=True,
        )
    events = read_events(project.path("trainings", run_id, "events.jsonl"))
    assert [e.global_step for e in events if isinstance(e, Cancelled)] == [1, 2]
    assert [e.global_step for e in events if isinstance(e, StepDone)] == [1, 2]  # step 2 came after 1

    path, _, _ = run(project, tiny_sd, config, resume=run_id)
    resumed = _final_tensors(path)
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    assert resume_available(project) is None
    # Each resume went on from its checkpoint: no step ran twice.
    events = read_events(project.path("trainings", run_id, "events.jsonl"))
    assert [e.global_step for e in events if isinstance(e, StepDone)] == [1, 2, 3]


@pytest.mark.slow
def test_out_of_memory_stops_cleanly_and_suggests_a_smaller_profile(project, tiny_sd, monkeypatch):
    from engine.training import Objective

    original = Objective.__call__

    def losses(self, phase, step, steps, samples):
        if phase == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(self, phase, step, steps, samples)

    monkeypatch.setattr(Objective, "__call__", losses)
    config = tiny_config(tiny_sd.folder, phase1_steps=1, vram_profile="8gb", checkpoint_every=1)
    events = []
    with pytest.raises(TrainingError, match="'6gb'") as failure:
        train(
            project, config, base=load_base(tiny_sd.folder), face_kit=tiny_face_kit(), on_event=events.append
        )
    assert isinstance(failure.value.__cause__, torch.OutOfMemoryError)
    failed = events[-1]
    assert isinstance(failed, Failed) and "'6gb'" in failed.message and failed.checkpoint.endswith("step-1")
    entry = project.manifest()["trainings"][-1]
    assert entry["status"] == "failed" and "out of GPU memory" in entry["error"]
    assert resume_available(project) == entry["id"]


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(project, tiny_sd, monkeypatch):
    import safetensors.torch

    original = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):
        if "step-2" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    config = tiny_config(tiny_sd.folder, checkpoint_every=1)
    with pytest.raises(StorageFull) as full:
        run(project, tiny_sd, config)
    folder = project.path("trainings", project.manifest()["trainings"][-1]["id"], "checkpoints")
    assert str(folder) in str(full.value) and "intact" in str(full.value)
    assert [p.name for p in ckpt.checkpoints(folder)] == ["step-1"]
    assert sorted(p.name for p in folder.iterdir()) == ["step-1"]  # no half-written folder left
    assert ckpt.read_json(folder / "step-1" / ckpt.STATE)["global_step"] == 1


def test_cancel_stops_within_one_step(project, tiny_sd):
    cancel = threading.Event()
    events = []

    def watch(event):
        events.append(event)
        if isinstance(event, StepDone):
            cancel.set()

    with pytest.raises(TrainingCancelled) as stopped:
        train(
            project,
            tiny_config(tiny_sd.folder),
            base=load_base(tiny_sd.folder),
            face_kit=tiny_face_kit(),
            on_event=watch,
            cancel=cancel,
        )
    assert [e.global_step for e in events if isinstance(e, StepDone)] == [1]
    assert isinstance(events[-1], Cancelled) and stopped.value.checkpoint.name == "step-1"
    assert ckpt.read_json(stopped.value.checkpoint / ckpt.STATE)["step"] == 1

    from filelock import FileLock

    with FileLock(str(project.path("trainings", stopped.value.run, ".lock"))):  # "another process" trains it
        assert resume_available(project) is None
        with pytest.raises(TrainingError, match="already running"):
            train(project, tiny_config(tiny_sd.folder), resume=True)
    assert project.manifest()["trainings"][-1]["status"] == "stopped"


def test_cancel_before_the_first_step_leaves_nothing_to_resume(project, tiny_sd):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(TrainingCancelled) as stopped:
        train(
            project,
            tiny_config(tiny_sd.folder),
            base=load_base(tiny_sd.folder),
            face_kit=tiny_face_kit(),
            cancel=cancel,
        )
    assert stopped.value.checkpoint is None and resume_available(project) is None


def test_resume_without_a_stopped_run_is_refused(project, tiny_sd):
    with pytest.raises(TrainingError, match="no stopped training"):
        train(project, tiny_config(tiny_sd.folder), resume=True)


DDP_SCRIPT = """
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[3])
import torch
from fixtures_training import tiny_face_kit

from engine.config import preset
from engine.models import load_base
from engine.store import Project
from engine.training import train

config = preset(
    "released", base_model=sys.argv[2], resolution=64, phase1_steps=2, phase2_steps=2, checkpoint_every=1000,
    preview_every=0, latent_cache_variants=2, device="cpu", vram_profile="cpu", use_8bit_adam=True,
    identity_decoder="vae",
)
base = load_base(sys.argv[2])
train(Project(Path(sys.argv[1])), config, base=base, face_kit=tiny_face_kit())
weights = [p for n, p in base.unet.named_parameters() if "lora_" in n] + [base.text_encoder.get_input_embeddings().rows]
print("CHECKSUM", torch.distributed.get_rank(), float(sum(p.double().sum() for p in weights)), flush=True)
"""


@pytest.mark.slow
def test_two_processes_train_in_step_under_accelerate_launch(project, tiny_sd, tmp_path):
    import os
    import re
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(script),
        str(project.root),
        str(tiny_sd.folder),
        str(Path(__file__).parent),
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    sums = dict(re.findall(r"CHECKSUM (\d) (\S+)", result.stdout))
    assert sums.keys() == {"0", "1"} and sums["0"] == sums["1"]  # gradients were averaged across processes
    run_id = project.manifest()["trainings"][-1]["id"]
    final = ckpt.checkpoints(project.path("trainings", run_id, "checkpoints"))[-1]
    assert ckpt.read_json(final / ckpt.STATE)["processes"] == 2
    assert {p.name for p in final.glob("rng-*.safetensors")} == {"rng-0.safetensors", "rng-1.safetensors"}
    events = read_events(project.path("trainings", run_id, "events.jsonl"))
    assert [e.global_step for e in events if isinstance(e, StepDone)] == [1, 2, 3, 4]  # one writer
    assert load_artefact(project.path("trainings", run_id, "final.safetensors")).unet_lora


def _phase_two_trainer(project, tiny_sd, **overrides):
    """A trainer set up for phase 2 on the tiny base, as a run has it before its first phase-2 step."""
    from engine.training import phase_two_trainer

    config = tiny_config(tiny_sd.folder, phase1_steps=0, identity_max_timestep=1000, **overrides)
    return phase_two_trainer(
        project, config, base=load_base(tiny_sd.folder), face_kit=tiny_face_kit(), run="t"
    )


@pytest.mark.parametrize("decoder", ["vae", "tiny"])
def test_the_identity_branch_decodes_with_the_chosen_decoder_and_trains_the_lora(
    project, tiny_sd, tiny_decoder, decoder
):
    from engine.data import Sample

    trainer = _phase_two_trainer(  # checkpointing on with the tiny decoder, off with the VAE
        project,
        tiny_sd,
        identity_decoder=decoder,
        identity_fallback_landmarks=True,  # the random tiny model draws no face the detector finds
        tiny_decoder_model=str(tiny_decoder),
        gradient_checkpointing=decoder == "tiny",
    )
    tiny_decoder = trainer.identity.tiny_decoder
    assert (tiny_decoder is not None) == (decoder == "tiny")
    if tiny_decoder is not None:
        assert tiny_decoder.decoder.gradient_checkpointing
    calls = {"vae": 0, "tiny": 0}
    trainer.base.vae.decoder.register_forward_hook(lambda *_: calls.__setitem__("vae", calls["vae"] + 1))
    if tiny_decoder is not None:
        tiny_decoder.decoder.register_forward_hook(lambda *_: calls.__setitem__("tiny", calls["tiny"] + 1))
    sample = Sample("composed", trainer.data.by_role["reference"][0], 0, 0)
    terms = trainer.objective(2, 0, 2, [sample])
    assert calls == {"vae": int(decoder == "vae"), "tiny": int(decoder == "tiny")}
    terms["identity"].backward()
    lora = [p for n, p in trainer.base.unet.named_parameters() if "lora_B" in n]  # A gets none while B is 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
