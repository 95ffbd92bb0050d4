"""The browser tests' harness: the studio as a process, and load-proof waits.

Waits end on what the page shows or what the studio writes, never on a wall-clock budget sized for
a quiet machine: a busy machine only makes them slower. A studio that exits while a test waits
fails the wait at once, and every studio a test starts is stopped, with its whole process group,
when the test ends, passed or failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
UI_TIMEOUT_MS = 120_000
"""For what the page shows after a click: well over ten times what it takes on a quiet machine."""
NO_TIMEOUT = 0
"""Playwright's "wait as long as it takes", for jobs (training, generation, exports): pytest-timeout
is the guard against a hang."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StudioProcess:
    """One ``magicapture-studio`` process on a data folder, in a process group of its own."""

    def __init__(self, data_dir: Path, log: Path, *extra: str):
        self.data_dir, self.log, self.extra = data_dir, log, list(extra)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the studio and return once it answers; fail at once if it exits first."""
        command = [sys.executable, "-c", "import app, sys; sys.exit(app.main())", "--no-browser"]
        command += ["--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra]
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        while True:
            self.check_alive()
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url, timeout=5).status_code in (200, 401):
                    return
            time.sleep(0.5)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"The studio exited with {self.process.returncode}:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL the whole group: no clean-up at all, as in a crash or a power cut."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """Terminate the group, then kill what is left of it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def open_tab(page, label: str) -> None:
    """Click the studio's tab labelled ``label``."""
    page.get_by_role("tab", name=label).click()


def button(page, label: str, exact: bool = False):
    """The button a user sees labelled ``label``."""
    return page.get_by_role("button", name=label, exact=exact)


def wait_for_images(page, elem_id: str, count: int = 1) -> None:
    """Wait until ``count`` images of the gallery ``elem_id`` have loaded."""
    page.wait_for_function(
        "([id, n]) => [...document.querySelectorAll(`#${id} img`)]"
        ".filter(img => img.complete && img.naturalWidth > 0).length >= n",
        arg=[elem_id, count],
        timeout=NO_TIMEOUT,
    )


def wait_for_job(page, elem_id: str) -> None:
    """Wait until the job shown in ``elem_id`` ends, and fail with its message unless it is done."""
    ended = ", ".join(f"#{elem_id}[data-state='{state}']" for state in ("done", "failed", "cancelled"))
    page.locator(ended).first.wait_for(timeout=NO_TIMEOUT)
    shown = page.locator(f"#{elem_id}")
    assert shown.get_attribute("data-state") == "done", shown.inner_text()
