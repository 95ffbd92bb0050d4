"""`magicapture eval`: score a project's generated images with the paper's metrics, per training run.

Every output image (``manifest["outputs"]``) is scored against the project's photos: CSIM against
the source photos, style against the reference photos, and the aesthetic score on its own (see
`engine.metrics` for the definitions). Scores are averaged per training run, so runs trained with
different settings (a preset, Attention Refocusing on or off) sit side by side in one table whose
extra columns are the settings in which the runs differ (read from each run's artefact).
Post-processed outputs (restored, upscaled: entries with a ``parent``) are averaged apart from the
raw ones, as in the paper's "MagiCapture + post-processing" row. Each evaluation is saved as
``<project>/evaluations/<timestamp>.json``.

Identity is measured twice, each in its own labelled column: by the recogniser the identity loss
trains against (ArcFace; SFace in commercial mode), whose score training pushes up directly and so
flatters the run, and by a second, independent recogniser (the other of the two). A recogniser
whose weights are missing or refused (commercial mode refuses ArcFace's licence) leaves its column
marked unavailable, with the reason among the report's notes. Artefacts do not record which
recogniser their run trained against, so the kit's mode says it: evaluate runs trained with
``--commercial`` with ``--commercial`` too.

Protocol details: only the largest face of an image counts. A generated image in which no face
is detected scores CSIM 0 (its identity is not recognisable) and counts against the ``faces``
column; its style embedding is then taken with nothing masked. Source identities come from the
faces intake found in the stored crops, and reference faces are masked with intake's stored face
mask, so the photos are scored exactly as training saw them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import UserError
from engine.events import MethodReport
from engine.photos import PhotoRecord, photo_records
from engine.runs import get_run
from engine.store import Project, atomic_write_json

if TYPE_CHECKING:
    import torch

    from engine.faces import Face, FaceKit
    from engine.faces.identity import Scorer
    from engine.metrics import Clip

EVALUATIONS = "evaluations"
NO_RUN = "none"
"""Run label of outputs that do not come from a training run."""
METRIC_COLUMNS = ("n", "faces", "csim", "style", "aesthetic")
"""The metrics of a run, in table order; "csim" stands for the identity columns (`IdentityColumn`)."""
TRAINED = "trained against"
INDEPENDENT = "independent"
UNAVAILABLE = "unavailable"
BATCH = 16
"""Output images loaded and embedded at a time."""


class EvaluationError(UserError):
    """The project cannot be evaluated; the message says why and what to do."""


@dataclass(frozen=True)
class IdentityColumn:
    """One CSIM column: the recogniser that measured it, its role, and why it was not measured if it was not."""

    recogniser: str
    """`engine.faces.identity.Scorer.name`: "arcface" or "sface"."""
    role: str
    """`TRAINED` (the identity loss's own network) or `INDEPENDENT`."""
    field: str
    """The attribute of `ImageScore` and `RunScore` holding its numbers: "csim" or "csim_independent"."""
    unavailable: str | None = None

    @property
    def label(self) -> str:
        from engine.faces import RECOGNISER_LABELS

        return f"CSIM ({RECOGNISER_LABELS[self.recogniser]}, {self.role})"


@dataclass(frozen=True)
class ImageScore:
    output: str
    run: str
    post: bool
    """Whether the image is a post-processed version of another output (restored, upscaled)."""
    face: bool
    """Whether a face was detected in the generated image."""
    csim: float | None
    """Mean cosine to the source faces (0 without a detected face); None when identity is not measured.

    Measured by the recogniser the identity loss trains against."""
    style: float
    aesthetic: float
    csim_independent: float | None = None
    """The same, measured by the independent recogniser."""


@dataclass(frozen=True)
class RunScore:
    """The mean scores of one run's outputs, the raw ones or the post-processed ones."""

    run: str
    post: bool
    settings: dict[str, Any]
    """The run's training configuration (``{"preset": "paper", "ar_weight": 2.5, ...}``)."""
    n: int
    faces: int
    csim: float | None
    style: float
    aesthetic: float
    csim_independent: float | None = None


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
    identity: tuple[IdentityColumn, ...] = ()
    """The CSIM columns: the trained-against recogniser's, then the independent one's."""
    training: dict[str, MethodReport] = field(default_factory=dict)
    """Run -> the last report of what its method did (`engine.training.monitor`), for runs that have one."""

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

    def metric_columns(self) -> dict[str, str]:
        """The metric columns of the table, label -> `RunScore` attribute (one column per recogniser for CSIM)."""
        columns = {}
        for metric in METRIC_COLUMNS:
            if metric == "csim" and self.identity:
                columns |= {column.label: column.field for column in self.identity}
            else:
                columns[metric] = metric
        return columns

    def table(self) -> list[dict[str, Any]]:
        """One row per run (and per raw/post-processed): run, [post,] the compared settings, the metrics."""
        settings = self.compared_settings()
        post = any(run.post for run in self.runs)
        metrics = self.metric_columns()
        return [
            {
                "run": run.run,
                **({"post": "yes" if run.post else "no"} if post else {}),
                **{key: run.settings.get(key) for key in settings},
                **{label: getattr(run, attribute) for label, attribute in metrics.items()},
            }
            for run in self.runs
        ]

    def markdown(self) -> str:
        rows = self.table()
        columns = list(rows[0])
        metrics = self.metric_columns()
        unavailable = {column.label for column in self.identity if column.unavailable}
        lines = [
            f"Evaluation of {self.project} ({self.created}); CLIP: {self.models['clip']}, faces: {self.models['faces']}",
            "",
            "| " + " | ".join(columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        lines += [
            "| "
            + " | ".join(
                UNAVAILABLE if column in unavailable else _cell(column in metrics, row[column])
                for column in columns
            )
            + " |"
            for row in rows
        ]
        if self.training:
            lines += ["", "How each run's method went (its last report):"]
            lines += [f"- {run}: {training_summary(report)}" for run, report in self.training.items()]
        lines += ["", *(f"- {note}" for note in self.notes)] if self.notes else []
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "created": self.created,
            "models": self.models,
            "identity": [asdict(column) | {"label": column.label} for column in self.identity],
            "table": self.table(),
            "runs": [asdict(run) for run in self.runs],
            "images": [asdict(image) for image in self.images],
            "notes": self.notes,
            "training": {run: report.to_dict() for run, report in self.training.items()},
        }


def training_summary(report: MethodReport) -> str:
    """Each token's attention at the end against the start of phase 2 and its share outside; faces found; skips."""
    parts = []
    for token, level in sorted(report.attention.items()):
        start = report.attention_start.get(token)
        kept = f" ({level / start:.0%} of its phase-2 start {start:.2e})" if start else ""
        share = report.outside_share.get(token)
        outside = f", {share:.0%} of it outside its region" if share is not None else ""
        parts.append(f"{token} attention {level:.2e}{kept}{outside}")
    if report.detection_rate is not None:
        tried = sum(tries for _, tries in report.face_found.values())
        parts.append(f"faces found in {report.detection_rate:.0%} of {tried} identity estimates")
    if report.skipped_steps:
        parts.append(f"{report.skipped_steps} of {report.steps} steps skipped by the fp16 scaler")
    return "; ".join(parts) or "no attention or identity figures (phase 2 did not run)"


def last_method_reports(project: Project, run_ids: Iterable[str]) -> dict[str, MethodReport]:
    """Each run's last `MethodReport` from its event log (runs without one are left out)."""
    from engine.events import read_events
    from engine.runs import RUNS

    found = {}
    for run in run_ids:
        reports = [
            e for e in read_events(project.path(RUNS, run, "events.jsonl")) if isinstance(e, MethodReport)
        ]
        if reports:
            found[run] = reports[-1]
    return found


def _cell(metric: bool, value: Any) -> str:
    """Metrics with three decimals, settings as short as they read (2.5, 0.0001), missing as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if metric else f"{value:g}"
    return str(value)


def run_settings(project: Project, run_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Training configuration of some runs, by run id: the one recorded in the artefact, else the preset."""
    from engine.artefact import ArtefactError, load_artefact

    settings = {}
    for run in run_ids:
        record = get_run(project, run)
        settings[run] = {"preset": record.preset} if record and record.preset is not None else {}
        if record and record.artefact:
            with contextlib.suppress(ArtefactError):
                settings[run] = load_artefact(project.path(record.artefact)).metadata.get(
                    "config", settings[run]
                )
    return settings


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
    LAION aesthetic head (both downloaded on first use). The independent recogniser (see the module
    docstring) always comes from the asset registry, downloaded on first use, in the kit's mode.
    """
    from engine import metrics

    manifest = project.manifest()
    outputs, notes = _pick_outputs(project, manifest, run_ids)
    references = _photos(project, "reference")
    if not references:
        raise EvaluationError(
            f"Project {project.name!r} has no reference photos, so style cannot be measured."
        )
    sources = _photos(project, "source")

    # 1. Models.
    face_kit, clip, aesthetic = _models(face_kit, clip, aesthetic)
    if face_kit.is_fallback:
        notes.append(
            f"Approximate offline face models in use ({', '.join(face_kit.fallbacks)}); numbers are rough."
        )

    # 2. The project's photos: source identities (per recogniser), masked reference embeddings.
    columns, identities = _identities(face_kit, project, sources)
    notes += [
        f"{column.label} {UNAVAILABLE}: {column.unavailable}" for column in columns if column.unavailable
    ]
    reference_embeds = metrics.clip_embeddings(clip, [_reference_masked(project, r) for r in references])

    # 3. The outputs, a batch at a time.
    per_image: list[ImageScore] = []
    for start in range(0, len(outputs), BATCH):
        batch = outputs[start : start + BATCH]
        per_image += _score_batch(project, batch, face_kit, clip, aesthetic, identities, reference_embeds)

    # 4. Per-run means, the saved report.
    groups = dict.fromkeys((image.run, image.post) for image in per_image)
    settings = run_settings(project, dict.fromkeys(run for run, _ in groups))
    runs = [
        _run_score(run, post, settings[run], [i for i in per_image if (i.run, i.post) == (run, post)])
        for run, post in groups
    ]

    created = datetime.now(timezone.utc)
    models = {
        "clip": clip.source,
        "aesthetic": metrics.AESTHETIC_ASSET,
        "faces": ", ".join(
            p.name for p in (face_kit.detector, face_kit.parser, face_kit.scorer) if p is not None
        ),
        "independent": identities[1][0].name if identities[1] is not None else UNAVAILABLE,
    }
    path = _report_path(project, created)
    report = EvalReport(
        project=project.name,
        created=created.isoformat(timespec="seconds"),
        models=models,
        runs=runs,
        images=per_image,
        notes=notes,
        path=path,
        identity=columns,
        training=last_method_reports(project, dict.fromkeys(run for run, _ in groups if run != NO_RUN)),
    )
    atomic_write_json(path, report.to_json())
    return report


def _models(
    face_kit: FaceKit | None, clip: Clip | None, aesthetic: torch.nn.Module | None
) -> tuple[FaceKit, Clip, torch.nn.Module]:
    """The models passed in, the others loaded; an aesthetic head for another CLIP is refused."""
    from engine import metrics

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
    return face_kit, clip, aesthetic


def _identities(
    kit: FaceKit, project: Project, sources: list[PhotoRecord]
) -> tuple[tuple[IdentityColumn, IdentityColumn], list[tuple[Scorer, np.ndarray] | None]]:
    """The two CSIM columns and, for each, its scorer with the source embeddings (None where unavailable)."""
    columns, scorers = _identity_columns(kit, bool(sources))
    identities = [
        (scorer, np.stack([_source_identity(scorer, project, record) for record in sources]))
        if scorer is not None
        else None
        for scorer in scorers
    ]
    return columns, identities


def _identity_columns(
    kit: FaceKit, has_sources: bool
) -> tuple[tuple[IdentityColumn, IdentityColumn], tuple[Scorer | None, Scorer | None]]:
    """The two CSIM columns (trained against, independent) and the scorer of each (None where unavailable)."""
    from engine import assets
    from engine.faces import RECOGNISER_ASSETS, FaceModelError, load_recogniser, trained_recogniser

    trained = trained_recogniser(kit)
    other = "arcface" if trained == "sface" else "sface"
    why_trained = why_other = None
    scorer = independent = None
    if not has_sources:
        why_trained = why_other = "the project has no source photos."
    else:
        scorer = kit.scorer
        if scorer is None:
            why_trained = (
                "no face recogniser is installed; run "
                f"`magicapture models download {RECOGNISER_ASSETS[trained]}` and evaluate again."
            )
        try:
            independent = load_recogniser(other, commercial=kit.commercial)
        except (assets.AssetError, FaceModelError) as error:
            why_other = str(error)
    columns = (
        IdentityColumn(trained, TRAINED, "csim", why_trained),
        IdentityColumn(other, INDEPENDENT, "csim_independent", why_other),
    )
    return columns, (scorer, independent)


def _score_batch(
    project: Project,
    entries: list[dict[str, Any]],
    kit: FaceKit,
    clip: Clip,
    aesthetic: torch.nn.Module,
    identities: list[tuple[Scorer, np.ndarray] | None],
    reference_embeds: np.ndarray,
) -> list[ImageScore]:
    """Detect faces, then score identity, masked style and aesthetic of some output images."""
    from engine import metrics

    images = [_load(project.path(entry["file"]), "RGB") for entry in entries]
    faces = [kit.detector.detect(image) for image in images]
    masked = [_masked(kit, image, found) for image, found in zip(images, faces, strict=True)]
    style = metrics.pairwise_cosine(metrics.clip_embeddings(clip, masked), reference_embeds).mean(axis=1)
    beauty = metrics.aesthetic_score(metrics.clip_embeddings(clip, images), aesthetic)
    scores = []
    for index, (entry, image, found) in enumerate(zip(entries, images, faces, strict=True)):
        trained, independent = (_identity(pair, image, found) for pair in identities)
        scores.append(
            ImageScore(
                output=str(entry["id"]),
                run=_run_of(entry),
                post=bool(entry.get("parent")),
                face=bool(found),
                csim=trained,
                style=float(style[index]),
                aesthetic=float(beauty[index]),
                csim_independent=independent,
            )
        )
    return scores


def _identity(pair: tuple[Scorer, np.ndarray] | None, image: np.ndarray, faces: list[Face]) -> float | None:
    """CSIM of the largest face by one recogniser (0 without a face); None when that recogniser is unavailable."""
    from engine import metrics

    if pair is None:
        return None
    scorer, sources = pair
    return metrics.csim(scorer.embed(image, faces[0]), sources) if faces else 0.0


def _run_of(entry: Mapping[str, Any]) -> str:
    return str(entry.get("run") or NO_RUN)


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


def _photos(project: Project, role: str) -> list[PhotoRecord]:
    """The accepted photos of one role whose crop is on disk (what training uses)."""
    records = [r for r in photo_records(project, role) if r.accepted and r.crop]
    return [r for r in records if project.path(r.crop).is_file()]


def _load(path: Path, mode: str) -> np.ndarray:
    """A writable ``uint8`` array of the image at ``path`` in PIL mode ``mode`` ("RGB", "L")."""
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert(mode))


def _source_identity(scorer: Scorer, project: Project, record: PhotoRecord) -> np.ndarray:
    """A recogniser's embedding of the face intake found in a source crop."""
    from engine.faces import Face

    face = Face(tuple(record.bbox), np.asarray(record.landmarks, np.float32).reshape(5, 2), 1.0)
    return scorer.embed(_load(project.path(record.crop), "RGB"), face)


def _reference_masked(project: Project, record: PhotoRecord) -> np.ndarray:
    """A reference crop with the face region intake stored (``mask.png``) painted grey."""
    from engine.metrics import mask_out

    return mask_out(_load(project.path(record.crop), "RGB"), _load(project.path(record.mask), "L") > 127)


def _masked(kit: FaceKit, image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """The image with the parsed face region of its largest face painted grey (as intake masks photos)."""
    from engine.faces import face_mask
    from engine.metrics import mask_out

    return mask_out(image, face_mask(kit.parser.parse(image, faces[0])) if faces else None)


def _mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None, None if there are none."""
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def _run_score(run: str, post: bool, settings: dict[str, Any], images: list[ImageScore]) -> RunScore:
    return RunScore(
        run=run,
        post=post,
        settings=settings,
        n=len(images),
        faces=sum(image.face for image in images),
        csim=_mean(image.csim for image in images),
        style=float(np.mean([image.style for image in images])),
        aesthetic=float(np.mean([image.aesthetic for image in images])),
        csim_independent=_mean(image.csim_independent for image in images),
    )


def _report_path(project: Project, created: datetime) -> Path:
    stamp = created.strftime("%Y%m%dT%H%M%SZ")
    path = project.path(EVALUATIONS, f"{stamp}.json")
    count = 1
    while path.exists():
        count += 1
        path = project.path(EVALUATIONS, f"{stamp}-{count}.json")
    return path
