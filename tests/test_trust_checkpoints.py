"""Checkpoints and artefacts are verified before they are trusted; failed or duplicate trainings leave no clutter.

The damage is real: files on disk are truncated or have a byte flipped, and the library's own
failure (``safetensors.SafetensorError``, ``json.JSONDecodeError``) is what a resume would meet.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock
from fixtures_outputs import RUN, make_artefact
from fixtures_training import tiny_face_kit
from tiny import tiny_config

from engine import checkpoint as ckpt
from engine.artefact import ArtefactError, load_artefact
from engine.demo.portraits import make_project
from engine.events import Status, StepDone, read_events
from engine.export import export_lora
from engine.generate import generate
from engine.models import ModelLoadError, load_base
from engine.store import Project, ProjectStore
from engine.training import TrainingCancelled, TrainingError, resume_available, train

EVERY_STEP = dict(phase2_steps=1, checkpoint_every=1, keep_checkpoints=2)
"""Two phase-1 steps and one phase-2 step, a checkpoint after every step."""


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_byte(path: Path) -> None:
    """Flip one bit of the last tensor's data: the header stays valid, so the file still loads."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def resume(project: Project, tiny_sd, events: list) -> Path:
    return train(
        project,
        tiny_config(tiny_sd.folder, **EVERY_STEP),
        base=load_base(tiny_sd.folder),
        face_kit=tiny_face_kit(),
        on_event=events.append,
        resume=True,
    )


@pytest.fixture(scope="module")
def stopped(tiny_sd, tmp_path_factory) -> Path:
    """A data root whose project ``demo`` has a run cancelled after step 2 (checkpoints step-1, step-2)."""
    home = tmp_path_factory.mktemp("stopped") / "home"
    cancel = threading.Event()

    def stop_after_two(event) -> None:
        if isinstance(event, StepDone) and event.global_step == 2:
            cancel.set()

    with pytest.raises(TrainingCancelled):
        train(
            make_project(home),
            tiny_config(tiny_sd.folder, **EVERY_STEP),
            base=load_base(tiny_sd.folder),
            face_kit=tiny_face_kit(),
            on_event=stop_after_two,
            cancel=cancel,
        )
    return home


@pytest.fixture
def project(stopped: Path, isolated_home: Path) -> Project:
    """A fresh copy of the stopped project, to damage."""
    shutil.copytree(stopped, isolated_home)
    return ProjectStore(isolated_home).open("demo")


def checkpoint_folder(project: Project) -> Path:
    (entry,) = project.manifest()["trainings"]
    return project.path("trainings", entry["id"], "checkpoints")


# Item 2 and 3: a damaged newest checkpoint -------------------------------------------------------

DAMAGE: dict[str, tuple[str, Callable[[Path], None]]] = {
    "truncated-trainable": ("trainable.safetensors", truncate),
    "truncated-state": ("state.json", truncate),
    "flipped-trainable": ("trainable.safetensors", flip_byte),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_kept_aside_and_the_previous_one_resumes(project, tiny_sd, damage):
    name, spoil = DAMAGE[damage]
    folder = checkpoint_folder(project)
    run = folder.parent.name
    spoil(folder / "step-2" / name)

    events: list = []
    assert resume(project, tiny_sd, events).is_file()

    assert [e.global_step for e in events if isinstance(e, StepDone)] == [2, 3]  # went on from step-1
    assert (folder / "damaged-step-2" / name).is_file()  # kept aside, not deleted
    assert [p.name for p in ckpt.checkpoints(folder)] == ["step-2", "step-3"]  # retrained, not listed
    (note,) = [e.message for e in events if isinstance(e, Status) and "damaged" in e.message]
    for part in ("step-2", name, "damaged-step-2", "step-1", run):
        assert part in note, part
    logged = read_events(project.path("trainings", run, "events.jsonl"))
    assert note in [e.message for e in logged if isinstance(e, Status)]
    assert project.manifest()["trainings"][-1]["status"] == "finished"


def test_no_checkpoint_that_verifies_is_a_clear_training_error_and_none_is_offered_again(project, tiny_sd):
    folder = checkpoint_folder(project)
    run = folder.parent.name
    truncate(folder / "step-1" / "trainable.safetensors")
    flip_byte(folder / "step-2" / "trainable.safetensors")

    with pytest.raises(TrainingError) as failure:
        resume(project, tiny_sd, [])
    message = str(failure.value)
    for part in (run, "step-1", "step-2", "trainable.safetensors", "start a new training"):
        assert part in message, part
    assert ckpt.checkpoints(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == ["damaged-step-1", "damaged-step-2"]
    assert resume_available(project) is None


def test_checkpoints_saved_before_checksums_are_checked_by_reading_them(project):
    folder = checkpoint_folder(project)
    for path in ckpt.checkpoints(folder):
        (path / ckpt.CHECKSUMS).unlink(missing_ok=True)
    assert ckpt.newest_intact(folder) == (folder / "step-2", [])

    truncate(folder / "step-2" / "trainable.safetensors")
    start, damaged = ckpt.newest_intact(folder)
    assert start == folder / "step-1"
    assert [d.path for d in damaged] == [folder / "step-2"] and "trainable.safetensors" in damaged[0].reason


# Item 3: the artefact ----------------------------------------------------------------------------


def finished_run(root: Path, base, name: str) -> Project:
    """A project whose finished run ``run-1`` has the artefact ``name``, written as the trainer writes it."""
    project = ProjectStore(root).create("alice")
    make_artefact(project.path("trainings", RUN, name), base)

    def add_run(manifest: dict) -> None:
        manifest["trainings"].append({"id": RUN, "status": "finished", "artefact": f"trainings/{RUN}/{name}"})

    project.update(add_run)
    return project


@pytest.mark.parametrize("name", ["final.safetensors", "artefact-step-3.safetensors"])
def test_flipped_bytes_in_an_artefact_stop_generation_and_export_with_a_clear_error(base, tmp_path, name):
    project = finished_run(tmp_path / "store", base, name)
    path = project.path("trainings", RUN, name)
    flip_byte(path)

    with pytest.raises(ArtefactError) as exported:
        export_lora(project, RUN)
    with pytest.raises(ArtefactError) as generated:
        generate(project, RUN, base=base, face_kit=tiny_face_kit())
    for error in (exported.value, generated.value):
        message = str(error)
        assert str(path) in message and "preview checkpoint" in message and "train" in message, message
    assert not project.path("exports").exists() and project.manifest()["outputs"] == []


def test_an_artefact_written_before_checksums_still_loads(base, tmp_path):
    path = tmp_path / "final.safetensors"
    make_artefact(path, base)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    assert set(load_artefact(path).embeddings) == {"<sks>", "<style1>"}


# Item 11: clutter --------------------------------------------------------------------------------


def test_a_new_training_that_fails_before_its_first_checkpoint_leaves_no_run(
    isolated_home, tiny_sd, tmp_path
):
    project = make_project(isolated_home)
    config = tiny_config(tmp_path / "no-such-model", **EVERY_STEP)
    for _ in range(2):
        with pytest.raises(ModelLoadError):
            train(project, config, face_kit=tiny_face_kit())
    assert project.manifest()["trainings"] == []
    runs = project.path("trainings")
    assert not runs.exists() or list(runs.iterdir()) == []


def test_a_second_new_training_of_a_project_in_training_is_refused(isolated_home, tiny_sd):
    project = make_project(isolated_home)
    busy = project.path("trainings", "run-busy")
    busy.mkdir(parents=True)
    project.update(lambda manifest: manifest["trainings"].append({"id": "run-busy", "status": "running"}))

    with FileLock(str(busy / ".lock"), timeout=0), pytest.raises(TrainingError, match="run-busy"):
        train(
            project,
            tiny_config(tiny_sd.folder, **EVERY_STEP),
            base=load_base(tiny_sd.folder),
            face_kit=tiny_face_kit(),
        )
    assert [t["id"] for t in project.manifest()["trainings"]] == ["run-busy"]
    assert [p.name for p in project.path("trainings").iterdir()] == ["run-busy"]
