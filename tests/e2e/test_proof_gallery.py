"""The client proof gallery in Chromium: published from the studio, used by a client, and nothing more.

Starts ``magicapture-studio --demo --auth ...`` on a data folder that already holds two projects
with portraits (one with its own gallery), publishes a gallery of the first from the studio's
Gallery tab, then plays the client in a separate browser context. Screenshots go to
``tests/artifacts/screenshots/proof-NN-step.png``.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from harness import SCREENSHOTS, UI_TIMEOUT_MS

from engine import proofs
from engine.store import ProjectStore
from studio.reach import lan_hosts

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STUDIO_LOGIN = ("photographer", "studio-pass-7")
CLIENT_PASSWORD = "anna-proofs-2024"
BEN_PASSWORD = "ben-proofs-2024"


def portrait(index: int) -> np.ndarray:
    """A soft two-colour gradient with a pale oval, so each proof looks different in the screenshots."""
    height, width = 160, 128
    y, x = np.mgrid[0:height, 0:width]
    hue = np.array([[90, 110, 160], [160, 110, 90], [90, 150, 110], [150, 90, 150], [120, 120, 120]])[
        index % 5
    ]
    image = (hue[None, None, :] * (0.6 + 0.4 * y[..., None] / height)).astype(np.uint8)
    face = ((x - width / 2) / 30) ** 2 + ((y - height / 2.2) / 40) ** 2 <= 1
    image[face] = (232, 196, 170)
    return image


def add_outputs(project, count: int) -> list[str]:
    from engine.outputs import OutputRecord, add_output

    ids = []
    for index in range(count):
        output_id = f"{project.name.lower()}-portrait-{index + 1}"
        record = OutputRecord(
            id=output_id, file=f"outputs/{output_id}.png", seed=index, params={"prompt": "a photo of <sks>"},
            run="run-1", identity=round(0.8 - index / 10, 2), created="2025-01-01T00:00:00+00:00",
        )  # fmt: skip
        add_output(project, portrait(index), record, "a photo of <sks> person, Steps: 50")
        ids.append(output_id)
    return ids


def tick(choices, seeds: list[int]) -> None:
    """Check the boxes of the portraits with these seeds and see them stay checked.

    Opening the tab refreshes the list once per trigger (project and tab); a refresh that lands
    after a click redraws the boxes unchecked, so a box found unchecked is clicked again.
    """
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        boxes = [
            choices.locator("label", has_text=re.compile(rf"\bseed {seed}\b")).locator("input")
            for seed in seeds
        ]
        unchecked = [box for box in boxes if not box.is_checked()]
        if not unchecked:
            time.sleep(1.0)
            if all(box.is_checked() for box in boxes):
                return
            continue
        for box in unchecked:
            box.click()
    raise AssertionError(f"The boxes of seeds {seeds} did not stay checked.")


class Shots:
    def __init__(self):
        self.count = 0
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(self, page, step: str) -> None:
        self.count += 1
        page.screenshot(path=str(SCREENSHOTS / f"proof-{self.count:02d}-{step}.png"), full_page=True)


def test_a_client_marks_two_favourites_and_reaches_nothing_else(tmp_path, chromium, start_studio):
    data = tmp_path / "data"
    store = ProjectStore(data)
    ben = store.create("Ben")
    ben_ids = add_outputs(ben, 2)
    ben_link = f"/proof/{proofs.publish(ben, ben_ids, BEN_PASSWORD).token}/"
    anna = store.create("Anna Smith")
    anna_ids = add_outputs(anna, 4)
    studio = start_studio(data, "--demo", "--listen", "--auth", ":".join(STUDIO_LOGIN))
    shots = Shots()
    # The photographer publishes three of Anna's four portraits from the Gallery tab.
    photographer = chromium.new_context(viewport={"width": 1360, "height": 1000})
    photographer.set_default_timeout(UI_TIMEOUT_MS)
    page = photographer.new_page()
    page.goto(studio.url)
    page.get_by_label("username").fill(STUDIO_LOGIN[0])
    page.get_by_label("password").fill(STUDIO_LOGIN[1])
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="5 · Gallery").click()
    page.get_by_text("Client proof gallery").click()
    choices = page.locator("#proof-outputs")
    tick(choices, [0, 1, 2])
    page.locator("#proof-password input").fill(CLIENT_PASSWORD)
    page.locator("#proof-publish").click()
    link = page.locator("#proof-status a").first
    link.wait_for()
    address = link.get_attribute("href")
    # --listen: the link uses this computer's network address, which the client can open
    hosts = lan_hosts()
    base = f"http://{hosts[0]}:{studio.port}" if hosts else studio.url
    assert re.fullmatch(rf"{re.escape(base)}/proof/[A-Za-z0-9_-]{{20,64}}/", address), address
    if hosts:
        assert f"On your network: {base}" in studio.log.read_text()
        page.locator("#proof-reach").get_by_text("same network").wait_for()
    shots.take(page, "published")

    # The client: a separate browser, only the link and its password.
    client = chromium.new_context(viewport={"width": 1200, "height": 900})
    client.set_default_timeout(UI_TIMEOUT_MS)
    view = client.new_page()
    view.goto(address)
    view.get_by_text("Enter the password your photographer gave you").wait_for()
    shots.take(view, "client-login")
    view.locator("#password").fill(STUDIO_LOGIN[1])
    view.locator("#proof-login").click()
    view.locator("#proof-error").wait_for()
    assert view.locator("img").count() == 0
    shots.take(view, "wrong-password")
    view.locator("#password").fill(CLIENT_PASSWORD)
    view.locator("#proof-login").click()
    view.get_by_text("Proofs for Anna Smith").first.wait_for()
    view.wait_for_function("() => [...document.images].every(img => img.complete && img.naturalWidth > 0)")
    shown = [img.get_attribute("src") for img in view.locator("figure img").all()]
    assert shown == [f"image/{output}" for output in anna_ids[:3]]
    assert [" ".join(label.inner_text().split()) for label in view.locator("figure label").all()] == [
        f"Portrait {number} · ♥ Favourite" for number in (1, 2, 3)
    ]
    shots.take(view, "gallery")
    view.locator(f"input[value='{anna_ids[0]}']").check()
    view.locator(f"input[value='{anna_ids[2]}']").check()
    view.locator("#note").fill("The first and the third, please. Could the third be a little brighter?")
    view.locator("#proof-save").click()
    view.locator("#proof-saved").get_by_text("Saved: 2 favourites and your note").wait_for()
    assert view.locator("input[name='favourite']:checked").count() == 2
    shots.take(view, "favourites-saved")
    picks = anna.manifest()["proof"]["picks"]
    assert picks["favourites"] == [anna_ids[0], anna_ids[2]]
    assert picks["note"].startswith("The first and the third")

    # Nothing else opens for the client: not the studio, not other files, not Ben's gallery.
    view.goto(studio.url)
    view.get_by_label("username").fill("Anna Smith")
    view.get_by_label("password").fill(CLIENT_PASSWORD)
    view.get_by_role("button", name="Login").click()
    view.get_by_text("Incorrect credentials").wait_for()
    shots.take(view, "studio-refuses-the-gallery-password")
    hidden = data.resolve() / "projects" / "Anna-Smith" / "outputs" / f"{anna_ids[3]}.png"
    for path in ("/config", f"/gradio_api/file={hidden}", "/gradio_api/info"):
        assert view.request.get(f"{studio.url}{path}").status == 401, path
    gallery_path = address.removeprefix(base)
    for output in (anna_ids[3], ben_ids[0]):
        assert view.request.get(f"{address}image/{output}").status == 404, output
    assert view.request.get(f"{address}image/{anna_ids[0]}").status == 200
    view.goto(f"{studio.url}{ben_link}")
    view.get_by_text("Proofs for Ben").wait_for()
    view.locator("#password").fill(CLIENT_PASSWORD)
    view.locator("#proof-login").click()
    view.locator("#proof-error").wait_for()
    assert view.locator("img").count() == 0
    shots.take(view, "other-gallery-refused")
    cookies = client.cookies()
    assert [c["path"] for c in cookies] == [gallery_path], cookies

    # The photographer sees the picks.
    page.get_by_role("tab", name="4 · Generate").click()
    page.get_by_role("tab", name="5 · Gallery").click()
    status = page.locator("#proof-status")
    status.get_by_text("Client's picks").wait_for()
    assert (
        "2 favourite(s): portraits 1, 3." in status.inner_text()
        and "a little brighter" in status.inner_text()
    )
    assert anna_ids[0] not in status.inner_text()
    picks_shown = page.locator("#proof-picks")
    picks_shown.get_by_text("Portrait 3").wait_for()
    assert picks_shown.locator("img").count() == 2
    page.locator("#gallery-outputs").get_by_text("client favourite").first.wait_for()
    shots.take(page, "photographer-sees-picks")
