"""Deleting a project in Chromium (issue 16): no red "Error" badge on the confirmation box, and no
"not in the list of choices" error while the tabs' timers send the picker's value every second.

Screenshots go to ``tests/artifacts/screenshots/delete-NN-step.png``.
"""

from __future__ import annotations

import pytest
from harness import SCREENSHOTS

from engine.store import ProjectStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_delete_warns_without_the_box_and_leaves_a_valid_picker(tmp_path, browser_page, start_studio):
    data = tmp_path / "data"
    store = ProjectStore(data)
    store.create("Ben's wedding")
    store.create("Jane Doe headshots")  # the newest: the studio opens it on load
    studio = start_studio(data, "--demo")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser_page.new_page()
    page.goto(studio.url)
    picker = page.locator("#project-picker")
    page.locator("#project-summary").get_by_text("Jane Doe headshots").wait_for()
    page.get_by_text("Delete the open project").click()

    page.get_by_role("button", name="Delete project").click()
    page.get_by_text("Tick the box to confirm").wait_for()
    page.screenshot(path=str(SCREENSHOTS / "delete-01-unticked.png"), full_page=True)
    assert page.locator(".error").filter(has_text="Error").count() == 0, "the box shows an error badge"
    assert store.list() == ["Ben's wedding", "Jane Doe headshots"]

    page.get_by_label("Yes, delete it").check()
    page.get_by_role("button", name="Delete project").click()
    page.get_by_text("Project Jane Doe headshots deleted.").wait_for()
    page.locator("#project-summary").get_by_text("Pick a project").wait_for()
    # three ticks of the tabs' one-second timers: each sends the picker's value
    for _ in range(3):
        with page.expect_response(lambda response: "/gradio_api/queue/join" in response.url):
            pass
    page.screenshot(path=str(SCREENSHOTS / "delete-02-deleted.png"), full_page=True)
    assert "not in the list of choices" not in page.locator("body").inner_text()
    assert store.list() == ["Ben's wedding"]
    picker.locator("input").click()
    assert page.get_by_role("option").all_inner_texts() == ["Ben's wedding"]
