"""Identity scores: how much a face looks like the project's source photos, and the face kit that scores.

The score of an image is the cosine between the recogniser's embedding (ArcFace, or SFace in
commercial mode) of its largest face and the unit mean of the source photos' embeddings. The
networks themselves live in `engine.faces`; the kit used when the caller passes none is loaded
once per licence mode and asset folder and kept (see `engine.model_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from engine.model_cache import ModelCache
from engine.photos import photo_records

if TYPE_CHECKING:
    from engine.faces import Face, FaceKit
    from engine.store import Project

_FACE_KITS: ModelCache[tuple[bool, str], FaceKit] = ModelCache()


def _kit_key(commercial: bool) -> tuple[bool, str]:
    from engine.assets import assets_dir

    return commercial, str(assets_dir())


def shared_face_kit(commercial: bool = False) -> FaceKit:
    """The face models for scoring and paste-back, loaded once per asset folder (pass a kit to use another)."""
    from engine.faces import load_face_kit

    return _FACE_KITS.get(_kit_key(commercial), lambda: load_face_kit(commercial=commercial))


def loaded_face_kit(commercial: bool = False) -> FaceKit | None:
    """`shared_face_kit` if it is loaded already, else None (never loads it)."""
    return _FACE_KITS.peek(_kit_key(commercial))


def unit_mean(embeddings: Sequence[np.ndarray]) -> np.ndarray | None:
    """The normalised mean of identity embeddings of one size; None if there are none or it is zero.

    The mean rather than one photo: it averages out each photo's pose, light and expression.
    """
    vectors = [np.asarray(e, np.float64).ravel() for e in embeddings]
    if not vectors or len({v.size for v in vectors}) != 1:
        return None
    mean = np.mean(vectors, axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else None


def source_embedding(project: Project, kit: FaceKit) -> np.ndarray | None:
    """Unit mean of the source photos' identity embeddings made by ``kit``'s recogniser, or None."""
    if kit.scorer is None:
        return None
    vectors = []
    for record in photo_records(project, "source"):
        if not record.embedding or record.embedding_model not in (None, kit.scorer.name):
            continue
        path = project.path(record.embedding)
        if path.is_file():
            vectors.append(np.load(path, allow_pickle=False))
    return unit_mean(vectors)


def identity_score(
    kit: FaceKit, image: np.ndarray, reference: np.ndarray | None, face: Face | None = None
) -> float | None:
    """ArcFace cosine of the largest face in ``image`` to ``reference``; None without face or reference.

    A given ``face`` is scored where it lies, without detection.
    """
    from engine.faces.identity import cosine

    if kit.scorer is None or reference is None:
        return None
    if face is None:
        faces = kit.detector.detect(image)
        if not faces:
            return None
        face = faces[0]
    embedding = kit.scorer.embed(image, face)
    if embedding.size != reference.size:
        return None
    return round(cosine(embedding, reference), 4)
