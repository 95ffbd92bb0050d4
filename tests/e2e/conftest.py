"""Fixtures of the browser tests: studios stopped after every test, and Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CHROMIUM, UI_TIMEOUT_MS, StudioProcess


@pytest.fixture
def start_studio(tmp_path: Path) -> Iterator:
    """``start_studio(data_dir, *flags)`` starts a studio; all of them are stopped after the test."""
    started: list[StudioProcess] = []

    def start(data_dir: Path, *extra: str) -> StudioProcess:
        studio = StudioProcess(data_dir, tmp_path / f"studio-{len(started)}.log", *extra)
        started.append(studio)
        studio.start()
        return studio

    yield start
    for studio in started:
        studio.stop()


@pytest.fixture
def chromium():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: apt-get install -y chromium (scripts/test.sh does it).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium):
    """A browser context whose waits for the page allow a machine many times slower than a quiet one."""
    context = chromium.new_context(viewport={"width": 1360, "height": 1000})
    context.set_default_timeout(UI_TIMEOUT_MS)
    yield context
    context.close()
