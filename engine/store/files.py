"""Atomic writes: a file (or a whole folder) is the old one or the complete new one, never half; a full
disk is `StorageFull`; files hashed in chunks."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.store.errors import StorageFull

_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
"""How Rust libraries (safetensors) write the OS error behind an I/O failure into their message."""


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
    return atomic_write_bytes(path, json_bytes(value))


def json_bytes(value: Any) -> bytes:
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


@contextlib.contextmanager
def full_disk_as_storage_full(folder: Path) -> Iterator[None]:
    """Raise `StorageFull` naming ``folder`` for a full disk (ENOSPC, EDQUOT) met inside the block.

    For writers that cannot replace a whole file (appends); other errors pass unchanged.
    """
    try:
        yield
    except BaseException as error:
        _raise_if_full(error, folder)
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
