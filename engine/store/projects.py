"""Projects: a folder under the data root with a locked JSON manifest (the previous one kept), and the
store that creates, opens, lists and deletes them by the name they were created with."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from engine.store.errors import (
    InvalidName,
    ManifestRecovered,
    NameTaken,
    ProjectBusy,
    StorageFull,
    StoreError,
)
from engine.store.files import atomic_write_bytes, atomic_write_json, json_bytes
from engine.store.names import inside, safe_name, same_name, typed_name

MANIFEST = "manifest.json"
PREVIOUS = "manifest.prev.json"
"""The manifest as it was before the last update: read when ``manifest.json`` does not parse."""
HOME_ENV = "MAGICAPTURE_HOME"
DELETING = ".deleting-"
"""Prefix of a project folder while it is deleted: renamed aside, then removed. What a crash between
the two leaves is hidden (a dot folder) and removed when a store is next made (the studio's at its
launch), never while listing: a listing during another thread's deletion would wait for it."""


def data_root() -> Path:
    """Folder holding all projects: ``$MAGICAPTURE_HOME`` or the platform's user data folder."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser().resolve()
    from platformdirs import user_data_path

    return user_data_path("magicapture-studio", appauthor=False).resolve()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_manifest(data: bytes) -> dict[str, Any]:
    """A manifest's bytes as a dict; raises `ValueError` saying what is wrong when they are not a JSON object."""
    if not data.strip():
        raise ValueError("the file is empty")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"byte {error.start} is not UTF-8 text") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"it is not valid JSON from line {error.lineno}, column {error.colno}") from error
    if not isinstance(value, dict):
        raise ValueError("it does not hold a JSON object")
    return value


@dataclass(frozen=True)
class _Read:
    value: dict[str, Any]
    current: bytes | None
    """The bytes of ``manifest.json`` when it parsed (what an update keeps as the previous manifest)."""
    notice: str | None = None


@dataclass(frozen=True)
class Project:
    """One client or subject: a folder with a manifest."""

    root: Path

    @cached_property
    def name(self) -> str:
        """The name the project was created with, which `ProjectStore.open` takes.

        The folder name when the manifest records no name, or one that gives another folder.
        """
        recorded = _recorded_name(self.root)
        with contextlib.suppress(InvalidName):
            if recorded is not None and safe_name(recorded) == self.root.name:
                return recorded
        return self.root.name

    def path(self, *parts: str) -> Path:
        """A path inside the project; refuses anything that would leave it."""
        return inside(self.root, *parts)

    def manifest(self) -> dict[str, Any]:
        """The manifest; when it does not parse, the previous one, with a `ManifestRecovered` warning."""
        return self._read(warn=True).value

    def manifest_notice(self) -> str | None:
        """A sentence for the user while the previous manifest stands in for a damaged one, else None."""
        return self._read().notice

    def _read(self, warn: bool = False) -> _Read:
        try:
            current = (self.root / MANIFEST).read_bytes()
        except FileNotFoundError as error:
            raise StoreError(f"Project {self.name!r} has no manifest; it may have been deleted.") from error
        try:
            return _Read(parse_manifest(current), current)
        except ValueError as error:
            damage = error
        repair = f"`magicapture projects repair {shlex.quote(self.name)}`"
        try:
            previous = parse_manifest((self.root / PREVIOUS).read_bytes())
        except (OSError, ValueError):
            raise StoreError(
                f"The manifest of project {self.name!r} is damaged ({damage}) and there is no readable "
                f"previous manifest. Run {repair} to rebuild it from the project's files."
            ) from damage
        notice = (
            f"The manifest of project {self.name!r} is damaged ({damage}), so the previous one, saved "
            f"{previous.get('updated', 'earlier')}, is used: its last change may be missing. Run {repair} "
            "to add what is on disk; the next change saves a whole manifest again."
        )
        if warn:
            warnings.warn(notice, ManifestRecovered, stacklevel=3)
        return _Read(previous, None, notice)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the project's lock (between threads and processes)."""
        with FileLock(str(self.root / ".lock"), timeout=30):
            yield

    def update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply ``change`` to the manifest under the project lock and save it atomically.

        The manifest it replaces is kept as ``manifest.prev.json``. Returns what ``change`` returned.
        If it raises, the manifest is left as it was.
        """
        with self.lock():
            read = self._read(warn=True)
            result = change(read.value)
            read.value["updated"] = now()
            self.save_manifest(read.value, previous=read.current)
            return result

    def save_manifest(self, manifest: dict[str, Any], previous: bytes | None) -> None:
        """Write ``manifest`` atomically, after ``previous`` (when given) as the previous manifest.

        Callers hold the project's lock.
        """
        if previous is not None:
            atomic_write_bytes(self.root / PREVIOUS, previous)
        atomic_write_json(self.root / MANIFEST, manifest)


def _recorded_name(folder: Path) -> str | None:
    """The name in the manifest (in the previous one when it does not parse), or None."""
    for file in (MANIFEST, PREVIOUS):
        try:
            name = parse_manifest((folder / file).read_bytes()).get("name")
        except (OSError, ValueError):
            continue
        return name if isinstance(name, str) else None
    return None


class ProjectStore:
    """All projects under one root folder."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else data_root()
        self.projects_dir = self.root / "projects"
        self._finish_deletions()

    def _finish_deletions(self) -> None:
        """Remove the folders of deletions a crash cut short (renamed aside, never removed)."""
        for trash in self.projects_dir.glob(f"{DELETING}*"):
            shutil.rmtree(trash, ignore_errors=True)

    def list(self) -> list[str]:
        """The projects' names, as `open` takes them."""
        if not self.projects_dir.is_dir():
            return []
        return sorted(
            Project(folder).name
            for folder in self.projects_dir.iterdir()
            if not folder.name.startswith(".") and (folder / MANIFEST).is_file()
        )

    def create(self, name: str) -> Project:
        """A new, empty project; refuses a name whose folder another project has."""
        folder = inside(self.projects_dir, safe_name(name))
        if (folder / MANIFEST).exists():
            existing = Project(folder).name
            if same_name(existing, name):
                raise StoreError(
                    f"A project named {existing!r} already exists; open it or choose another name."
                )
            raise NameTaken(
                f"The name {name!r} gives the folder {folder.name}, which belongs to project {existing!r}; "
                "choose another name."
            )
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "name": typed_name(name),
            "created": now(),
            "updated": now(),
            "images": [],
            "trainings": [],
            "outputs": [],
        }
        project = Project(folder)
        try:
            project.save_manifest(manifest, previous=json_bytes(manifest))
        except StorageFull:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return project

    def open(self, name: str) -> Project:
        """The project created as ``name``; refuses another name that gives the same folder."""
        folder = inside(self.projects_dir, safe_name(name))
        if not (folder / MANIFEST).is_file():
            raise StoreError(f"There is no project named {name!r}.")
        project = Project(folder)
        if not same_name(project.name, name):
            raise NameTaken(
                f"There is no project named {name!r}; its folder {folder.name} belongs to project "
                f"{project.name!r}. Use that name, or another one for a new project."
            )
        return project

    def delete(self, name: str) -> None:
        """Delete the project ``name`` with all its files; refused while one of its trainings runs."""
        project = self.open(name)
        with project.lock(), _trainings_stopped(project):
            # A tag of its own: a leftover of an earlier deletion of the same name cannot be in the way.
            trash = project.root.with_name(f"{DELETING}{project.root.name}.{secrets.token_hex(4)}")
            os.replace(project.root, trash)
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _trainings_stopped(project: Project) -> Iterator[None]:
    """Hold the lock of each training of ``project``; `ProjectBusy` when one is held, as a running training does."""
    with contextlib.ExitStack() as held:
        for lock in sorted(project.root.glob("trainings/*/.lock")):
            try:
                held.enter_context(FileLock(str(lock), timeout=0))
            except Timeout as error:
                raise ProjectBusy(
                    f"Project {project.name!r} cannot be deleted while its training {lock.parent.name} runs; "
                    "cancel the training or wait for it to end, then delete the project."
                ) from error
        yield
