"""The tiny SDXL in the studio (issue 17): ``magicapture-studio --demo sdxl`` in Chromium, from the
sample photos through a one-step-per-phase training to a generated portrait.

Waits end on what the page shows (the jobs' ``data-state``, images in galleries); a screenshot of
the page is saved to ``tests/artifacts/screenshots/sdxl-demo-failed.png`` when a step fails.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from harness import SCREENSHOTS, button, wait_for_images, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROJECT = "Sam XL"
STEPS = 1
"""Steps of each phase: the fewest that run both phases and save an artefact."""


def set_number(page, elem_id: str, value: int) -> None:
    field = page.locator(f"#{elem_id} input")
    field.fill(str(value))
    field.blur()


@contextlib.contextmanager
def screenshot_on_failure(page):
    try:
        yield
    except BaseException:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            page.screenshot(path=str(SCREENSHOTS / "sdxl-demo-failed.png"), full_page=True)
        raise


def test_the_sdxl_demo_trains_and_generates_with_the_tiny_sdxl(tmp_path: Path, browser_page, start_studio):
    from engine.artefact import load_artefact

    data_dir = tmp_path / "data"
    studio = start_studio(data_dir, "--demo", "sdxl")
    page = browser_page.new_page()
    with screenshot_on_failure(page):
        page.goto(studio.url)
        page.locator("#base-chip").get_by_text("Demo model: tiny SDXL").wait_for()

        page.locator("#new-project-name").get_by_role("textbox").fill(PROJECT)
        button(page, "Create project").click()
        page.get_by_role("heading", name=PROJECT).wait_for()

        page.get_by_role("tab", name="Photos").click()
        button(page, "Try it with sample photos").click()
        wait_for_images(page, "gallery-source", 4)
        wait_for_images(page, "gallery-reference", 4)

        page.get_by_role("tab", name="Train").click()
        page.get_by_text("Advanced settings").click()
        set_number(page, "advanced-phase1_steps", STEPS)
        set_number(page, "advanced-phase2_steps", STEPS)
        button(page, "Start training").click()
        wait_for_job(page, "train-progress")

        page.get_by_role("tab", name="Generate").click()
        button(page, "Generate", exact=True).click()
        wait_for_job(page, "generate-progress")
        wait_for_images(page, "generate-results", 1)

        page.get_by_role("tab", name="Settings").click()
        page.locator("#base-info").get_by_text("SDXL diffusers folder").wait_for()

    project = data_dir / "projects" / PROJECT.replace(" ", "-")
    [artefact] = project.glob("trainings/*/final.safetensors")
    metadata = load_artefact(artefact).metadata
    assert metadata["family"] == "sdxl" and Path(metadata["base_model"]).name == "sdxl"
    manifest = json.loads((project / "manifest.json").read_text("utf-8"))
    assert manifest["outputs"] and all((project / output["file"]).is_file() for output in manifest["outputs"])
