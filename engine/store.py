"""Projects on disk: safe names, atomic writes and a locked JSON manifest.

Every file the app writes goes through this module. A project is a folder under the data root
holding ``manifest.json`` plus sub-folders (``photos/``, ``trainings/``, ``outputs/``...).
Writes land in a temporary file in the same folder and are moved into place with ``os.replace``,
so a reader never sees half a file; manifest updates hold a file lock so two browser tabs or two
processes cannot interleave.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

MANIFEST = "manifest.json"
HOME_ENV = "MAGICAPTURE_HOME"
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}
_MAX_NAME = 80


class StoreError(Exception):
    """A project-store operation failed; the message is meant for the user."""


class InvalidName(StoreError):
    """A name cannot become a file or folder name."""


class StorageFull(StoreError):
    """The disk holding a folder ran out of space."""


def data_root() -> Path:
    """Folder holding all projects: ``$MAGICAPTURE_HOME`` or the platform's user data folder."""
    override = os.environ.get(HOME_ENV)
    if override:
        return Path(override).expanduser().resolve()
    from platformdirs import user_data_path

    return user_data_path("magicapture-studio", appauthor=False).resolve()


def safe_name(name: str) -> str:
    """Turn a user-given name into one path component, or raise `InvalidName`.

    Keeps letters, digits, ``-``, ``_``, ``.`` and spaces (folded to ``-``); refuses empty names,
    ``.``/``..``, NUL, path separators and Windows reserved device names.
    """
    if not isinstance(name, str) or "\x00" in name:
        raise InvalidName("Names may not contain NUL characters.")
    if "/" in name or "\\" in name:
        raise InvalidName(f"Names may not contain path separators: {name!r}.")
    text = unicodedata.normalize("NFKC", name).strip()
    text = re.sub(r"\s+", "-", text)
    text = re.sub(r"[^\w.\-]", "", text, flags=re.UNICODE).strip(".-")
    if not text:
        raise InvalidName(f"{name!r} has no usable characters; use letters, digits, '-' or '_'.")
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise InvalidName(f"{name!r} is a reserved device name on Windows; choose another.")
    return text[:_MAX_NAME]


def inside(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that escapes it."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise InvalidName(f"Path {'/'.join(parts)!r} leaves {root}.")
    return path


def _raise_if_full(error: OSError, folder: Path) -> None:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFull(f"The disk holding {folder} is full; free some space and try again.") from error


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> Path:
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and move it into place.

    Use it for writers that take a file name (``save_file``, ``Image.save``). On any error the
    temporary file is removed and ``path`` is untouched; a full disk raises `StorageFull`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        _raise_if_full(error, path.parent)
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Project:
    """One client or subject: a folder with a manifest."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    def path(self, *parts: str) -> Path:
        """A path inside the project; refuses anything that would leave it."""
        return inside(self.root, *parts)

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / MANIFEST).read_text("utf-8"))
        except FileNotFoundError as error:
            raise StoreError(f"Project {self.name!r} has no manifest; it may have been deleted.") from error
        except json.JSONDecodeError as error:
            raise StoreError(f"The manifest of project {self.name!r} is damaged: {error}.") from error

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the project's lock (between threads and processes)."""
        with FileLock(str(self.root / ".lock"), timeout=30):
            yield

    def update(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply ``change`` to the manifest under the project lock and save it atomically.

        Returns what ``change`` returned. If it raises, the manifest is left as it was.
        """
        with self.lock():
            manifest = self.manifest()
            result = change(manifest)
            manifest["updated"] = now()
            atomic_write_json(self.root / MANIFEST, manifest)
            return result


class ProjectStore:
    """All projects under one root folder."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else data_root()
        self.projects_dir = self.root / "projects"

    def list(self) -> list[str]:
        if not self.projects_dir.is_dir():
            return []
        return sorted(p.name for p in self.projects_dir.iterdir() if (p / MANIFEST).is_file())

    def create(self, name: str) -> Project:
        folder = inside(self.projects_dir, safe_name(name))
        if (folder / MANIFEST).exists():
            raise StoreError(f"A project named {folder.name!r} already exists.")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "name": name,
            "created": now(),
            "updated": now(),
            "images": [],
            "trainings": [],
            "outputs": [],
        }
        try:
            atomic_write_json(folder / MANIFEST, manifest)
        except StorageFull:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return Project(folder)

    def open(self, name: str) -> Project:
        folder = inside(self.projects_dir, safe_name(name))
        if not (folder / MANIFEST).is_file():
            raise StoreError(f"There is no project named {name!r}.")
        return Project(folder)

    def delete(self, name: str) -> None:
        project = self.open(name)
        with project.lock():
            trash = project.root.with_name(f".deleting-{project.name}")
            os.replace(project.root, trash)
        shutil.rmtree(trash, ignore_errors=True)
