"""Shared fixtures: an isolated data root for every test and the tiny models of the demo kit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ("fixtures_faces", "fixtures_metrics", "fixtures_outputs")
"""Fixture modules: their fixtures reach every test by name, with no import in the test module."""

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
"""One torch thread in every worker and in the studios and commands the tests start (they inherit it).
The tiny models' operations are too small to split; with two threads per process on a machine whose
cores are already taken, OpenMP's threads wait on each other: the same tiny phase-2 run took 248 s
against 6 s with one thread at load average 4.5 on 2 cores."""


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data root, so nothing leaks into the user's projects."""
    home = tmp_path / "home"
    monkeypatch.setenv("MAGICAPTURE_HOME", str(home))
    monkeypatch.delenv("MAGICAPTURE_ALLOW_PICKLE", raising=False)  # restored after each test
    return home


@pytest.fixture(scope="session")
def shared_kit():
    """The demo kit in the user cache: built once on a machine (the test workers and the studios the
    browser tests start wait for one build and share it) and only read by tests."""
    from engine.demo import build_demo_kit, default_kit_folder

    return build_demo_kit(default_kit_folder())


@pytest.fixture(scope="session")
def tiny_sd(shared_kit):
    """The tiny SD 1.x pipeline (diffusers folder and single file)."""
    return shared_kit.sd


@pytest.fixture(scope="session")
def tiny_sdxl(shared_kit):
    """The tiny SDXL (diffusers folder and single file in the original SDXL layout)."""
    return shared_kit.sdxl


@pytest.fixture(scope="session")
def tiny_decoder(shared_kit) -> Path:
    """A tiny TAESD folder (random weights)."""
    return shared_kit.tiny_decoder


LONGEST_FIRST = (
    "test_bench.py",
    "test_browser.py",
    "test_first_run.py",
    "test_reliability.py",
    "test_cli.py",
    "test_train.py",
    "test_sdxl_demo.py",
    "test_preflight.py",
    "test_sdxl_training.py",
    "test_gpu_check.py",
    "test_postprocess.py",
    "test_demo_samples.py",
    "test_project_delete.py",
    "test_proof_gallery.py",
    "test_studio.py",
    "test_run_picker.py",
)
"""The files that take longest (from about 20 s to a few minutes), started first so that the workers
end together instead of one running the last long file alone."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
