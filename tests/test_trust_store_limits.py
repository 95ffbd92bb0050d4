"""Trust in the store at its limits: an event log on a real full disk, names whose folder form is long
in bytes (CJK, emoji), and a project deletion cut short by a crash.

The full disk is a real 64 KiB tmpfs, mounted as root (the tests run as root) and unmounted after
each test, passed or failed; a failed mount fails the test, it never skips it.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures_outputs import RUN, add_photo_output
from fixtures_training import tiny_face_kit
from tiny import tiny_config

from engine.errors import UserError
from engine.events import EventLog, Status, read_events
from engine.store import InvalidName, ProjectStore, StorageFull, safe_name
from studio.jobs import is_user_error

CJK = "漢"
"""A letter of three bytes in UTF-8."""
WIDE = "𠮷"
"""A letter of four bytes in UTF-8 (outside the Basic Multilingual Plane)."""
EMOJI = "📷"
"""Four bytes, not a letter: kept in the name as typed, left out of its folder."""
MAX_COMPONENT = 255
"""Bytes of one path component on Linux file systems (ext4, tmpfs, btrfs, xfs)."""


# -- a real full disk under the event log ---------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty 64 KiB tmpfs; a mount that fails fails the test."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], check=True, capture_output=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def _fill(folder: Path) -> Path:
    """Write zeros into ``folder/filler`` until the disk refuses more; returns the filler."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_an_event_log_on_a_full_disk_raises_storage_full_and_keeps_its_lines(small_disk):
    log = EventLog(small_disk / "run" / "events.jsonl")
    for index in range(3):
        log.append(Status(message=f"stage {index}"))
    before = log.path.read_bytes()
    filler = _fill(small_disk)
    big = Status(message="a long report " * 1000)  # needs pages the full disk no longer has

    with pytest.raises(StorageFull) as full:
        log.append(big)

    assert is_user_error(full.value)
    assert str(log.path.parent) in str(full.value) and "free some space" in str(full.value)
    assert isinstance(full.value.__cause__, OSError) and full.value.__cause__.errno == errno.ENOSPC
    assert log.path.read_bytes() == before  # no half line left behind
    filler.unlink()
    log.append(big)
    assert [e.message for e in read_events(log.path)] == ["stage 0", "stage 1", "stage 2", big.message]


def test_a_training_whose_disk_is_full_stops_with_storage_full(small_disk, tiny_sd):
    from engine.training import train

    store = ProjectStore()
    project = store.create("Anna Smith")
    trainings = project.path("trainings")
    trainings.mkdir()
    subprocess.run(["mount", "--bind", str(small_disk), str(trainings)], check=True, capture_output=True)
    try:
        _fill(small_disk)
        with pytest.raises(StorageFull) as full:
            # base=None: the first event ("Loading ...") is written before the model loads
            train(project, tiny_config(tiny_sd.folder), face_kit=tiny_face_kit())
    finally:
        subprocess.run(["umount", "-l", str(trainings)], check=False, capture_output=True)
    assert isinstance(full.value, UserError)  # the CLI prints its one line
    assert is_user_error(full.value)  # the studio logs one line, no traceback
    assert str(trainings) in str(full.value) and "is full" in str(full.value)
    assert (
        project.manifest()["trainings"] == []
    )  # a run that failed before its first checkpoint leaves no trace


# -- names whose folder form is long in bytes ------------------------------------------------------


def _longest(letters: str) -> str:
    """The longest repetition of ``letters`` that the store takes as a name."""
    name = letters
    while True:
        try:
            safe_name(name + letters)
        except InvalidName:
            return name
        name += letters


def _components(root: Path) -> list[str]:
    return [part for path in root.rglob("*") for part in path.relative_to(root).parts]


@pytest.mark.parametrize(
    "name",
    [CJK * 80, WIDE * 64, f"Anna {WIDE * 60} {EMOJI}", EMOJI + CJK * 79],
    ids=["80 CJK", "64 four-byte", "latin, four-byte and emoji", "emoji and 79 CJK"],
)
def test_a_name_too_long_in_bytes_is_refused_with_a_sentence(name):
    store = ProjectStore()
    for action in (store.create, store.open, store.delete):
        with pytest.raises(InvalidName, match="bytes") as refused:
            action(name)
        assert str(refused.value).endswith("Choose a shorter name.")
    assert store.list() == []
    assert not store.projects_dir.exists() or list(store.projects_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("letters", "typed"),
    [(CJK, "{}"), (WIDE, "{}"), (CJK, f"{EMOJI} {{}} {EMOJI}")],
    ids=["CJK", "four-byte", "CJK between emoji"],
)
def test_the_longest_name_fits_every_path_the_app_makes_of_it(letters, typed, lora):
    from engine.export import export_embeddings, export_lora, export_outputs_zip

    name = typed.format(_longest(letters))
    store = ProjectStore()
    project = store.create(name)
    artefact = project.path("trainings", RUN, "final.safetensors")
    artefact.parent.mkdir(parents=True)
    artefact.write_bytes(lora.path.read_bytes())
    finished = {"id": RUN, "status": "finished", "artefact": f"trainings/{RUN}/final.safetensors"}
    project.update(lambda manifest: manifest["trainings"].append(finished))
    add_photo_output(project, np.zeros((64, 64, 3), np.uint8))

    made = [
        export_lora(project, RUN, "a1111"),
        export_lora(project, RUN, "diffusers"),
        *export_embeddings(project, RUN),
        export_outputs_zip(project, ["photo"]),
    ]

    assert all(path.is_file() and path.name.startswith(project.root.name) for path in made)
    assert max(len(part.encode("utf-8")) for part in _components(store.root)) <= MAX_COMPONENT
    assert store.open(name).manifest()["name"] == name
    store.delete(name)
    assert store.list() == [] and list(store.projects_dir.iterdir()) == []


def test_two_long_names_differing_in_their_last_letter_keep_two_folders():
    store = ProjectStore()
    stem = _longest(CJK)[:-1]
    first, second = store.create(stem + CJK), store.create(stem + "字")
    assert first.root != second.root
    assert store.list() == sorted([stem + CJK, stem + "字"])


# -- a deletion cut short --------------------------------------------------------------------------


def _crash_mid_delete(store: ProjectStore, name: str) -> Path:
    """What `ProjectStore.delete` leaves when the process dies between its rename and its removal."""
    project = store.open(name)
    trash = project.root.with_name(f".deleting-{project.root.name}.{os.urandom(4).hex()}")
    os.replace(project.root, trash)
    return trash


def test_a_deletion_cut_short_is_finished_when_the_store_is_opened():
    store = ProjectStore()
    store.create("Anna Smith").update(lambda manifest: manifest["images"].append({"id": "photo"}))
    trash = _crash_mid_delete(store, "Anna Smith")

    reopened = ProjectStore(store.root)

    assert not trash.exists()
    assert reopened.list() == [] and list(reopened.projects_dir.iterdir()) == []
    assert reopened.create("Anna Smith").manifest()["images"] == []


def test_a_leftover_of_a_deletion_neither_shows_nor_blocks_the_same_name():
    store = ProjectStore()
    store.create("Anna Smith")
    trash = _crash_mid_delete(store, "Anna Smith")  # another process crashed while this one runs
    assert store.list() == []

    _crash_mid_delete(store, store.create("Anna Smith").name)
    assert store.create("Anna Smith").manifest()["name"] == "Anna Smith"
    store.delete("Anna Smith")
    assert store.list() == [] and trash.exists()  # listing never removes: it would wait on a deletion
    assert ProjectStore(store.root).list() == [] and list(store.projects_dir.iterdir()) == []


def test_listing_during_a_deletion_does_not_wait_for_its_removal(monkeypatch):
    """A studio lists projects on every page; another thread's deletion of a big project takes its time."""
    import shutil
    import threading

    store = ProjectStore()
    store.create("Anna Smith")
    store.create("Ben Jones")
    removing, release = threading.Event(), threading.Event()
    remove = shutil.rmtree

    def slow_rmtree(path, *args, **kwargs):
        removing.set()
        assert release.wait(60), "the listing never returned"
        return remove(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", slow_rmtree)
    deleting = threading.Thread(target=store.delete, args=("Anna Smith",))
    deleting.start()
    assert removing.wait(60)
    listed = store.list()  # before the removal ends: it must not remove (or wait for) the folder itself
    release.set()
    deleting.join(60)
    assert listed == ["Ben Jones"] and store.list() == ["Ben Jones"]
