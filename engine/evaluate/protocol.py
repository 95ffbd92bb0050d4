"""`evaluate_project`: the paper's protocol over a project's outputs, one saved report per call."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.evaluate.report import NO_RUN, UNAVAILABLE, EvalReport, EvaluationError, ImageScore, RunScore
from engine.evaluate.scoring import (
    accepted_photos,
    load_models,
    reference_masked,
    run_label,
    score_images,
    source_identities,
)
from engine.events import MethodReport
from engine.outputs import OutputRecord, output_records
from engine.runs import get_run
from engine.store import Project, atomic_write_json

if TYPE_CHECKING:
    import torch

    from engine.faces import FaceKit
    from engine.metrics import Clip

EVALUATIONS = "evaluations"
BATCH = 16
"""Output images loaded and embedded at a time."""


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

    outputs, notes = _pick_outputs(project, run_ids)
    references = accepted_photos(project, "reference")
    if not references:
        raise EvaluationError(
            f"Project {project.name!r} has no reference photos, so style cannot be measured."
        )
    sources = accepted_photos(project, "source")

    # 1. Models.
    face_kit, clip, aesthetic = load_models(face_kit, clip, aesthetic)
    if face_kit.is_fallback:
        notes.append(
            f"Approximate offline face models in use ({', '.join(face_kit.fallbacks)}); numbers are rough."
        )

    # 2. The project's photos: source identities (per recogniser), masked reference embeddings.
    columns, identities = source_identities(face_kit, project, sources)
    notes += [
        f"{column.label} {UNAVAILABLE}: {column.unavailable}" for column in columns if column.unavailable
    ]
    reference_embeds = metrics.clip_embeddings(clip, [reference_masked(project, r) for r in references])

    # 3. The outputs, a batch at a time.
    per_image: list[ImageScore] = []
    for start in range(0, len(outputs), BATCH):
        batch = outputs[start : start + BATCH]
        per_image += score_images(project, batch, face_kit, clip, aesthetic, identities, reference_embeds)

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


def _pick_outputs(project: Project, run_ids: Iterable[str] | None) -> tuple[list[OutputRecord], list[str]]:
    """The outputs to score (in manifest order) and notes about the ones skipped."""
    entries = output_records(project)
    if run_ids is not None:
        wanted = [str(run) for run in run_ids]
        unknown = [run for run in wanted if run not in {run_label(e) for e in entries}]
        if unknown:
            raise EvaluationError(
                f"Project {project.name!r} has no generated images from run(s) {', '.join(unknown)}; "
                "generate some with that run first."
            )
        entries = [e for e in entries if run_label(e) in wanted]
    present = [e for e in entries if project.path(e.file).is_file()]
    if not present:
        raise EvaluationError(
            f"Project {project.name!r} has no generated images to evaluate; generate some first."
        )
    missing = len(entries) - len(present)
    return present, [f"{missing} generated image file(s) are missing and were skipped."] if missing else []


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
