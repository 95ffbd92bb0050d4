"""Scoring output images: the models, the source identities per recogniser, masked style and aesthetic."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.evaluate.report import INDEPENDENT, NO_RUN, TRAINED, EvaluationError, IdentityColumn, ImageScore
from engine.outputs import OutputRecord
from engine.photos import PhotoRecord, photo_records
from engine.store import Project

if TYPE_CHECKING:
    import torch

    from engine.faces import Face, FaceKit
    from engine.faces.identity import Scorer
    from engine.metrics import Clip


def load_models(
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


def source_identities(
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


def run_label(record: OutputRecord) -> str:
    """The run an output comes from, `NO_RUN` for outputs made without one."""
    return record.run or NO_RUN


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


def score_images(
    project: Project,
    records: list[OutputRecord],
    kit: FaceKit,
    clip: Clip,
    aesthetic: torch.nn.Module,
    identities: list[tuple[Scorer, np.ndarray] | None],
    reference_embeds: np.ndarray,
) -> list[ImageScore]:
    """Detect faces, then score identity, masked style and aesthetic of some output images."""
    from engine import metrics

    images = [_load(project.path(record.file), "RGB") for record in records]
    faces = [kit.detector.detect(image) for image in images]
    masked = [_masked(kit, image, found) for image, found in zip(images, faces, strict=True)]
    style = metrics.pairwise_cosine(metrics.clip_embeddings(clip, masked), reference_embeds).mean(axis=1)
    beauty = metrics.aesthetic_score(metrics.clip_embeddings(clip, images), aesthetic)
    scores = []
    for index, (record, image, found) in enumerate(zip(records, images, faces, strict=True)):
        trained, independent = (_identity(pair, image, found) for pair in identities)
        scores.append(
            ImageScore(
                output=record.id,
                run=run_label(record),
                post=bool(record.parent),
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


def accepted_photos(project: Project, role: str) -> list[PhotoRecord]:
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


def reference_masked(project: Project, record: PhotoRecord) -> np.ndarray:
    """A reference crop with the face region intake stored (``mask.png``) painted grey."""
    from engine.metrics import mask_out

    return mask_out(_load(project.path(record.crop), "RGB"), _load(project.path(record.mask), "L") > 127)


def _masked(kit: FaceKit, image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """The image with the parsed face region of its largest face painted grey (as intake masks photos)."""
    from engine.faces import face_mask
    from engine.metrics import mask_out

    return mask_out(image, face_mask(kit.parser.parse(image, faces[0])) if faces else None)
