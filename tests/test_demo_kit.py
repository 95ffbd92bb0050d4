"""The demo kit: built once, even when several processes or threads start at the same moment."""

from __future__ import annotations

import os
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


def test_demo_mode_runs_torch_on_one_thread(tmp_path):
    """The studio's and the CLI's demo mode: a process that had several threads is left with one."""
    import subprocess
    import sys

    script = (
        "import torch; torch.set_num_threads(2); from engine.demo import DemoKit, use_demo_kit; "
        "from pathlib import Path; p = Path('.'); use_demo_kit(DemoKit(p, None, None, p, p)); "
        "print(torch.get_num_threads())"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
