"""The Photos tab's handlers: sample photos on an empty demo project, the "Not used" list kept per
role until dismissed, the style tip stating intake's rule, and the painting's progress."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from fixtures_faces import encode

from engine.store import ProjectStore
from studio.jobs import DONE, RUNNING, Job
from studio.state import Studio


def no_progress(*args, **kwargs) -> None:
    return None


def visible(update) -> bool:
    return bool(update.visible) if isinstance(update, gr.Button) else bool(update.get("visible"))


@pytest.fixture
def studio(tmp_path: Path, demo_kit) -> Studio:
    studio = Studio(ProjectStore(tmp_path))
    studio.store.create("anna")
    studio.face_kit = lambda: demo_kit
    return studio


def not_a_photo(folder: Path, name: str) -> str:
    path = folder / name
    path.write_text("these are words, not pixels")
    return str(path)


def test_a_later_upload_of_the_other_role_keeps_the_first_roles_refusals(studio, tmp_path):
    from studio.photos import on_dismiss, on_upload

    on_upload(studio, "source", "anna", [not_a_photo(tmp_path, "selfie.jpg")], no_progress)
    shown = on_upload(studio, "reference", "anna", [not_a_photo(tmp_path, "style.jpg")], no_progress)
    [source, reference] = [studio.refusals.get("anna", role) for role in ("source", "reference")]
    assert [item.filename for item in source] == ["selfie.jpg"], "the selfie's refusal was wiped"
    assert [item.filename for item in reference] == ["style.jpg"]
    refused_html, dismiss_source, dismiss_reference = shown[-3], shown[3], shown[7]
    assert "selfie.jpg" in refused_html and "style.jpg" in refused_html
    assert visible(dismiss_source) and visible(dismiss_reference)

    shown = on_dismiss(studio, "source", "anna")
    assert studio.refusals.get("anna", "source") == []
    assert [item.filename for item in studio.refusals.get("anna")] == ["style.jpg"]
    assert "selfie.jpg" not in shown[-2] and "style.jpg" in shown[-2]
    assert not visible(shown[3]) and visible(shown[7])


def test_the_style_tip_states_what_intake_requires_of_a_reference(studio, demo_kit):
    from engine.intake import Refused, add_photo
    from engine.intake.checks import MIN_FACE
    from studio.photos import STYLE_TIP

    faceless = encode(np.full((512, 512, 3), 128, np.uint8), "PNG")
    refused = add_photo(studio.store.open("anna"), faceless, "backdrop.png", "reference", demo_kit)
    assert isinstance(refused, Refused) and refused.reason == "no_face"
    assert "one face is clearly visible" in refused.message
    assert "one face clearly visible" in STYLE_TIP, "the tip asks for what the refusal asks for"
    assert f"at least {MIN_FACE} pixels wide" in STYLE_TIP
    assert "ignored" not in STYLE_TIP


@pytest.mark.slow
def test_sample_photos_fill_an_empty_demo_project_and_then_the_button_hides(studio, tmp_path):
    from engine.demo import build_demo_kit, default_kit_folder
    from engine.photos import photo_records
    from studio.photos import on_samples, views

    assert not visible(views(studio, "anna")[-1]), "outside demo mode there is no samples button"
    studio.demo = build_demo_kit(default_kit_folder())
    assert visible(views(studio, "anna")[-1])
    shown = on_samples(studio, "anna", no_progress)
    project = studio.store.open("anna")
    assert 4 <= len(photo_records(project, "source")) <= 6
    assert 4 <= len(photo_records(project, "reference")) <= 6
    assert studio.refusals.get("anna") == []
    assert not visible(shown[-1]), "the project has photos now"
    with pytest.raises(gr.Error, match="already has photos"):
        on_samples(studio, "anna", no_progress)


def test_the_painting_shows_the_image_and_step_it_is_at_then_what_was_added():
    from engine.events import Status
    from engine.references import ReferenceProgress
    from studio.photos import references_progress

    job = Job("job-1", "references", "anna", "Style references for anna", work=lambda job: None)
    job.status = RUNNING
    job.emit(Status(message="Loading sd…"))
    assert "Loading sd…" in references_progress(job)
    for index in (1, 2):
        for step in range(5):
            job.emit(ReferenceProgress(index=index, count=3, step=step, steps=4))
        outcome = "accepted" if index == 1 else "no_face"
        job.emit(ReferenceProgress(index=index, count=3, step=4, steps=4, outcome=outcome))
    job.emit(ReferenceProgress(index=3, count=3, step=1, steps=4))
    running = references_progress(job)
    assert "Painting style reference 3 of 3: step 1 of 4." in running
    assert "<progress value='9' max='12'>" in running
    job.status = DONE
    assert "2 style references painted: 1 added, 1 not used" in references_progress(job)


@pytest.mark.slow
def test_references_painted_in_the_demo_studio_are_all_added(tmp_path, monkeypatch):
    from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit
    from engine.photos import photo_records
    from studio.photos import references_progress, submit_references

    kit = build_demo_kit(default_kit_folder())
    for name in ("MAGICAPTURE_ASSETS", "MAGICAPTURE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    use_demo_kit(kit)
    studio = Studio(ProjectStore(tmp_path), demo=kit)
    project = studio.store.create("anna")
    job = submit_references(studio, project, "studio headshot, grey backdrop", 4)
    assert studio.runner.wait(job, timeout=600)
    assert job.status == DONE, job.error
    assert studio.refusals.get("anna") == [], [item.message for item in studio.refusals.get("anna")]
    assert len(photo_records(project, "reference")) == 4
    assert "4 style references painted: 4 added." in references_progress(job)


def test_the_picker_changing_to_the_shown_project_leaves_the_photos_alone(tmp_path):
    """Gradio fires the picker's change event again for the same project: only another project is shown."""
    from studio.photos import VIEWS, on_project

    studio = Studio(ProjectStore(tmp_path))
    studio.store.create("anna")
    *views, shown = on_project(studio, "anna", None)
    assert shown == "anna" and len(views) == VIEWS and views[1] == []  # anna's (no) selfies
    again = on_project(studio, "anna", shown)
    assert again[-1] == "anna" and all(update == gr.skip() for update in again[:-1])
    *views, shown = on_project(studio, None, shown)
    assert shown is None and views[0] == []
