"""The identity curve of a training: scored previews, kept preview checkpoints, using the best one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_training import demo_face_kit
from tiny import tiny_config

from engine import checkpoint as ckpt
from engine.artefact import load_artefact
from engine.data import load_images
from engine.demo.portraits import make_project
from engine.events import PreviewSaved, StepDone, event_from_dict, identity_curve, read_events
from engine.generate import GenerationSettings, generate
from engine.identity import identity_score
from engine.models import load_base
from engine.runs import resolve_artefact
from engine.training import (
    PREVIEW_WEIGHTS,
    TrainingError,
    artefact_from_preview,
    best_preview,
    preview_checkpoints,
    train,
    use_preview,
)


def preview(step: int, mean: float | None) -> PreviewSaved:
    return PreviewSaved(
        phase=2,
        global_step=step,
        prompt="p",
        images=[],
        attention_maps={},
        identity=[mean],
        identity_mean=mean,
    )


def test_identity_curve_is_in_step_order_skips_unscored_and_keeps_a_repeated_steps_last_score():
    events = [
        preview(4, 0.3),
        StepDone(
            phase=2, step=1, phase_steps=4, global_step=5, total_steps=8, losses={}, lr=0, it_per_s=1, eta_s=0
        ),
        preview(2, 0.1),
        preview(6, None),
        preview(4, 0.5),  # a resumed run previewed step 4 again
    ]
    assert identity_curve(events) == [(2, 0.1), (4, 0.5)]
    assert identity_curve([]) == []


def test_old_preview_lines_without_scores_still_load():
    line = {
        "type": "PreviewSaved", "time": 1.0, "phase": 1, "global_step": 3, "prompt": "p",
        "images": ["a.png"], "attention_maps": {"<sks>": ["b.png"]},
    }  # fmt: skip
    event = event_from_dict(line)
    assert isinstance(event, PreviewSaved)
    assert (event.identity, event.identity_mean, event.checkpoint) == ([], None, None)
    assert identity_curve([event]) == []
    scored = preview(3, 0.25)
    assert event_from_dict(json.loads(json.dumps(scored.to_dict()))) == scored


def test_step_checkpoint_rotation_never_deletes_preview_checkpoints(tmp_path):
    def save(step, kind, keep):
        staged = ckpt.staging(tmp_path, step, kind)
        ckpt.save_json(staged / ckpt.STATE, {"global_step": step, "identity_mean": None}, tmp_path)
        ckpt.commit(staged, step, keep, kind)

    for step in (1, 2, 3):
        save(step, ckpt.PREVIEW, None)
        save(step, ckpt.STEP, 1)
    assert [p.name for p in ckpt.checkpoints(tmp_path)] == ["step-3"]
    previews = ckpt.checkpoints(tmp_path, ckpt.PREVIEW)
    assert [p.name for p in previews] == ["preview-1", "preview-2", "preview-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview-1", "preview-2", "preview-3", "step-3"]


def test_best_preview_takes_the_highest_score_and_the_later_step_on_a_tie(isolated_home):
    project = make_project(isolated_home)
    folder = project.path("trainings", "run-1", "checkpoints")
    assert best_preview(project, "run-1") is None
    for step, mean in ((2, 0.4), (4, None), (6, 0.7), (8, 0.7), (10, 0.1)):
        staged = ckpt.staging(folder, step, ckpt.PREVIEW)
        ckpt.save_json(staged / ckpt.STATE, {"global_step": step, "identity_mean": mean}, folder)
        ckpt.commit(staged, step, None, ckpt.PREVIEW)
    assert [(p.step, p.identity_mean) for p in preview_checkpoints(project, "run-1")] == [
        (2, 0.4), (4, None), (6, 0.7), (8, 0.7), (10, 0.1),
    ]  # fmt: skip
    step, score, path = best_preview(project, "run-1")
    assert (step, score, path) == (8, 0.7, folder / "preview-8")


def _lora(artefact):
    return {**artefact.unet_lora, **{f"text.{k}": v for k, v in artefact.text_lora.items()}}


def _equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.slow
def test_previews_are_scored_kept_and_the_best_becomes_the_runs_artefact(
    isolated_home, tiny_sd, tmp_path, monkeypatch
):
    project = make_project(isolated_home, embedding_dim=512)
    kit = demo_face_kit(tmp_path)
    # The tiny model paints no faces, so the real scorer returns None on its previews. Each call still
    # runs it (its answer is checked below), then a scripted score stands in so the curve has a maximum.
    # A preview without a detected face is scored again at the source crops' mean face (``face``).
    real, script, framings = [], iter([0.6, None, 0.1, 0.3]), []

    def scored(face_kit, image, reference, face=None):
        assert face_kit is kit and image.dtype == np.uint8 and reference is not None and reference.size == 512
        real.append(identity_score(face_kit, image, reference, face))
        if face is not None:
            framings.append(face)
            return 0.2
        return next(script)

    monkeypatch.setattr("engine.training.previews.identity_score", scored)
    config = tiny_config(
        tiny_sd.folder, phase1_steps=1, phase2_steps=3, preview_every=2, preview_steps=2,
        checkpoint_every=1, keep_checkpoints=1,
    )  # fmt: skip
    events = []
    final = train(project, config, base=load_base(tiny_sd.folder), face_kit=kit, on_event=events.append)
    run = final.parent.name

    assert len(real) == 5 and all(s is None or -1 <= s <= 1 for s in real)
    assert real[2] is not None, "scored at the framing, the real scorer gives a similarity"
    images = load_images(project, config.resolution)
    boxes = np.array([image.bbox.numpy() for image in images if image.role == "source"])
    assert len(framings) == 1 and np.allclose(framings[0].bbox, boxes.mean(0), atol=1e-4)
    previews = [e for e in events if isinstance(e, PreviewSaved)]
    assert [(p.global_step, p.identity, p.identity_framed, p.identity_mean) for p in previews] == [
        (2, [0.6, 0.2], [False, True], 0.4), (4, [0.1, 0.3], [False, False], 0.2),
    ]  # fmt: skip
    assert identity_curve(read_events(final.parent / "events.jsonl")) == [(2, 0.4), (4, 0.2)]

    # Rotation kept one step checkpoint; every preview checkpoint is still there.
    folder = final.parent / "checkpoints"
    assert [p.name for p in ckpt.checkpoints(folder)] == ["step-4"]
    assert [p.checkpoint for p in previews] == [str(folder / f"preview-{s}") for s in (2, 4)]
    kept = preview_checkpoints(project, run)
    assert [(p.step, p.identity_mean) for p in kept] == [(2, 0.4), (4, 0.2)]
    assert ckpt.read_json(folder / "preview-2" / ckpt.STATE)["identity"] == [0.6, 0.2]

    # The last preview holds the final weights; earlier ones hold their own step's weights.
    weights = {p.step: load_artefact(p.path / PREVIEW_WEIGHTS) for p in kept}
    finished = load_artefact(final)
    assert _equal(_lora(weights[4]), _lora(finished)) and finished.unet_lora
    assert not _equal(_lora(weights[2]), _lora(finished))

    best = best_preview(project, run)
    assert (best.step, best.identity_mean) == (2, 0.4)
    path = artefact_from_preview(project, run, best.step)
    assert path == final.parent / "artefact-step-2.safetensors"
    chosen = load_artefact(path)
    assert _equal(_lora(chosen), _lora(weights[2]))
    assert all(torch.equal(chosen.embeddings[t], weights[2].embeddings[t]) for t in ("<sks>", "<style1>"))
    assert chosen.metadata["step"] == 2 and chosen.metadata["identity_mean"] == 0.4
    assert chosen.metadata["tokens"] == finished.metadata["tokens"] and chosen.metadata["lora"]
    assert finished.metadata["step"] == 4
    with pytest.raises(TrainingError, match=r"no preview checkpoint at step 3 \(kept steps: 2, 4\)"):
        artefact_from_preview(project, run, 3)

    # Using it: generation resolves the run to the chosen artefact; the final one stays recorded.
    assert use_preview(project, run, best.step) == path
    entry = project.manifest()["trainings"][-1]
    assert (entry["artefact"], entry["final_artefact"], entry["artefact_step"]) == (
        f"trainings/{run}/artefact-step-2.safetensors", f"trainings/{run}/final.safetensors", 2,
    )  # fmt: skip
    assert resolve_artefact(project, run) == (path, run) == resolve_artefact(project, None)
    settings = GenerationSettings(steps=2, width=64, height=64)
    record = generate(project, run, settings, base=load_base(tiny_sd.folder), face_kit=kit)[0]
    assert record.params["artefact"] == f"trainings/{run}/artefact-step-2.safetensors" and record.run == run

    from filelock import FileLock

    with (
        FileLock(str(project.path("trainings", run, ".lock"))),
        pytest.raises(TrainingError, match="is running"),
    ):
        use_preview(project, run, None)
    assert use_preview(project, run, None) == final
    entry = project.manifest()["trainings"][-1]
    assert (entry["artefact"], entry["artefact_step"]) == (f"trainings/{run}/final.safetensors", None)
    assert resolve_artefact(project, run) == (final, run)
