"""Trust in the store at its limits: an event log on a real full disk.

The full disk is a real 64 KiB tmpfs, mounted as root (the tests run as root) and unmounted after
each test, passed or failed; a failed mount fails the test, it never skips it.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_training import tiny_face_kit
from tiny import tiny_config

from engine.errors import UserError
from engine.events import EventLog, Status, read_events
from engine.store import ProjectStore, StorageFull
from studio.jobs import is_user_error

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
