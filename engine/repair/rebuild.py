"""Manifest records rebuilt from the files their writers left: a photo from ``photos/<role>/<id>/``, a
training from ``trainings/<run>/`` (events, checkpoints, artefact), a portrait from ``outputs/<id>.png``
(AUTOMATIC1111 ``parameters`` text)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.outputs import NEGATIVE_KEY, PROMPT_KEY, SAMPLER_LABELS, OutputRecord
from engine.photos import PhotoRecord
from engine.runs import RUNS, RunRecord
from engine.store import Project, file_sha256

FINAL = "final.safetensors"
_PAIR = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
"""One ``key: value`` pair of AUTOMATIC1111's parameters line (its own pattern)."""
_PARAMETERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "Steps": ("steps", int),
    "CFG scale": ("guidance_scale", float),
    "Seed": ("seed", int),
    "Model": ("model", str),
    "Lora UNet scale": ("unet_lora_scale", float),
    "Lora text encoder scale": ("text_lora_scale", float),
    PROMPT_KEY: ("prompt", str),
    NEGATIVE_KEY: ("negative_prompt", str),
}


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def _folders(folder: Path) -> list[Path]:
    """Sub-folders, without the hidden ones (staging and trash of interrupted writes)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# -- photos ----------------------------------------------------------------------------------------


def disk_photos(project: Project) -> tuple[list[PhotoRecord], list[str]]:
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


def _photo(project: Project, role: str, folder: Path) -> PhotoRecord | None:
    """The intake record of a photo folder, or None without a readable crop, mask and face.json."""
    import numpy as np
    from PIL import Image

    from engine.intake.checks import difference_hash

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

    return PhotoRecord(
        id=folder.name,
        role=role,
        status="accepted",
        filename=f"{folder.name}{original.suffix if original else '.png'}",
        original=file(original.name) if original else None,
        crop=file("crop.png"),
        mask=file("mask.png"),
        labels=file("labels.png"),
        preview=file("preview.png"),
        face=file("face.json"),
        embedding=file("embedding.npy"),
        embedding_model=None,
        landmarks=landmarks,
        bbox=bbox,
        sha256=file_sha256(original) if original else None,
        dhash=difference_hash(pixels),
        fallback=bool(details.get("fallbacks")),
        added=iso((folder / "crop.png").stat().st_mtime),
    )


# -- trainings -------------------------------------------------------------------------------------


def disk_runs(project: Project) -> list[RunRecord]:
    return [_run(project, folder) for folder in _folders(project.root / RUNS)]


def _run(project: Project, folder: Path) -> RunRecord:
    """A training's record from its events, newest checkpoint and artefact."""
    from engine.events import Failed, StepDone, read_events

    events = read_events(folder / "events.jsonl")
    steps = [e for e in events if isinstance(e, StepDone)]
    state = _newest_state(folder / "checkpoints")
    final = folder / FINAL
    started = events[0].time if events else folder.stat().st_mtime
    record = RunRecord(
        id=folder.name,
        started=iso(started),
        updated=iso(events[-1].time if events else started),
        preset=(state.get("config") or {}).get("preset") or _artefact_metadata(final).get("preset"),
        step=state.get("global_step"),
        total_steps=steps[-1].total_steps if steps else None,
    )
    if final.is_file():
        relative = final.relative_to(project.root).as_posix()
        return dataclasses.replace(record, status="finished", artefact=relative, final_artefact=relative)
    ended = [e for e in events if isinstance(e, Failed)]
    if _running(folder):
        return dataclasses.replace(record, status="running")
    if ended and ended[-1] is events[-1]:
        return dataclasses.replace(record, status="failed", error=ended[-1].message)
    return dataclasses.replace(record, status="stopped")


def progress_shown(run: RunRecord) -> dict[str, Any]:
    """What ``run``'s folder tells better than a manifest that may have missed the run's last update:
    its status, error and last update, the step and total where a checkpoint or event gives them, and
    its artefact once it finished."""
    shown: dict[str, Any] = {"status": run.status, "error": run.error, "updated": run.updated}
    if run.step is not None:
        shown["step"] = run.step
    if run.total_steps is not None:
        shown["total_steps"] = run.total_steps
    if run.finished:
        shown.update(
            artefact=run.artefact, final_artefact=run.final_artefact, artefact_step=run.artefact_step
        )
    return shown


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


def disk_outputs(project: Project) -> list[OutputRecord]:
    folder = project.root / "outputs"
    pictures = sorted(folder.glob("*.png")) if folder.is_dir() else []
    return [_output(project, path) for path in pictures if not path.name.startswith(".")]


def _output(project: Project, path: Path) -> OutputRecord:
    """An output's record from its PNG and the ``parameters`` text in it (no identity score)."""
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
        created=iso(path.stat().st_mtime),
    )


def _parameters_text(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return str(picture.info.get("parameters") or "")
    except (OSError, ValueError):
        return ""


def _parameters(text: str) -> tuple[dict[str, Any], str | None]:
    """The generation parameters and run id in an AUTOMATIC1111 ``parameters`` text."""
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
