"""The training runs of a project: the ``"trainings"`` section of the manifest, one `RunRecord` each.

This module is the only one that reads or writes that section. A run's files live in
``trainings/<run>/``; its record says how far it got and which artefact generation, evaluation and
export use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.store import Project, now

RUNS = "trainings"
"""Folder of the runs inside a project, and the manifest key of their records."""


class UnknownRun(UserError):
    """A run asked for by id or artefact path does not exist or has not finished."""


@dataclass
class RunRecord:
    """One training run; its JSON form is the manifest entry."""

    id: str
    started: str | None = None
    updated: str | None = None
    """Last progress or status change (choosing a checkpoint does not change it)."""
    status: str | None = None
    """``running``, ``stopped``, ``failed`` or ``finished``."""
    preset: str | None = None
    error: str | None = None
    step: int | None = None
    total_steps: int | None = None
    artefact: str | None = None
    """The artefact generation, evaluation and export use, relative to the project folder."""
    final_artefact: str | None = None
    """The artefact written when the run finished."""
    artefact_step: int | None = None
    """The preview step ``artefact`` comes from; None for the final artefact."""

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> RunRecord:
        """The record of a manifest entry; one written before checkpoints could be chosen has its
        ``artefact`` as ``final_artefact``."""
        names = {item.name for item in dataclasses.fields(cls)}
        known = {key: item for key, item in value.items() if key in names}
        known.setdefault("final_artefact", value.get("artefact"))
        return cls(**known)


def runs(project: Project) -> list[RunRecord]:
    """The project's runs, oldest first."""
    return [RunRecord.from_json(entry) for entry in project.manifest().get(RUNS, [])]


def get_run(project: Project, run_id: str) -> RunRecord | None:
    """The record of ``run_id``, or None."""
    return next((record for record in runs(project) if record.id == run_id), None)


def update_run(project: Project, run_id: str, *, touch: bool = True, **values: Any) -> None:
    """Set fields of ``run_id``'s record, adding the record (``started`` now) if there is none.

    ``touch`` also sets ``updated`` to now. Only the given fields are written.
    """
    names = {item.name for item in dataclasses.fields(RunRecord)}
    unknown = set(values) - names
    if unknown:
        raise TypeError(f"RunRecord has no field {', '.join(sorted(unknown))}.")

    def change(manifest: dict[str, Any]) -> None:
        entries = manifest.setdefault(RUNS, [])
        entry = next((t for t in entries if t.get("id") == run_id), None)
        if entry is None:
            entry = {"id": run_id, "started": now()}
            entries.append(entry)
        entry.update(values)
        if touch:
            entry["updated"] = now()

    project.update(change)


def remove_run(project: Project, run_id: str) -> None:
    """Drop ``run_id``'s record (its folder stays)."""

    def drop(manifest: dict[str, Any]) -> None:
        manifest[RUNS] = [t for t in manifest.get(RUNS, []) if t.get("id") != run_id]

    project.update(drop)


def finished_runs(project: Project) -> list[RunRecord]:
    """The runs whose artefact file exists, oldest first."""
    return [r for r in runs(project) if r.artefact and project.path(r.artefact).is_file()]


def latest_finished(project: Project) -> RunRecord | None:
    """The finished run updated last (the earlier in the manifest on a tie), or None."""
    return max(reversed(finished_runs(project)), key=lambda r: r.updated or r.started or "", default=None)


def run_labels(project: Project) -> dict[str, str]:
    """Each run's name as people say it: ``"Run 3 - 2 Dec 14:05 - fast"``.

    The number is the run's place among the project's runs (oldest first), the time its start in
    this computer's time zone, the last part its preset.
    """
    labels = {}
    for number, record in enumerate(runs(project), start=1):
        parts = [f"Run {number}", short_time(record.started), record.preset]
        labels[record.id] = " - ".join(part for part in parts if part)
    return labels


def short_time(stamp: str | None) -> str | None:
    """A manifest time (ISO 8601) as ``"2 Dec 14:05"`` in this computer's time zone; None if unreadable."""
    try:
        when = datetime.fromisoformat(stamp or "").astimezone()
    except ValueError:
        return None
    return f"{when.day} {when:%b %H:%M}"


def resolve_artefact(project: Project, run: str | Path | None) -> tuple[Path, str | None]:
    """The artefact file and run id of ``run``: a run id, an artefact path, or None for the latest finished run.

    An artefact file outside the project's runs has no run id. `UnknownRun` when none matches.
    """
    if run is None:
        latest = latest_finished(project)
        if latest is None:
            raise UnknownRun(f"Project {project.name!r} has no finished training yet; train it first.")
        return project.path(latest.artefact), latest.id
    finished = finished_runs(project)
    record = next((r for r in finished if r.id == str(run)), None)
    if record is not None:
        return project.path(record.artefact), record.id
    path = Path(run).expanduser()
    if path.is_file():
        inside = project.root.resolve() in path.resolve().parents
        return path, path.parent.name if inside and path.parent.parent.name == RUNS else None
    known = ", ".join(r.id for r in finished) or "none"
    raise UnknownRun(
        f"Project {project.name!r} has no finished training run {str(run)!r} (finished runs: {known}), "
        "and no artefact file has that path."
    )
