"""A first run without photos of one's own: the demo's sample photos and references painted from a
prompt pass demo mode's real intake, and ``magicapture demo-project`` fills a project with them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.intake import Accepted, Refused

COMMAND = Path(sys.executable).with_name("magicapture")


def refusals(results) -> list[str]:
    return [f"{photo.filename}: {result.message}" for photo, result in results if isinstance(result, Refused)]


@pytest.fixture(params=["non-commercial", "commercial"])
def demo_face_kit(request, face_assets, demo_kit):
    """The demo's face kit in either licence mode (commercial: SFace's stand-in recognises)."""
    if request.param == "non-commercial":
        return demo_kit
    from engine.faces import load_face_kit

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAGICAPTURE_ASSETS", str(face_assets))
        return load_face_kit(commercial=True)


def test_every_sample_photo_is_accepted_and_each_role_gets_four_to_six(demo_face_kit):
    from engine.demo.samples import add_samples
    from engine.photos import photo_records
    from engine.store import ProjectStore

    project = ProjectStore().create("Sample Sam")
    outcome = add_samples(project, demo_face_kit)
    assert refusals(outcome.results) == []
    for role in ("source", "reference"):
        records = photo_records(project, role)
        assert 4 <= len(records) <= 6, role
        assert len(records) == outcome.accepted(role)
        assert all(record.accepted and record.fallback for record in records), "demo mode detects with Haar"


def test_a_small_painting_is_scaled_up_to_what_intake_accepts():
    from engine.intake.decode import MIN_SIDE
    from engine.references import painted_photo

    small = np.zeros((64, 64, 3), np.uint8)
    assert painted_photo(small, 512).shape == (512, 512, 3)
    assert painted_photo(small, 64).shape == (MIN_SIDE, MIN_SIDE, 3)
    large = np.zeros((512, 768, 3), np.uint8)
    assert painted_photo(large, 512) is large


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sdxl"])
def test_references_painted_in_demo_mode_are_accepted_with_progress_per_image(model, demo_kit, request):
    from engine.photos import photo_records
    from engine.references import ReferenceProgress, make_references
    from engine.store import ProjectStore

    project = ProjectStore().create("anna")
    events = []
    results = make_references(
        project,
        "studio headshot, grey backdrop",
        2,
        base_model=str(request.getfixturevalue(model).folder),  # SDXL: the Photos tab in `--demo sdxl`
        kit=demo_kit,
        steps=2,
        demo=True,
        on_event=events.append,
    )
    assert [type(r) for r in results] == [Accepted, Accepted], [getattr(r, "message", "") for r in results]
    assert len(photo_records(project, "reference")) == 2
    progress = [
        (e.index, e.count, e.step, e.steps, e.outcome) for e in events if isinstance(e, ReferenceProgress)
    ]
    assert progress == [
        (1, 2, 0, 2, None), (1, 2, 1, 2, None), (1, 2, 2, 2, None), (1, 2, 2, 2, "accepted"),
        (2, 2, 0, 2, None), (2, 2, 1, 2, None), (2, 2, 2, 2, None), (2, 2, 2, 2, "accepted"),
    ]  # fmt: skip


@pytest.mark.slow
def test_the_demo_project_command_fills_a_new_project_and_refuses_one_with_photos(tmp_path):
    from engine.demo import default_kit_folder

    env = {**os.environ, "MAGICAPTURE_HOME": str(tmp_path / "home")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(COMMAND), "demo-project", *args, "--kit", str(default_kit_folder())],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    done = run("Sample Sam")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert sum(line.startswith("accepted sample-selfie-") for line in lines) == 5
    assert sum(line.startswith("accepted sample-style-") for line in lines) == 5
    assert not any(line.startswith("refused") for line in lines)
    assert "5 sample selfies and 5 style references" in done.stdout
    assert f"--data-dir {tmp_path / 'home'}" in done.stdout
    photos = tmp_path / "home" / "projects" / "Sample-Sam" / "photos"
    assert len(list(photos.glob("source/*/crop.png"))) == 5
    assert len(list(photos.glob("reference/*/crop.png"))) == 5

    again = run("Sample Sam")
    assert again.returncode == 2
    assert "already has photos" in again.stderr
