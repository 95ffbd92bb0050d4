"""Fault injection for the reliability tests: a training driver to SIGKILL, and a full disk.

Run as a script, this file trains the tiny project at ``argv[1]`` (resuming its stopped run if it
has one) with the tiny SD folder ``argv[2]``; ``argv[3]`` names a point where it stops and waits
to be killed (see `FAULTS`). When it reaches that point it creates ``paused`` in the data root
and sleeps; the test then sends SIGKILL. Every checkpoint file the trainer reads is appended to
``reads.log`` in the data root, so a test can check that no half-written file was ever read. The fault
``manifest`` trains nothing: it adds an image entry to the manifest and stops half-way through
writing it.

`disk_full` makes every write under a folder fail with ENOSPC, as a full disk does: writes through
Python's ``open`` (so Pillow, NumPy, JSON, the event log) and safetensors' own writer. Creating,
truncating, reading, renaming and deleting files still work.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PAUSED = "paused"
READS = "reads.log"
FAULTS = (
    "none",
    "after-step:N",  # StepDone of global step N sent, its checkpoint not yet written
    "half-file:NAME@N",  # NAME of checkpoint step-N half written in its temporary file
    "commit:N",  # checkpoint step-N complete in its staging folder, not yet renamed
    "half-file:final.safetensors",  # the artefact half written
    "slow-after:N",  # sleep 5 s after each step from N on (bounds progress for a timed kill)
    "manifest",  # no training: a manifest update half written
)


def training_config(base_folder: str | Path):
    """Three phase-1 and three phase-2 steps; checkpoints at steps 2, 3, 4 and 6."""
    from tiny import tiny_config

    return tiny_config(base_folder, phase1_steps=3, phase2_steps=3, checkpoint_every=2, keep_checkpoints=2)


def scratch(project_root: Path) -> Path:
    """Where the driver leaves its marker and read log: the data root holding the project."""
    return Path(project_root).parent.parent


def _pause(project_root: Path) -> None:
    (scratch(project_root) / PAUSED).write_text(str(os.getpid()))
    while True:
        time.sleep(60)


def _install_fault(fault: str, project_root: Path):
    """Patch the point named by ``fault``; returns the event callback to pass to `train`."""
    from engine import store

    kind, _, where = fault.partition(":")
    name, _, step = where.rpartition("@") if "@" in where else (where, "", "")

    if kind == "half-file":
        import safetensors.torch

        original_save = safetensors.torch.save_file

        def save_file(tensors, filename, metadata=None):
            original_save(tensors, filename, metadata=metadata)
            target = Path(filename)
            in_step = not step or f".tmp-step-{step}" in target.parent.name
            if in_step and target.name.startswith(f".{name}."):
                data = target.read_bytes()
                target.write_bytes(data[: len(data) // 2])
                _pause(project_root)

        safetensors.torch.save_file = save_file
    elif kind == "commit":
        from engine import checkpoint

        original_commit = checkpoint.commit

        def commit(path, step_, keep, *args, **kwargs):
            if path.name == f".tmp-step-{where}":
                _pause(project_root)
            return original_commit(path, step_, keep, *args, **kwargs)

        checkpoint.commit = commit
    elif kind == "manifest":
        real_open = builtins.open

        class HalfWriter(io.FileIO):
            def write(self, data) -> int:
                super().write(bytes(data)[: len(data) // 2])
                self.flush()
                _pause(project_root)

        def manifest_open(file, mode="r", *args, **kwargs):
            if "w" in mode and store.MANIFEST in Path(os.fsdecode(file)).name:
                return HalfWriter(file, "w")
            return real_open(file, mode, *args, **kwargs)

        builtins.open = manifest_open

    def on_event(event) -> None:
        done = event.global_step if type(event).__name__ == "StepDone" else None
        if kind == "after-step" and done == int(where):
            _pause(project_root)
        if kind == "slow-after" and done is not None and done >= int(where):
            time.sleep(5)

    return on_event


def _record_reads(log: Path) -> None:
    """Append the path of every checkpoint file the trainer opens to ``log``."""
    from engine import checkpoint

    def logged(function):
        def read(path, *args, **kwargs):
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(f"{path}\n")
            return function(path, *args, **kwargs)

        return read

    checkpoint.load_tensors = logged(checkpoint.load_tensors)
    checkpoint.read_json = logged(checkpoint.read_json)


def main(project_root: str, base_folder: str, fault: str) -> None:
    from engine.store import Project

    project = Project(Path(project_root))
    on_event = _install_fault(fault, project.root)
    if fault == "manifest":
        project.update(lambda manifest: manifest["images"].append({"id": "new"}))
        return
    from fixtures_training import tiny_face_kit

    from engine.training import resume_available, train

    _record_reads(scratch(project.root) / READS)
    resume = resume_available(project) is not None
    path = train(
        project, training_config(base_folder), on_event=on_event, resume=resume, face_kit=tiny_face_kit()
    )
    print(f"ARTEFACT {path}", flush=True)


class _FullFile:
    """A file opened for writing on a full disk: it was created (or truncated), but writes fail."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", self._handle.name)

    def fileno(self) -> int:  # writers that use the descriptor directly must come through write()
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


@contextlib.contextmanager
def disk_full(folder: Path) -> Iterator[dict[str, Any]]:
    """Yields a ``state``: while ``state["full"]`` is true, writing to any file under ``folder`` fails
    with ENOSPC (opening, creating and truncating still work, as on a real full disk); with
    ``state["writes_left"] = n`` the disk fills up after ``n`` more files were opened for writing."""
    import safetensors.torch

    folder = Path(folder).resolve()
    state: dict[str, Any] = {"full": False, "writes_left": None}
    real_open, real_save = builtins.open, safetensors.torch.save_file

    def full_now(path) -> bool:
        if isinstance(path, int):
            return False
        resolved = Path(os.fsdecode(path)).resolve()
        if resolved != folder and folder not in resolved.parents:
            return False
        if state["writes_left"] is not None:
            state["full"] = state["full"] or state["writes_left"] <= 0
            state["writes_left"] -= 1
        return state["full"]

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if any(flag in mode for flag in "wax") and full_now(file):
            return _FullFile(handle)
        return handle

    def full_save(tensors, filename, metadata=None):
        if full_now(filename):
            real_open(filename, "wb").close()
            raise OSError(errno.ENOSPC, "No space left on device", os.fsdecode(filename))
        return real_save(tensors, filename, metadata=metadata)

    builtins.open = io.open = full_open
    safetensors.torch.save_file = full_save
    try:
        yield state
    finally:
        builtins.open = io.open = real_open
        safetensors.torch.save_file = real_save


if __name__ == "__main__":
    main(*sys.argv[1:4])
