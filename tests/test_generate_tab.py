"""The Generate tab's run picker keeps the run the user picked, and its output presets and suggested
post-processing follow the chosen run's model family (issue 17: SDXL sizes, restoration without
upscaling at 1024 px)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
import torch

from engine.artefact import artefact_family, save_artefact
from engine.store import ProjectStore

TOKENS = {"identity": "<sks>", "style": "<style1>"}
STAMPS = {"run-old": "2026-12-02T14:05:00+00:00", "run-new": "2026-12-03T09:30:00+00:00"}


def tiny_artefact(path: Path, family: str | None) -> Path:
    """An artefact as the trainer writes it, with one-number tensors; ``family`` None: written before
    families were recorded (SD 1.x)."""
    metadata = {"tokens": TOKENS, **({"family": family} if family else {})}
    rows = {token: torch.zeros(1) for token in TOKENS.values()}
    return save_artefact(path, {"down.lora_A.weight": torch.zeros(1, 1)}, {}, rows, metadata)


@pytest.fixture
def studio(tmp_path):
    from studio.state import Studio

    return Studio(ProjectStore(tmp_path / "data"))


def add_runs(project, families: dict[str, str | None], started: dict[str, str] = STAMPS) -> None:
    """Finished runs (oldest first) whose artefacts record these families."""
    for run, family in families.items():
        tiny_artefact(project.path("trainings", run, "final.safetensors"), family)
    project.update(
        lambda manifest: manifest["trainings"].extend(
            {
                "id": run,
                "status": "finished",
                "preset": "fast",
                "started": started[run],
                "artefact": f"trainings/{run}/final.safetensors",
            }
            for run in families
        )
    )


def test_the_run_a_user_picked_stays_picked_when_the_picker_or_the_tab_fires_again(studio):
    from studio.generate import runs

    anna = studio.store.create("anna")
    add_runs(anna, {"run-old": None, "run-new": None})

    notice, picker = runs(studio, "anna", None)
    assert picker.value == "run-new" and not notice.visible  # newest first
    # the user picks the older run; the picker's change event fires again, the tab is visited again
    assert runs(studio, "anna", "run-old")[1].value == "run-old"
    # a run no longer offered (deleted) gives way to the newest
    assert runs(studio, "anna", "run-gone")[1].value == "run-new"
    ben = studio.store.create("ben")
    notice, picker = runs(studio, ben.name, "run-old")
    assert picker.value is None and notice.visible


def test_an_sdxl_run_offers_its_portrait_sizes_and_restoration_without_upscaling(studio):
    from studio.generate import run_options

    project = studio.store.create("anna")
    add_runs(project, {"run-old": None, "run-new": "sdxl"})
    assert artefact_family(project.path("trainings/run-new/final.safetensors")).name == "sdxl"
    assert artefact_family(project.path("trainings/run-old/final.safetensors")).name == "sd1"

    presets, restore, upscale, shown = run_options(studio, "anna", "run-new", "none", "sd1")
    offered = [key for _, key in presets.choices]
    assert offered[:3] == ["none", "portrait-832x1216", "portrait-896x1152"]
    assert {"passport-eu", "passport-us", "headshot-1024", "headshot-2048"} <= set(offered)
    assert (restore, upscale, shown) == ("gfpgan", 1, "sdxl")

    # another SDXL run keeps what the user chose; a chosen SDXL size is kept too
    again = run_options(studio, "anna", "run-new", "portrait-832x1216", "sdxl")
    assert again[0].value == "portrait-832x1216" and again[1:] == (gr.skip(), gr.skip(), "sdxl")

    # an SD 1.x run: no SDXL sizes (the chosen one is dropped), nothing pre-chosen, as before
    presets, restore, upscale, shown = run_options(studio, "anna", "run-old", "portrait-832x1216", "sdxl")
    assert [key for _, key in presets.choices] == [
        "none",
        "passport-eu",
        "passport-us",
        "headshot-1024",
        "headshot-2048",
    ]
    assert presets.value == "none" and (restore, upscale, shown) == ("none", 1, "sd1")
    # the tab opens on SD 1.x's choices: its runs leave what the user set (e.g. x2) alone
    assert run_options(studio, "anna", "run-old", "none", "sd1")[1:] == (gr.skip(), gr.skip(), "sd1")
