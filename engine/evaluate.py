"""`magicapture eval`: score a project's generated images with the paper's metrics, per training run.

Every output image (``manifest["outputs"]``) is scored against the project's photos: CSIM against
the source photos, style against the reference photos, and the aesthetic score on its own (see
`engine.metrics` for the definitions). Scores are averaged per training run, so runs trained with
different settings (a preset, Attention Refocusing on or off) sit side by side in one table whose
extra columns are the settings in which the runs differ. Each evaluation is saved as
``<project>/evaluations/<timestamp>.json``.

Protocol details: a generated image in which no face is detected scores CSIM 0 (its identity is
not recognisable) and counts against the ``faces`` column; its style embedding is then taken with
nothing masked. Faces are masked in every image by the union of the face-parsing masks of all
detected faces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.store import Project, atomic_write_json

if TYPE_CHECKING:
    import torch

    from engine.faces import Face, FaceKit
    from engine.metrics import Clip

EVALUATIONS = "evaluations"
NO_RUN = "none"
"""Run label of outputs that do not come from a training run."""
METRIC_COLUMNS = ("n", "faces", "csim", "style", "aesthetic")


class EvaluationError(Exception):
    """The project cannot be evaluated; the message says why and what to do."""


@dataclass(frozen=True)
class ImageScore:
    output: str
    run: str
    face: bool
    """Whether a face was detected in the generated image."""
    csim: float | None
    """Mean cosine to the source faces (0 without a detected face); None when identity is not measured."""
    style: float
    aesthetic: float


@dataclass(frozen=True)
class RunScore:
    run: str
    settings: dict[str, Any]
    """The run's training configuration, flattened (``{"preset": "paper", "ar.weight": 2.5, ...}``)."""
    n: int
    faces: int
    csim: float | None
    style: float
    aesthetic: float


@dataclass(frozen=True)
class EvalReport:
    project: str
    created: str
    models: dict[str, str]
    """Which CLIP, aesthetic head and face models produced the numbers."""
    runs: list[RunScore]
    images: list[ImageScore]
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    def compared_settings(self) -> list[str]:
        """Settings whose values differ between the runs (``preset`` first when present).

        Memory and speed options (`engine.config.MEMORY_FIELDS`) are left out: they do not change what
        a run learns.
        """
        from engine.config import MEMORY_FIELDS

        keys = sorted({key for run in self.runs for key in run.settings} - set(MEMORY_FIELDS))
        differing = [k for k in keys if len({repr(run.settings.get(k)) for run in self.runs}) > 1]
        if any("preset" in run.settings for run in self.runs):
            differing = ["preset", *(k for k in differing if k != "preset")]
        return differing

    def table(self) -> list[dict[str, Any]]:
        """One row per run: run, the compared settings, n, faces, csim, style, aesthetic."""
        settings = self.compared_settings()
        return [
            {
                "run": run.run,
                **{key: run.settings.get(key) for key in settings},
                **{column: getattr(run, column) for column in METRIC_COLUMNS},
            }
            for run in self.runs
        ]

    def markdown(self) -> str:
        rows = self.table()
        columns = list(rows[0])
        lines = [
            f"Evaluation of {self.project} ({self.created}); CLIP: {self.models['clip']}, faces: {self.models['faces']}",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        lines += ["| " + " | ".join(_cell(row[column]) for column in columns) + " |" for row in rows]
        lines += ["", *(f"- {note}" for note in self.notes)] if self.notes else []
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "created": self.created,
            "models": self.models,
            "table": self.table(),
            "runs": [asdict(run) for run in self.runs],
            "images": [asdict(image) for image in self.images],
            "notes": self.notes,
        }


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become tuples so values compare and hash."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def run_settings(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Flattened training configuration of every run in ``manifest["trainings"]``, by run id."""
    return {str(entry["id"]): flatten(entry.get("config") or {}) for entry in manifest.get("trainings", [])}


def evaluate_project(
    project: Project,
    run_ids: Iterable[str] | None = None,
    *,
    face_kit: FaceKit | None = None,
    clip: Clip | None = None,
    aesthetic: torch.nn.Module | None = None,
) -> EvalReport:
    """Score the outputs of ``run_ids`` (default: every run with outputs), save and return the report.

    Models not passed in are loaded: the face kit (with its offline fallback), CLIP ViT-L/14 and the
    LAION aesthetic head (both downloaded on first use).
    """
    from engine import metrics

    manifest = project.manifest()
    outputs, notes = _pick_outputs(project, manifest, run_ids)
    references = _photos(project, manifest, "reference")
    if not references:
        raise EvaluationError(
            f"Project {project.name!r} has no reference photos, so style cannot be measured."
        )
    sources = _photos(project, manifest, "source")

    # 1. Models.
    if face_kit is None:
        from engine.faces import load_face_kit

        face_kit = load_face_kit()
    clip = clip or metrics.load_clip()
    aesthetic = aesthetic if aesthetic is not None else metrics.load_aesthetic_head()
    head_width = aesthetic["layers"][0].in_features
    if head_width != clip.dim:
        raise EvaluationError(
            f"The aesthetic head expects {head_width}-wide CLIP embeddings but {clip.source} gives {clip.dim}; "
            f"use {metrics.DEFAULT_CLIP}, the CLIP the head was trained on."
        )
    if face_kit.is_fallback:
        notes.append(
            f"Approximate offline face models in use ({', '.join(face_kit.fallbacks)}); numbers are rough."
        )

    # 2. The project's photos: source identities, masked reference embeddings.
    source_faces = [e for e in (_identity(face_kit, image) for image in sources) if e is not None]
    if face_kit.scorer is None:
        notes.append("No face recogniser is installed, so CSIM was not measured.")
    elif not source_faces:
        notes.append("No face was found in the source photos, so CSIM was not measured.")
    reference_embeds = metrics.clip_embeddings(clip, [_masked(face_kit, image) for image in references])

    # 3. The outputs: faces, masked and whole CLIP embeddings.
    images = [_load_rgb(project.path(entry["file"])) for entry in outputs]
    faces = [face_kit.detector.detect(image) for image in images]
    style_embeds = metrics.clip_embeddings(
        clip, [_masked(face_kit, im, fs) for im, fs in zip(images, faces, strict=True)]
    )
    scores = metrics.aesthetic_score(metrics.clip_embeddings(clip, images), aesthetic)

    # 4. Per-image and per-run scores.
    style = metrics.pairwise_cosine(style_embeds, reference_embeds).mean(axis=1)
    per_image = []
    for index, (entry, image, found) in enumerate(zip(outputs, images, faces, strict=True)):
        identity = None
        if source_faces:
            identity = (
                metrics.csim(face_kit.scorer.embed(image, found[0]), np.stack(source_faces)) if found else 0.0
            )
        per_image.append(
            ImageScore(
                output=str(entry["id"]),
                run=_run_of(entry),
                face=bool(found),
                csim=identity,
                style=float(style[index]),
                aesthetic=float(scores[index]),
            )
        )
    settings = run_settings(manifest)
    runs = [
        _run_score(run, settings.get(run, {}), [s for s in per_image if s.run == run])
        for run in _runs(per_image)
    ]

    created = datetime.now(timezone.utc)
    models = {
        "clip": clip.source,
        "aesthetic": metrics.AESTHETIC_ASSET,
        "faces": ", ".join(
            p.name for p in (face_kit.detector, face_kit.parser, face_kit.scorer) if p is not None
        ),
    }
    path = _report_path(project, created)
    report = EvalReport(
        project.name, created.isoformat(timespec="seconds"), models, runs, per_image, notes, path
    )
    atomic_write_json(path, report.to_json())
    return report


def _run_of(entry: Mapping[str, Any]) -> str:
    return str(entry.get("run") or NO_RUN)


def _runs(images: list[ImageScore]) -> list[str]:
    return list(dict.fromkeys(image.run for image in images))


def _pick_outputs(
    project: Project, manifest: Mapping[str, Any], run_ids: Iterable[str] | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The output entries to score (in manifest order) and notes about the ones skipped."""
    entries = list(manifest.get("outputs", []))
    if run_ids is not None:
        wanted = [str(run) for run in run_ids]
        unknown = [run for run in wanted if run not in {_run_of(e) for e in entries}]
        if unknown:
            raise EvaluationError(
                f"Project {project.name!r} has no generated images from run(s) {', '.join(unknown)}; "
                "generate some with that run first."
            )
        entries = [e for e in entries if _run_of(e) in wanted]
    present = [e for e in entries if project.path(e["file"]).is_file()]
    if not present:
        raise EvaluationError(
            f"Project {project.name!r} has no generated images to evaluate; generate some first."
        )
    missing = len(entries) - len(present)
    return present, [f"{missing} generated image file(s) are missing and were skipped."] if missing else []


def _photos(project: Project, manifest: Mapping[str, Any], role: str) -> list[np.ndarray]:
    """The training crops of the project's photos of one role."""
    entries = [e for e in manifest.get("images", []) if e.get("role") == role]
    paths = [project.path("photos", role, str(e["id"]), "crop.png") for e in entries]
    return [_load_rgb(path) for path in paths if path.is_file()]


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _identity(kit: FaceKit, image: np.ndarray) -> np.ndarray | None:
    """The recogniser's embedding of the largest face, or None without a face or recogniser."""
    if kit.scorer is None:
        return None
    faces = kit.detector.detect(image)
    return kit.scorer.embed(image, faces[0]) if faces else None


def _masked(kit: FaceKit, image: np.ndarray, faces: list[Face] | None = None) -> np.ndarray:
    """The image with every detected face's parsed face region painted grey."""
    from engine.faces import face_mask
    from engine.metrics import mask_out

    faces = kit.detector.detect(image) if faces is None else faces
    mask = np.zeros(image.shape[:2], dtype=bool)
    for face in faces:
        mask |= face_mask(kit.parser.parse(image, face))
    return mask_out(image, mask)


def _run_score(run: str, settings: dict[str, Any], images: list[ImageScore]) -> RunScore:
    identities = [image.csim for image in images if image.csim is not None]
    return RunScore(
        run=run,
        settings=settings,
        n=len(images),
        faces=sum(image.face for image in images),
        csim=float(np.mean(identities)) if identities else None,
        style=float(np.mean([image.style for image in images])),
        aesthetic=float(np.mean([image.aesthetic for image in images])),
    )


def _report_path(project: Project, created: datetime) -> Path:
    stamp = created.strftime("%Y%m%dT%H%M%SZ")
    path = project.path(EVALUATIONS, f"{stamp}.json")
    count = 1
    while path.exists():
        count += 1
        path = project.path(EVALUATIONS, f"{stamp}-{count}.json")
    return path
