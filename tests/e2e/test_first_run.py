"""A newcomer's first run in Chromium: an empty data folder in demo mode, no file of their own, to
an exported LoRA and a published proof gallery, clicking only what a user clicks.

The steps are found by their visible labels (tabs, buttons); the waits end on what the page
shows (the jobs' ``data-state``, images in galleries, the published link). Screenshots of each
step go to ``tests/artifacts/screenshots/first-run-NN-step.png``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import NO_TIMEOUT, SCREENSHOTS, button, open_tab, wait_for_images, wait_for_job

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROJECT = "Sam Sample"
CLIENT_PASSWORD = "sam-proofs-2026"


class Shots:
    def __init__(self, page):
        self.page, self.count = page, 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def on_failure(self) -> Iterator[None]:
        """Save what the page shows when a step fails, then let the failure through."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self.take("failed")
            raise

    def take(self, step: str) -> None:
        self.count += 1
        path = SCREENSHOTS / f"first-run-{self.count:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)


def tick_all(page, elem_id: str) -> int:
    """Tick every box of a checkbox group, once each as a user does, see them all ticked, and return
    how many there are.

    No click is repeated: a box that a refresh of the page unticks is the bug this test guards
    against (the gallery listed itself again on every spurious change event of the project picker).
    """
    boxes = page.locator(f"#{elem_id} input[type=checkbox]")
    boxes.first.wait_for()
    for index in range(boxes.count()):
        boxes.nth(index).click()
    page.wait_for_function(
        "id => [...document.querySelectorAll(`#${id} input[type=checkbox]`)].every(box => box.checked)",
        arg=elem_id,
    )
    return boxes.count()


def test_a_newcomer_reaches_an_exported_lora_and_a_published_proof_gallery(
    tmp_path: Path, browser_page, start_studio
):
    data_dir = tmp_path / "data"
    assert not data_dir.exists()
    studio = start_studio(data_dir, "--demo")
    page = browser_page.new_page()
    shots = Shots(page)
    with shots.on_failure():
        page.goto(studio.url)
        page.get_by_text("Demo mode: tiny random models").wait_for()
        page.get_by_text("No projects yet").wait_for()
        shots.take("start")

        # 1. A project
        page.locator("#new-project-name").get_by_role("textbox").fill(PROJECT)
        button(page, "Create project").click()
        page.get_by_role("heading", name=PROJECT).wait_for()

        # 2. Photos: the sample photos, accepted by intake
        open_tab(page, "Photos")
        button(page, "Try it with sample photos").click()
        wait_for_images(page, "gallery-source", 4)
        wait_for_images(page, "gallery-reference", 4)
        button(page, "Try it with sample photos").wait_for(state="hidden")
        assert page.locator("#refusals").count() == 0, page.locator("#refusals").inner_text()
        shots.take("sample-photos")

        # 3. Train: the demo's tiny run, as preset
        open_tab(page, "Train")
        button(page, "Start training").click()
        wait_for_job(page, "train-progress")
        shots.take("trained")

        # 4. Generate
        open_tab(page, "Generate")
        button(page, "Generate", exact=True).click()
        wait_for_job(page, "generate-progress")
        wait_for_images(page, "generate-results", 1)
        shots.take("generated")

        # 5. Gallery: export the LoRA, publish the client gallery
        open_tab(page, "Gallery")
        wait_for_images(page, "gallery-outputs", 1)
        button(page, "Export LoRA").click()
        page.locator("#export-files").get_by_text("lora").first.wait_for(timeout=NO_TIMEOUT)
        shots.take("exported")
        page.get_by_text("Client proof gallery").click()
        ticked = tick_all(page, "proof-outputs")
        page.get_by_label("Gallery password").fill(CLIENT_PASSWORD)
        button(page, "Publish client gallery").click()
        link = page.locator("#proof-status a").first
        link.wait_for()
        assert "/proof/" in link.get_attribute("href")
        shots.take("published")

    project = data_dir / "projects" / PROJECT.replace(" ", "-")
    assert list((project / "exports").rglob("*.safetensors")), "no LoRA was exported"
    manifest = json.loads((project / "manifest.json").read_text("utf-8"))
    photos = [image["role"] for image in manifest["images"]]
    assert 4 <= photos.count("source") <= 6 and 4 <= photos.count("reference") <= 6
    assert manifest["proof"]["token"] in link.get_attribute("href")
    assert len(manifest["proof"]["outputs"]) == ticked, "a ticked portrait was unticked before publishing"
    assert not list(tmp_path.glob("*.png")), "the test supplied no photo file of its own"
