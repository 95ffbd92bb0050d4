"""Rebuild a project's manifest from its files (``magicapture projects repair NAME``).

For when neither ``manifest.json`` nor ``manifest.prev.json`` parses, or to bring a manifest back in
step with the files. Each record is rebuilt from what its writer left on disk: a photo from
``photos/<role>/<id>/`` (``face.json`` holds the face placement intake records), a training from
``trainings/<run>/`` (``events.jsonl``, checkpoints, ``final.safetensors``), a portrait from
``outputs/<id>.png`` (AUTOMATIC1111 ``parameters`` text). Records of the best readable manifest
(the current one, the previous one, or the current one read past its bad bytes) are kept while
their files exist. What only a manifest knew (upload names, identity scores, a published client
gallery) comes back only from such a manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.runs import RUNS, RunRecord
from engine.store import (
    MANIFEST,
    PREVIOUS,
    InvalidName,
    Project,
    atomic_write_bytes,
    file_sha256,
    now,
    parse_manifest,
)

DAMAGED = "manifest.damaged.json"
"""Where a repair keeps a manifest that did not parse."""
FINAL = "final.safetensors"
_PROGRESS = (
    "status",
    "step",
    "total_steps",
    "error",
    "updated",
    "artefact",
    "final_artefact",
    "artefact_step",
)
"""What a run's folder tells better than a manifest that may have missed the run's last update."""
_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
"""One ``key: value`` pair of AUTOMATIC1111's parameters line (its own pattern)."""
_PARAMETERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Steps": ("steps", int),
    "CFG scale": ("guidance_scale", float),
    "Seed": ("seed", int),
    "Model": ("model", str),
    "Lora UNet scale": ("unet_lora_scale", float),
    "Lora text encoder scale": ("text_lora_scale", float),
}


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
        photos, left_out = _disk_photos(project)
        images = _merge(base.get("images"), photos, lambda r: _is_file(project, r.get("crop")), "added")
        runs = _disk_runs(project)
        trainings = _merge(
            _brought_up_to_date(base.get("trainings"), runs),
            runs,
            lambda r: _is_dir(project, RUNS, r.get("id")),
            "started",
        )
        outputs = _merge(
            base.get("outputs"), _disk_outputs(project), lambda r: _is_file(project, r.get("file")), "created"
        )
        name = base.get("name") if isinstance(base.get("name"), str) else project.root.name
        manifest = {
            **base,
            "name": name,
            "created": base.get("created") or _iso(project.root.stat().st_mtime),
            "updated": now(),
            "images": images.records,
            "trainings": trainings.records,
            "outputs": outputs.records,
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


def _merge(
    recorded: Any, on_disk: list[dict[str, Any]], present: Callable[[dict[str, Any]], bool], order: str
) -> _Section:
    """The recorded entries whose files exist, plus the entries rebuilt from files no entry lists."""
    entries = [r for r in recorded if isinstance(r, dict)] if isinstance(recorded, list) else []
    kept = [r for r in entries if present(r)]
    ids = {r.get("id") for r in kept if isinstance(r.get("id"), str)}
    restored = [r for r in on_disk if r["id"] not in ids]
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


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _folders(folder: Path) -> list[Path]:
    """Sub-folders, without the hidden ones (staging and trash of interrupted writes)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# -- photos ----------------------------------------------------------------------------------------


def _disk_photos(project: Project) -> tuple[list[dict[str, Any]], list[str]]:
    """Photo records rebuilt from their folders, and the folders that lack what training needs."""
    from engine.intake import ROLES

    records, left_out = [], []
    for role in ROLES:
        for folder in _folders(project.root / "photos" / role):
            record = _photo(project, role, folder)
            if record is None:
                left_out.append(folder.relative_to(project.root).as_posix())
            else:
                records.append(record)
    return records, left_out


def _photo(project: Project, role: str, folder: Path) -> dict[str, Any] | None:
    """The intake record of a photo folder, or None without a readable crop, mask and face.json."""
    import numpy as np
    from PIL import Image

    from engine.intake import _difference_hash

    try:
        details = json.loads((folder / "face.json").read_text("utf-8"))
        placed = details["face_in_crop"]
        with Image.open(folder / "crop.png") as crop:
            pixels = np.asarray(crop.convert("RGB"))
        with Image.open(folder / "mask.png") as mask:
            mask.verify()
        landmarks, bbox = placed["landmarks"], placed["bbox"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    relative = folder.relative_to(project.root).as_posix()
    original = next(iter(sorted(folder.glob("original.*"))), None)

    def file(name: str) -> str | None:
        return f"{relative}/{name}" if (folder / name).is_file() else None

    return {
        "id": folder.name,
        "role": role,
        "status": "accepted",
        "filename": f"{folder.name}{original.suffix if original else '.png'}",
        "original": file(original.name) if original else None,
        "crop": file("crop.png"),
        "mask": file("mask.png"),
        "labels": file("labels.png"),
        "preview": file("preview.png"),
        "face": file("face.json"),
        "embedding": file("embedding.npy"),
        "embedding_model": None,
        "landmarks": landmarks,
        "bbox": bbox,
        "sha256": file_sha256(original) if original else None,
        "dhash": _difference_hash(pixels),
        "fallback": bool(details.get("fallbacks")),
        "added": _iso((folder / "crop.png").stat().st_mtime),
    }


# -- trainings -------------------------------------------------------------------------------------


def _disk_runs(project: Project) -> list[dict[str, Any]]:
    return [_run(project, folder) for folder in _folders(project.root / RUNS)]


def _run(project: Project, folder: Path) -> dict[str, Any]:
    """A training's manifest entry from its events, newest checkpoint and artefact."""
    from engine.events import Failed, StepDone, read_events

    events = read_events(folder / "events.jsonl")
    steps = [e for e in events if isinstance(e, StepDone)]
    state = _newest_state(folder / "checkpoints")
    final = folder / FINAL
    started = events[0].time if events else folder.stat().st_mtime
    record: dict[str, Any] = {
        "id": folder.name,
        "started": _iso(started),
        "updated": _iso(events[-1].time if events else started),
        "preset": (state.get("config") or {}).get("preset") or _artefact_metadata(final).get("preset"),
        "error": None,
    }
    if "global_step" in state:
        record["step"] = state["global_step"]
    if steps:
        record["total_steps"] = steps[-1].total_steps
    if final.is_file():
        relative = final.relative_to(project.root).as_posix()
        return {
            **record,
            "status": "finished",
            "artefact": relative,
            "final_artefact": relative,
            "artefact_step": None,
        }
    ended = [e for e in events if isinstance(e, Failed)]
    if _running(folder):
        record["status"] = "running"
    elif ended and ended[-1] is events[-1]:
        record.update(status="failed", error=ended[-1].message)
    else:
        record["status"] = "stopped"
    return record


def _brought_up_to_date(recorded: Any, on_disk: list[dict[str, Any]]) -> Any:
    """The recorded runs, each unfinished one updated with what its folder shows (`_PROGRESS`)."""
    if not isinstance(recorded, list):
        return recorded
    latest = {run["id"]: run for run in on_disk}
    return [
        {**run, **{key: value for key, value in latest[run["id"]].items() if key in _PROGRESS}}
        if isinstance(run, dict)
        and run.get("status") != "finished"
        and isinstance(run.get("id"), str)
        and run["id"] in latest
        else run
        for run in recorded
    ]


def _newest_state(folder: Path) -> dict[str, Any]:
    """``state.json`` of the newest step checkpoint that has a readable one, else ``{}``."""
    from engine import checkpoint as ckpt

    for path in reversed(ckpt.checkpoints(folder)):
        try:
            state = ckpt.read_json(path / ckpt.STATE)
        except (OSError, ValueError):
            continue
        if isinstance(state, dict):
            return state
    return {}


def _artefact_metadata(path: Path) -> dict[str, Any]:
    """The ``magicapture`` metadata of an artefact file, or ``{}``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as artefact:
            value = json.loads((artefact.metadata() or {}).get("magicapture", "{}"))
    except (OSError, ValueError, SafetensorError):
        return {}
    return value if isinstance(value, dict) else {}


def _running(folder: Path) -> bool:
    """Whether a training holds the run's lock now."""
    from filelock import FileLock, Timeout

    if not (folder / ".lock").is_file():
        return False
    try:
        with FileLock(str(folder / ".lock"), timeout=0):
            return False
    except Timeout:
        return True


# -- portraits -------------------------------------------------------------------------------------


def _disk_outputs(project: Project) -> list[dict[str, Any]]:
    folder = project.root / "outputs"
    pictures = sorted(folder.glob("*.png")) if folder.is_dir() else []
    return [_output(project, path) for path in pictures if not path.name.startswith(".")]


def _output(project: Project, path: Path) -> dict[str, Any]:
    """An output's entry from its PNG and the ``parameters`` text in it (no identity score)."""
    from engine.outputs import OutputRecord

    params, run = _parameters(_parameters_text(path))
    seed = params.get("seed")
    if seed is None and (found := re.search(r"-(\d+)-[0-9a-f]{6}$", path.stem)):
        seed = int(found.group(1))
    return OutputRecord(
        id=path.stem,
        file=path.relative_to(project.root).as_posix(),
        seed=seed if seed is not None else 0,
        params=params,
        run=run,
        identity=None,
        created=_iso(path.stat().st_mtime),
    ).to_json()


def _parameters_text(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return str(picture.info.get("parameters") or "")
    except (OSError, ValueError):
        return ""


def _parameters(text: str) -> tuple[dict[str, Any], str | None]:
    """The generation parameters and run id in an AUTOMATIC1111 ``parameters`` text."""
    from engine.outputs import SAMPLER_LABELS

    lines = text.split("\n")
    if len(lines) < 2 or not _PAIR.match(lines[-1]):
        return ({"prompt": text} if text else {}), None
    pairs = {}
    for key, value in _PAIR.findall(lines[-1]):
        pairs[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    prompt, negative = lines[:-1], ""
    if prompt[-1].startswith("Negative prompt: "):
        negative = prompt.pop()[len("Negative prompt: ") :]
    params: dict[str, Any] = {"prompt": "\n".join(prompt), "negative_prompt": negative}
    for key, (name, kind) in _PARAMETERS.items():
        try:
            params[name] = kind(pairs[key])
        except (KeyError, ValueError):
            continue
    samplers = {label: name for name, label in SAMPLER_LABELS.items()}
    if pairs.get("Sampler") in samplers:
        params["sampler"] = samplers[pairs["Sampler"]]
    width, _, height = str(pairs.get("Size", "")).partition("x")
    if width.isdigit() and height.isdigit():
        params.update(width=int(width), height=int(height))
    return params, pairs.get("MagiCapture run")


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
