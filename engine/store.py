"""Projects on disk: safe names, atomic writes and a locked JSON manifest.

Every file the app writes goes through this module. A project is a folder under the data root
holding ``manifest.json`` plus sub-folders (``photos/``, ``trainings/``, ``outputs/``...).
Writes land in a temporary file in the same folder and are moved into place with ``os.replace``,
so a reader never sees half a file; manifest updates hold a file lock so two browser tabs or two
processes cannot interleave. Each update keeps the manifest it replaces as ``manifest.prev.json``,
which is read (with a `ManifestRecovered` warning) when ``manifest.json`` does not parse.

A project is opened by the name it was created with (kept in the manifest), never by another name
that happens to give the same folder: ``"a b"`` does not open project ``"a-b"``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
import unicodedata
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

MANIFEST = "manifest.json"
PREVIOUS = "manifest.prev.json"
"""The manifest as it was before the last update: read when ``manifest.json`` does not parse."""
HOME_ENV = "MAGICAPTURE_HOME"
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}
MAX_NAME = 80
"""Most characters of a name's folder form; longer names are refused, never cut."""
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
"""How Rust libraries (safetensors) write the OS error behind an I/O failure into their message."""


class StoreError(Exception):
    """A project-store operation failed; the message is meant for the user."""


class InvalidName(StoreError):
    """A name cannot become a file or folder name."""


class NameTaken(StoreError):
    """A name gives the same folder as another project's name."""


class ProjectBusy(StoreError):
    """A project cannot be deleted while one of its trainings runs."""


class StorageFull(StoreError):
    """The disk holding a folder ran out of space."""


class ManifestRecovered(UserWarning):
    """A manifest did not parse, so the previous one is used."""


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
    ``.``/``..``, NUL, path separators, Windows reserved device names and names longer than
    `MAX_NAME` characters.
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
    if len(text) > MAX_NAME:
        raise InvalidName(
            f"Names may have at most {MAX_NAME} characters (letters, digits, '-', '_' and '.'); "
            f"{name[:40]!r}... has {len(text)}. Choose a shorter name."
        )
    return text


def same_name(first: str, second: str) -> bool:
    """Whether two names are the same as typed (Unicode composition and outer spaces aside)."""
    return _typed(first) == _typed(second)


def _typed(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip()


def inside(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that escapes it."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise InvalidName(f"Path {'/'.join(parts)!r} leaves {root}.")
    return path


def _os_error(error: BaseException) -> OSError | None:
    """The OS error behind ``error``: itself, or the one safetensors reports in its message."""
    if isinstance(error, OSError):
        return error
    from safetensors import SafetensorError

    found = _RUST_OS_ERROR.search(str(error)) if isinstance(error, SafetensorError) else None
    if found is None:
        return None
    code = int(found.group(1))
    translated = OSError(code, f"{os.strerror(code)} ({error})")
    translated.__cause__ = error
    return translated


def _raise_if_full(error: BaseException, folder: Path) -> None:
    cause = _os_error(error)
    if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFull(f"The disk holding {folder} is full; free some space and try again.") from cause


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
    return atomic_write_bytes(path, _json_bytes(value))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and move it into place.

    Use it for writers that take a file name (``save_file``, ``Image.save``). On any error the
    temporary file is removed and ``path`` is untouched; a full disk raises `StorageFull` whose
    ``__cause__`` is the `OSError` (also when safetensors reports it as a ``SafetensorError``).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _raise_if_full(error, path.parent)
        raise


def replace_folder(staged: Path, final: Path) -> Path:
    """Move the complete folder ``staged`` to ``final`` (same file system), replacing a folder there.

    A folder already at ``final`` is renamed aside to ``.<name>.old`` first and removed once the new
    one is in place, so ``final`` is at any moment the old folder or the new one, never a mix.
    """
    staged, final = Path(staged), Path(final)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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
            "name": _typed(name),
            "created": now(),
            "updated": now(),
            "images": [],
            "trainings": [],
            "outputs": [],
        }
        project = Project(folder)
        try:
            project.save_manifest(manifest, previous=_json_bytes(manifest))
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
            trash = project.root.with_name(f".deleting-{project.root.name}")
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
