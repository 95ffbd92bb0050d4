"""Training checkpoints on disk: safetensors and JSON only (no pickle), saved atomically.

A checkpoint is a folder ``checkpoints/<kind>-<N>/`` written under a temporary name and renamed
when complete, so a crash or a full disk mid-save leaves the previous checkpoints untouched.
Kind ``step`` (resumable training state) keeps only the newest ``keep``; kind ``preview`` (the
weights of a preview, for choosing the best one) is never rotated. Optimiser states (torch AdamW
or bitsandbytes AdamW8bit, nested dicts of tensors and numbers) are split into a tensor file and
a JSON tree.

Every file of a checkpoint has its sha256 in ``checksums.json``, written before ``state.json``
(whose own sha256 it holds too); `newest_intact` checks them before a resume trusts a checkpoint,
and `set_aside` renames one that fails to ``damaged-<name>``, out of `checkpoints`' sight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.store import (
    StorageFull,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    file_sha256,
    replace_folder,
)

if TYPE_CHECKING:
    import torch

STATE = "state.json"
"""Written last: a folder without it is not a checkpoint."""
CHECKSUMS = "checksums.json"
"""The sha256 of every other file, ``state.json`` included; written just before it."""
DAMAGED = "damaged"
STEP = "step"
PREVIEW = "preview"
_TENSOR = "__tensor__"


@dataclass(frozen=True)
class Damaged:
    """A checkpoint that failed verification."""

    path: Path
    reason: str
    """What is wrong, as the end of a sentence naming the file (e.g. "trainable.safetensors is missing")."""


def checkpoints(folder: Path, kind: str = STEP) -> list[Path]:
    """Complete checkpoints of ``kind`` under ``folder``, oldest first."""
    if not Path(folder).is_dir():
        return []
    pattern = re.compile(rf"^{kind}-(\d+)$")
    found = [
        (int(m.group(1)), p)
        for p in Path(folder).iterdir()
        if (m := pattern.match(p.name)) and (p / STATE).is_file()
    ]
    return [p for _, p in sorted(found)]


def staging(folder: Path, step: int, kind: str = STEP) -> Path:
    """An empty temporary folder for the checkpoint of ``step``."""
    path = Path(folder) / f".tmp-{kind}-{step}"
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.mkdir(parents=True)
    except OSError as error:
        _full(error, folder)
        raise
    return path


def commit(path: Path, step: int, keep: int | None, kind: str = STEP) -> Path:
    """Move a staged checkpoint into place and delete all but the newest ``keep`` of its kind (None: keep all)."""
    final = replace_folder(path, path.with_name(f"{kind}-{step}"))
    if keep is not None:
        for stale in checkpoints(path.parent, kind)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def seal(path: Path, state: dict[str, Any], folder: Path) -> None:
    """Record the sha256 of every file of the staged checkpoint ``path`` and of ``state``, then write the state (last)."""
    data = json.dumps(state, indent=2, sort_keys=True, default=str).encode("utf-8")
    sums = {
        p.name: file_sha256(p) for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")
    }
    sums[STATE] = hashlib.sha256(data).hexdigest()
    with disk_guard(folder):
        atomic_write_json(path / CHECKSUMS, sums)
        atomic_write_bytes(path / STATE, data)


def problem(path: Path) -> str | None:
    """Why the checkpoint ``path`` cannot be trusted, or None when every file matches its recorded sha256."""
    try:
        sums = json.loads((path / CHECKSUMS).read_text("utf-8"))
    except FileNotFoundError:
        return _legacy_problem(path)  # saved before checksums were recorded
    except (OSError, ValueError) as error:
        return f"{CHECKSUMS} cannot be read ({error})"
    if not isinstance(sums, dict) or STATE not in sums:
        return f"{CHECKSUMS} does not list the checkpoint's files"
    for name, expected in sorted(sums.items()):
        try:
            actual = file_sha256(path / name)
        except OSError as error:
            return f"{name} cannot be read ({error.strerror or error})"
        if actual != expected:
            return f"{name} does not match the checksum recorded when it was saved"
    return None


def _legacy_problem(path: Path) -> str | None:
    """For a checkpoint without checksums: the first JSON file that does not parse or tensor file that does not open."""
    from safetensors import SafetensorError, safe_open

    if not (path / STATE).is_file():
        return f"{STATE} is missing"
    for file in sorted(path.iterdir()):
        try:
            if file.suffix == ".json":
                json.loads(file.read_text("utf-8"))
            elif file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt"):
                    pass
        except (OSError, ValueError, SafetensorError) as error:
            return f"{file.name} cannot be read ({error})"
    return None


def newest_intact(folder: Path, kind: str = STEP) -> tuple[Path | None, list[Damaged]]:
    """The newest checkpoint of ``kind`` that verifies (None if none does), and the newer ones that do not."""
    damaged = []
    for path in reversed(checkpoints(folder, kind)):
        reason = problem(path)
        if reason is None:
            return path, damaged
        damaged.append(Damaged(path, reason))
    return None, damaged


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``damaged-<name>`` (then ``-2``, ``-3``...): kept, but no longer listed."""
    target, copy = path.with_name(f"{DAMAGED}-{path.name}"), 1
    while target.exists():
        copy += 1
        target = path.with_name(f"{DAMAGED}-{path.name}-{copy}")
    os.replace(path, target)
    return target


def _full(error: OSError, folder: Path) -> None:
    import errno

    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFull(
            f"The disk holding {folder} is full, so the checkpoint could not be saved; the previous "
            "checkpoint is intact. Free some space, then resume the training."
        ) from error


@contextlib.contextmanager
def disk_guard(folder: Path) -> Iterator[None]:
    """Turn a full disk while writing into a checkpoint folder into `StorageFull` saying the previous ones are intact."""
    try:
        yield
    except StorageFull as error:
        _full(error.__cause__, folder)
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    from safetensors.torch import save_file

    with disk_guard(folder), atomic_path(path) as tmp:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))


def save_json(path: Path, value: Any, folder: Path) -> None:
    with disk_guard(folder):
        atomic_write_json(path, value)


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


def split_state(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """A nested state (dicts, lists, tensors, numbers) -> a JSON tree plus its tensors by path."""
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value
            return {_TENSOR: path}
        if isinstance(value, dict):
            return {"dict": [[key, walk(item, f"{path}/{key}")] for key, item in value.items()]}
        if isinstance(value, (list, tuple)):
            return {
                "list" if isinstance(value, list) else "tuple": [
                    walk(item, f"{path}/{i}") for i, item in enumerate(value)
                ]
            }
        return value

    return walk(state, prefix), tensors


def join_state(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_state` (dict keys keep their type: optimiser states use int keys)."""
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return tensors[tree[_TENSOR]]
        if "dict" in tree:
            return {key: join_state(item, tensors) for key, item in tree["dict"]}
        if "tuple" in tree:
            return tuple(join_state(item, tensors) for item in tree["tuple"])
        return [join_state(item, tensors) for item in tree["list"]]
    return tree


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text("utf-8"))
