"""Issue 16, "progress, time and words that are true": generation progress per image, the ETA from
the measured step rate, the pre-flight line's steps, one account of the models, the identity axis."""

from __future__ import annotations

import os
import re

import pytest
from fixtures_outputs import RUN, project_with_run

from engine.events import Finished, PhaseStarted, PreviewSaved, Status, StepDone
from studio.jobs import RUNNING, Job

# -- 1. generation shows per-image progress ----------------------------------------------------


def running_job(events: list) -> Job:
    job = Job(id="job-1", kind="generate", project="alice", title="Portraits of alice", work=lambda job: None)
    job.status = RUNNING
    for event in events:
        job.emit(event)
    return job


def test_generation_says_which_image_and_step_it_is_on(lora, tmp_path, fallback_kit):
    """Before: the tab kept "Loading sd with run run-1…" until the batch had finished."""
    from engine.generate import GenerationSettings, generate
    from engine.generate.loading import _BASES
    from studio.generate import progress_html

    _BASES.clear()  # the batch loads its base model, as the first batch after a start does
    project = project_with_run(tmp_path / "store", lora.path)
    events: list = []
    generate(
        project, RUN, GenerationSettings(steps=3, count=2), face_kit=fallback_kit, on_event=events.append
    )

    loading = [
        e.message for e in events[: next(i for i, e in enumerate(events) if isinstance(e, PhaseStarted))]
    ]
    assert any("base model" in m for m in loading) and any("trained weights" in m for m in loading)

    shown = {}
    for index in range(len(events)):
        text = progress_html(running_job(events[: index + 1]))
        shown.setdefault(re.sub(r" · about .* left", "", text), text)
    lines = " ".join(shown)
    for image in (1, 2):
        for step in (1, 2, 3):
            assert f"Image {image} of 2, step {step}/3" in lines
    last_step = progress_html(
        running_job(events[: max(i for i, e in enumerate(events) if isinstance(e, StepDone)) + 1])
    )
    assert "Image 2 of 2, step 3/3" in last_step and "Loading" not in last_step
    mid = next(text for key, text in shown.items() if "Image 1 of 2, step 2/3" in key)
    assert "left" in mid, "the batch's time left, from its own step rate"


def test_a_status_after_the_images_replaces_the_image_line():
    from engine.events import ImageStarted
    from studio.generate import progress_html

    events = [
        Status(message="Loading the base model sd…"),
        PhaseStarted(phase=0, steps=2, description="Generating 1 image(s)"),
        ImageStarted(index=1, count=1, steps=2, seed=0),
        StepDone(phase=0, step=2, phase_steps=2, global_step=2, total_steps=2, losses={}, lr=0.0, it_per_s=1.0, eta_s=0.0),
        Status(message="Post-processing portrait 1 of 1…"),
    ]  # fmt: skip
    assert "Post-processing portrait 1 of 1" in progress_html(running_job(events))
    assert "Loading the base model sd" in progress_html(running_job(events[:1]))


# -- 2. the ETA comes from the measured step rate ---------------------------------------------


def training_events(start: float = 1000.0) -> list:
    """Ten phase-1 steps of a 50-step run at 0.09 it/s: 2.5 s steps and a 77.5 s preview after step 5.

    The first step (20 s from the phase's start) carries the warm-up and is left out of the rate.
    """
    events = [PhaseStarted(phase=1, steps=50, description="Embeddings", time=start)]
    now = start + 20.0
    for step in range(1, 11):
        if step > 1:
            now += 2.5 + (77.5 if step == 6 else 0.0)
        events.append(
            StepDone(
                phase=1, step=step, phase_steps=50, global_step=step, total_steps=50, losses={"total": 0.1},
                lr=1e-3, it_per_s=0.09, eta_s=40 / 0.09, time=now,
            )
        )  # fmt: skip
        if step == 5:
            events.append(
                PreviewSaved(
                    phase=1, global_step=5, prompt="p", images=[], attention_maps={}, time=now + 77.5
                )
            )
    return events


def test_the_eta_comes_from_the_measured_step_rate_previews_included(tiny_sd):
    """Before: the median step (2.5 s) times the 40 steps left said 1 min 40 s; at 0.09 it/s it is 7 min 24 s."""
    from engine import preflight
    from engine.config import preset
    from studio.train import fold, progress_html, refined

    config = preset(
        "fast", base_model=str(tiny_sd.folder), resolution=64, device="cpu", vram_profile="cpu",
        phase1_steps=50, phase2_steps=0, preview_every=5,
    )  # fmt: skip
    job = running_job(training_events())
    job.kind = "train"
    job.estimate = preflight.estimate(config, preflight.DeviceInfo("cpu", "CPU", 16 * 2**30, False))
    view = refined(fold(job.event_list()), job)
    assert view.eta_s == pytest.approx(40 / 0.09, rel=0.01)
    assert "ETA 7 min 24 s" in progress_html(view, job)


def test_later_phases_add_the_overhead_measured_per_step():
    """In phase 1, the phase-2 steps take their own step time plus the previews' share measured so far."""
    from engine.preflight import DeviceInfo, Estimate, remaining_seconds

    found = Estimate(
        model="tiny", profile="cpu", resolution=64, device=DeviceInfo("cpu", "CPU", None, False), steps=(50, 20),
        micro_steps=1, batch_size=1, peak_bytes=None, phase1_step_s=2.5, phase2_step_s=5.0, resident_bytes=None,
        basis="", fits=None, done=(10, 0), refined=True,
    )  # fmt: skip
    wall = 100.0 / 9  # s per phase-1 step, previews included: 8.6 s of overhead over the 2.5 s step
    assert remaining_seconds(found, wall, phase=1) == pytest.approx(40 * wall + 20 * (5.0 + wall - 2.5))
    assert remaining_seconds(found, None, phase=1) == found.remaining_s


def test_the_rate_leaves_out_the_warm_up_step_and_reads_the_recent_ones():
    from engine.preflight import wall_step_seconds

    assert wall_step_seconds([30.0]) is None, "a warm-up step alone says nothing of the rate"
    assert wall_step_seconds([30.0, 2.0, 4.0]) == pytest.approx(3.0)
    assert wall_step_seconds([30.0] + [1.0] * 200 + [3.0] * 100, window=100) == pytest.approx(3.0)


# -- 3. the pre-flight line states the run's real steps ----------------------------------------


@pytest.fixture
def demo_studio(monkeypatch, tmp_path):
    from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit
    from engine.store import ProjectStore
    from studio.state import Studio

    for name in ("MAGICAPTURE_ASSETS", "MAGICAPTURE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    kit = build_demo_kit(default_kit_folder())
    use_demo_kit(kit)
    return Studio(ProjectStore(tmp_path / "data"), demo=kit)


def test_the_demo_states_the_steps_it_runs_and_prints_no_benchmark_command(demo_studio):
    """Before: "fast … 700 steps." beside a 12-step demo run, and "`python -m bench --quick …`"."""
    from studio.train import ADVANCED, on_estimate, on_preset

    help_text, *fields = on_preset(demo_studio, "fast")
    estimate = on_estimate(demo_studio, "fast", "auto", *fields)
    values = dict(zip(ADVANCED, fields, strict=True))
    steps = values["phase1_steps"] + values["phase2_steps"]
    assert steps == 12
    assert "12 steps" in help_text and "700" not in help_text
    assert "for 12 steps" in estimate
    assert "python -m" not in estimate and "`" not in estimate


def test_the_estimate_never_shows_a_command_even_without_figures(tmp_path, monkeypatch, tiny_sd):
    from engine import preflight
    from engine.config import preset
    from studio.train import estimate_text

    config = preset("fast", base_model=str(tiny_sd.folder), resolution=64, device="cpu", vram_profile="cpu")
    found = preflight.estimate(config, preflight.DeviceInfo("cpu", "CPU", 16 * 2**30, False))
    assert "`" in found.basis, "the table records the command that measured it, for the maintainers"
    assert "python -m" not in preflight.summary(found)
    monkeypatch.setattr(
        preflight.forecast, "load_table", lambda: preflight.load_table(tmp_path / "none.json")
    )
    missing = estimate_text(config)
    assert "python -m" not in missing and "first steps" in missing


# -- 4. one account of the models -------------------------------------------------------------


def test_header_and_settings_say_the_same_of_the_demo_stand_ins(demo_studio):
    """Before: the header said "fallback face detector (approximate)", Settings "✓ installed" for all."""
    import gradio as gr

    from engine.identity import _FACE_KITS
    from studio.app import header_html
    from studio.settings import assets_table, on_models

    _FACE_KITS.clear()
    before, shown = on_models(demo_studio, None)
    assert "fallback" not in str(before) and "face models load on first use" in header_html(demo_studio)
    demo_studio.face_kit()
    after, shown = on_models(demo_studio, shown)
    assert after != before, "the open model list follows the face models once they load"
    assert on_models(demo_studio, shown)[0] == gr.skip()
    header = header_html(demo_studio)
    rows = {row[0]: row[2] for row in assets_table(demo_studio)}
    assert all("demo stand-in" in state for state in rows.values()), rows
    assert "installed" not in " ".join(rows.values())
    assert "demo stand-ins" in header
    assert "detector" in rows["buffalo_l"] and "fallback" in rows["buffalo_l"]
    assert "fallback" not in rows["bisenet"]
    assert "face detector: approximate fallback" in header and "parser" not in header


def test_header_and_settings_name_the_same_fallbacks_without_the_face_models(tmp_path, monkeypatch):
    from engine.faces import load_face_kit
    from engine.identity import _FACE_KITS, _kit_key
    from engine.store import ProjectStore
    from studio.app import header_html
    from studio.settings import assets_table
    from studio.state import Studio

    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(tmp_path / "empty"))
    monkeypatch.setenv("MAGICAPTURE_OFFLINE", "1")
    studio = Studio(ProjectStore(tmp_path / "data"))
    kit = load_face_kit()
    assert set(kit.fallbacks) == {"detector", "parser", "recogniser"}
    _FACE_KITS.get(_kit_key(False), lambda: kit)
    try:
        header = header_html(studio)
        rows = {row[0]: row[2] for row in assets_table(studio)}
    finally:
        _FACE_KITS.clear()
    assert "face detector, parser and recogniser: approximate fallback" in header
    assert "buffalo_l" in header and "bisenet" in header
    assert (
        rows["buffalo_l"].startswith("not downloaded")
        and "fallback in use for the detector and recogniser" in rows["buffalo_l"]
    )
    assert "fallback in use for the parser" in rows["bisenet"]
    assert rows["gfpgan_v1.4"] == "not downloaded"
    assert "stand-in" not in header + " ".join(rows.values())


# -- 5. the identity axis ---------------------------------------------------------------------


def test_the_identity_axis_spans_at_least_a_fifth_so_noise_looks_flat(tmp_path):
    """Before: the plot fitted its axis to 0.7110-0.7128, so preview-to-preview noise looked like a trend."""
    from engine.events import EventLog
    from engine.store import ProjectStore
    from studio.state import Studio
    from studio.train import refresh

    studio = Studio(ProjectStore(tmp_path))
    project = studio.store.create("anna")
    project.update(lambda m: m.setdefault("trainings", []).append({"id": "run-1", "status": "finished"}))
    log = EventLog(project.path("trainings", "run-1", "events.jsonl"))
    for step, score in ((100, 0.7110), (200, 0.7128), (300, 0.7119)):
        log.append(
            PreviewSaved(
                phase=2, global_step=step, prompt="p", images=[], attention_maps={}, identity_mean=score
            )
        )
    log.append(Finished(artefact="final.safetensors", seconds=1.0))
    plot = refresh(studio, "anna", None, force=True).identity_plot
    low, high = plot.y_lim
    assert high - low >= 0.2 and low <= 0.7110 and high >= 0.7128
    assert [row[1] for row in plot.value["data"]] == pytest.approx([0.7110, 0.7128, 0.7119])

    from studio.train import TrainingView, identity_range

    assert identity_range([0.05, 0.65]) == [0.05, 0.65], "a real trend keeps its own range"
    assert identity_range([0.97, 0.99]) == [0.8, 1.0], "kept inside the cosine's range"
    assert identity_range([-0.99]) == [-1.0, -0.8]
    assert refresh(studio, None, None, force=True).identity_plot.y_lim is None
    assert TrainingView().identity == []
