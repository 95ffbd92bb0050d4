"""The ``magicapture`` console script end to end on the tiny kit: prepare, train, generate, export, eval.

Each step is the installed command in its own process, as a user (or a script) runs it, with the
demo kit's models and a private data folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_faces import astronaut
from PIL import Image

COMMAND = Path(sys.executable).with_name("magicapture")


def _photo(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path, quality=95)
    return path


@pytest.fixture(scope="module")
def magicapture(tmp_path_factory: pytest.TempPathFactory):
    """Runs ``magicapture ARGS`` with the demo kit's models; returns the finished process."""
    folder = tmp_path_factory.mktemp("cli")
    env = {
        **os.environ,
        "MAGICAPTURE_HOME": str(folder / "home"),
        "MAGICAPTURE_ASSETS": str(folder / "kit" / "assets"),
        "MAGICAPTURE_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(folder / "cache"),
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(COMMAND), *args],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if check:
            assert done.returncode == 0, (args, done.stderr[-3000:])
        return done

    run.folder = folder  # type: ignore[attr-defined]
    return run


@pytest.mark.slow
def test_the_command_prepares_trains_generates_exports_and_evaluates(magicapture) -> None:
    folder: Path = magicapture.folder
    built = magicapture("demo-models", str(folder / "kit"))
    assert "tiny SD 1.x folder" in built.stdout and (folder / "kit" / "COMPLETE").is_file()
    face = astronaut()
    selfies = [_photo(folder / "a.jpg", face), _photo(folder / "b.jpg", face[:, ::-1].copy())]
    style = _photo(folder / "style.jpg", np.ascontiguousarray(face[..., ::-1]))

    prepared = magicapture("prepare", "anna", *map(str, selfies), "--role", "source")
    assert prepared.stdout.splitlines() == ["accepted a.jpg", "accepted b.jpg"]
    assert "Warning" not in prepared.stderr, prepared.stderr  # insightface's skimage FutureWarning was here
    assert "Using the offline fallback face detector (Haar cascades)." in prepared.stderr.splitlines()
    assert (
        magicapture("prepare", "anna", str(style), "--role", "reference").stdout.strip()
        == "accepted style.jpg"
    )

    trained = magicapture(
        "train", "anna", "--preset", "fast", "--base", str(folder / "kit" / "sd"), "--profile", "cpu",
        "--set", "phase1_steps=2", "--set", "phase2_steps=2", "--set", "preview_every=0",
        "--set", "checkpoint_every=100", "--set", "identity_weight=0",
    )  # fmt: skip
    [artefact] = map(Path, trained.stdout.splitlines())  # progress goes to stderr, the result to stdout
    assert artefact.name == "final.safetensors" and artefact.is_file()
    assert "Pre-flight estimate" in trained.stderr and "phase 2" in trained.stderr

    generated = magicapture("generate", "anna", "--n", "2", "--steps", "2", "--seed", "7")
    images = [Path(line) for line in generated.stdout.splitlines()]
    assert len(images) == 2 and all(path.suffix == ".png" and path.is_file() for path in images)
    with Image.open(images[0]) as image:
        assert "Seed: 7" in image.info["parameters"]

    exported = magicapture("export", "anna", "--format", "a1111")
    paths = [Path(line) for line in exported.stdout.splitlines()]
    assert paths and all(path.is_file() for path in paths)
    assert paths[0].suffix == ".safetensors"
    assert paths[-1].name == "README.txt"  # the usage note: the words and strengths for each tool

    report = magicapture("eval", "anna").stdout
    identity = "CSIM (ArcFace, trained against) | CSIM (SFace, independent)"
    assert f"| faces | {identity} | style | aesthetic |" in report, report
    [row] = [line for line in report.splitlines() if line.startswith("| run-")]
    n, faces, csim, independent, style, aesthetic = row.strip("| ").split(" | ")[2:]
    assert n == "2" and 0 <= int(faces) <= 2, row
    assert all(-1.0 <= float(value) <= 1.0 for value in (csim, independent, style)), row
    assert 0.0 <= float(aesthetic) <= 10.0, row


def test_a_missing_project_is_a_clear_error_and_exit_code_2(magicapture) -> None:
    done = magicapture("train", "nobody", check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "nobody" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_setting_without_a_value_is_refused_before_any_work(magicapture) -> None:
    done = magicapture("train", "anna", "--set", "phase1_steps", check=False)
    assert done.returncode != 0 and "--set takes key=value" in done.stderr
