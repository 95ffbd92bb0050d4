"""The repair itself: the best readable manifest merged with the records rebuilt from the files, saved
under the project's lock, and a summary of what happened."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.outputs import OUTPUTS
from engine.photos import IMAGES
from engine.repair.rebuild import disk_outputs, disk_photos, disk_runs, iso, progress_shown
from engine.runs import RUNS, RunRecord
from engine.store import (
    MANIFEST,
    PREVIOUS,
    InvalidName,
    Project,
    atomic_write_bytes,
    now,
    parse_manifest,
)

DAMAGED = "manifest.damaged.json"
"""Where a repair keeps a manifest that did not parse."""


@dataclass
class _Section:
    """One list of the manifest after the merge, and how it came about."""

    records: list[dict[str, Any]]
    kept: int
    restored: int
    dropped: int

    def describe(self, noun: str) -> str:
        total = len(self.records)
        return f"{total} {noun}{'' if total == 1 else 's'} ({self.kept} kept, {self.restored} restored from disk)"


def repair_manifest(project: Project) -> str:
    """Rebuild ``project``'s manifest from its files, under its lock; returns a one-paragraph summary."""
    with project.lock():
        try:
            current = (project.root / MANIFEST).read_bytes()
        except FileNotFoundError:
            current = None
        base, source = _best_manifest(project.root, current)
        photos, left_out = disk_photos(project)
        images = _merge(base.get(IMAGES), photos, lambda r: _is_file(project, r.get("crop")), "added")
        runs = disk_runs(project)
        trainings = _merge(
            _brought_up_to_date(base.get(RUNS), runs),
            runs,
            lambda r: _is_dir(project, RUNS, r.get("id")),
            "started",
        )
        outputs = _merge(
            base.get(OUTPUTS), disk_outputs(project), lambda r: _is_file(project, r.get("file")), "created"
        )
        name = base.get("name") if isinstance(base.get("name"), str) else project.root.name
        manifest = {
            **base,
            "name": name,
            "created": base.get("created") or iso(project.root.stat().st_mtime),
            "updated": now(),
            IMAGES: images.records,
            RUNS: trainings.records,
            OUTPUTS: outputs.records,
        }
        parsed = source == MANIFEST
        if current is not None and not parsed:
            atomic_write_bytes(project.root / DAMAGED, current)
        replaced = current if parsed else json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        project.save_manifest(manifest, previous=replaced)
    return _summary(
        name, source, images, trainings, outputs, left_out, kept_damaged=current is not None and not parsed
    )


def _best_manifest(root: Path, current: bytes | None) -> tuple[dict[str, Any], str | None]:
    """The readable manifest to start from and its source: the current file, the previous one, the
    current one with its undecodable bytes replaced, or nothing (``{}``, None)."""
    salvaged = current.decode("utf-8", "replace").encode("utf-8") if current else None
    for source, data in ((MANIFEST, current), (PREVIOUS, _read(root / PREVIOUS)), (DAMAGED, salvaged)):
        if data is None:
            continue
        try:
            return parse_manifest(data), source
        except ValueError:
            continue
    return {}, None


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


class _Rebuilt(Protocol):
    """A record rebuilt from files: a `PhotoRecord`, `RunRecord` or `OutputRecord`."""

    id: str

    def to_json(self) -> dict[str, Any]: ...


def _merge(
    recorded: Any, on_disk: Sequence[_Rebuilt], present: Callable[[dict[str, Any]], bool], order: str
) -> _Section:
    """The recorded entries (kept as they are) whose files exist, plus the records rebuilt from files
    no entry lists."""
    entries = [r for r in recorded if isinstance(r, dict)] if isinstance(recorded, list) else []
    kept = [r for r in entries if present(r)]
    ids = {r.get("id") for r in kept if isinstance(r.get("id"), str)}
    restored = [r.to_json() for r in on_disk if r.id not in ids]
    records = sorted(kept + restored, key=lambda r: str(r.get(order) or ""))
    return _Section(records, len(kept), len(restored), len(entries) - len(kept))


def _is_file(project: Project, relative: Any) -> bool:
    try:
        return isinstance(relative, str) and project.path(relative).is_file()
    except InvalidName:
        return False


def _is_dir(project: Project, *parts: Any) -> bool:
    try:
        return all(isinstance(p, str) and p for p in parts) and project.path(*parts).is_dir()
    except InvalidName:
        return False


def _brought_up_to_date(recorded: Any, on_disk: list[RunRecord]) -> Any:
    """The recorded runs, each unfinished one updated with what its folder shows (`progress_shown`)."""
    if not isinstance(recorded, list):
        return recorded
    latest = {run.id: progress_shown(run) for run in on_disk}
    return [
        {**run, **latest[run["id"]]}
        if isinstance(run, dict)
        and run.get("status") != "finished"
        and isinstance(run.get("id"), str)
        and run["id"] in latest
        else run
        for run in recorded
    ]


# -- summary ---------------------------------------------------------------------------------------


def _summary(
    name: str,
    source: str | None,
    images: _Section,
    trainings: _Section,
    outputs: _Section,
    left_out: list[str],
    kept_damaged: bool,
) -> str:
    origin = {
        MANIFEST: "its manifest and its files",
        PREVIOUS: "its previous manifest and its files",
        DAMAGED: "its damaged manifest (bytes that were not UTF-8 replaced) and its files",
        None: "its files alone",
    }[source]
    finished = sum(1 for r in trainings.records if RunRecord.from_json(r).finished)
    parts = [
        f"Rebuilt the manifest of project {name!r} from {origin}: {images.describe('photo')}, "
        f"{trainings.describe('training')} of which {finished} finished, and {outputs.describe('portrait')}."
    ]
    dropped = images.dropped + trainings.dropped + outputs.dropped
    if dropped:
        parts.append(f"Dropped {dropped} entries whose files are gone.")
    if left_out:
        parts.append(
            f"Left out {len(left_out)} photo folder(s) without a readable crop.png, mask.png and face.json "
            f"({', '.join(left_out)}); add those photos again."
        )
    if images.restored or outputs.restored:
        parts.append(
            "Restored photos are listed under their ids instead of their upload names, and restored "
            "portraits have no identity score."
        )
    if source is None:
        parts.append("A published client gallery, if there was one, has to be published again.")
    if kept_damaged:
        parts.append(f"The damaged manifest was kept as {DAMAGED}.")
    return " ".join(parts)
