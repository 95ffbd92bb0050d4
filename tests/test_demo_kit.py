"""The demo kit: built once, even when several processes or threads start at the same moment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import engine.demo
from engine.demo import faces, restore, scoring


def test_builders_starting_together_build_the_kit_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builders start at once on an empty folder; the model builders are slow stand-ins that count."""
    builds = []

    def slow_build(folder: Path) -> engine.demo.TinySD:
        builds.append(folder)
        time.sleep(0.5)  # a real build takes seconds: long enough for the other builder to arrive
        return engine.demo.TinySD(Path(folder) / "sd", Path(folder) / "sd-tiny.safetensors")

    monkeypatch.setattr(engine.demo, "build_tiny_sd", slow_build)
    monkeypatch.setattr(engine.demo, "build_tiny_decoder", lambda folder: None)
    for module, name in (
        (faces, "build_face_assets"),
        (restore, "build_restore_assets"),
        (scoring, "build_scoring_assets"),
    ):
        monkeypatch.setattr(module, name, lambda folder: None)
    start = threading.Barrier(2)
    kits, errors = [], []

    def build() -> None:
        start.wait()
        try:
            kits.append(engine.demo.build_demo_kit(tmp_path / "kit"))
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(builds) == 1, "both builders wrote the kit's files at the same time"
    assert kits[0] == kits[1] and (tmp_path / "kit" / "COMPLETE").read_text() == engine.demo.KIT_VERSION
