"""The Generate tab's run picker in Chromium: an older run the user picks stays picked when the tab is
visited again (its select event lists the runs again, as the project picker's repeated change events
do), while a run finished meanwhile is offered.

Screenshots go to ``tests/artifacts/screenshots/run-picker-NN-step.png``.
"""

from __future__ import annotations

import re

import pytest
from harness import SCREENSHOTS
from test_generate_tab import add_runs

from engine.store import ProjectStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_an_older_run_stays_picked_across_tab_visits(tmp_path, browser_page, start_studio):
    data = tmp_path / "data"
    project = ProjectStore(data).create("anna")
    add_runs(project, {"run-old": None, "run-new": None})
    studio = start_studio(data)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser_page.new_page()
    page.goto(studio.url)
    page.locator("#project-summary").get_by_text("anna").first.wait_for()
    page.get_by_role("tab", name="Generate").click()
    picked = page.locator("#generate-run input")
    page.wait_for_function("() => document.querySelector('#generate-run input')?.value.startsWith('Run 2 ')")

    picked.click()
    page.get_by_role("option", name=re.compile("Run 1 ")).click()
    page.wait_for_function("() => document.querySelector('#generate-run input').value.startsWith('Run 1 ')")
    for tab in ("Photos", "Gallery", "Project"):
        page.get_by_role("tab", name=tab).click()
    add_runs(project, {"run-newer": None}, {"run-newer": "2026-12-04T08:00:00+00:00"})  # finished meanwhile
    page.get_by_role("tab", name="Generate").click()
    picked.click()
    page.get_by_role("option", name=re.compile("Run 3 ")).wait_for()  # the tab listed the runs again
    page.keyboard.press("Escape")
    page.screenshot(path=str(SCREENSHOTS / "run-picker-01-after-visits.png"), full_page=True)
    assert picked.input_value().startswith("Run 1 "), picked.input_value()
