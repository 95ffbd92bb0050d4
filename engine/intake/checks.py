"""The checks of a decoded photo: one usable face (not several, small, cut off or blurry), the portrait
crop around it, its outlined face region, and no near-duplicate among the project's photos."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from engine.intake.outcome import _Refusal

if TYPE_CHECKING:
    from engine.faces import Face, FaceKit
    from engine.photos import PhotoRecord
    from engine.store import Project

CROP_SIZE = 512
CROP_CONTEXT = 2.5
"""Crop side in face-box sizes (when the photo is large enough)."""
CROP_FACE_HEIGHT = 0.45
"""Where the face-box centre sits in the crop, from the top."""
MIN_FACE = 80
"""Smallest face-box side in pixels of the original photo."""
SEVERAL_FACES_AREA = 0.3
"""A second face whose box is larger than this fraction of the largest makes the photo a group photo."""
MIN_VISIBLE = 0.9
"""A face box that lies less than this fraction inside the photo is cut off."""
MIN_SHARPNESS = 10.0
"""Variance of the Laplacian of the face, resized to 128 pixels; sharp faces score 70-200."""
MIN_FACE_MASK = 0.01
"""Smallest fraction of the crop the parsed face region must cover."""
DUPLICATE_COSINE = 0.95
DUPLICATE_HASH_BITS = 4
"""Near-duplicate if the 64-bit difference hashes of the crops differ in at most this many bits."""


def dominant_face(image: np.ndarray, name: str, kit: FaceKit) -> tuple[Face, float]:
    """The one usable face, and its sharpness; refuses none, several, small, cut-off or blurry faces."""
    faces = kit.detector.detect(image)
    if not faces:
        raise _Refusal(
            "no_face", f"No face was found in {name}; upload a photo in which one face is clearly visible."
        )
    face = max(faces, key=lambda f: f.area)
    others = [f for f in faces if f is not face and f.area > SEVERAL_FACES_AREA * face.area]
    if others:
        raise _Refusal(
            "several_faces",
            f"{name} shows {len(others) + 1} faces; upload a photo of one person only, or crop it to one face.",
        )
    height, width = image.shape[:2]
    x1, y1, x2, y2 = face.bbox
    visible = max(0.0, min(x2, width) - max(x1, 0)) * max(0.0, min(y2, height) - max(y1, 0))
    landmarks = np.asarray(face.landmarks)
    inside = np.all((landmarks >= 0) & (landmarks < [width, height]))
    if visible < MIN_VISIBLE * face.area or not inside:
        raise _Refusal(
            "face_cut_off",
            f"The face in {name} is cut off by the edge of the photo; upload one that shows the whole face.",
        )
    if min(face.width, face.height) < MIN_FACE:
        raise _Refusal(
            "face_too_small",
            f"The face in {name} is only {min(face.width, face.height):.0f} pixels wide; upload a closer or "
            f"larger photo in which the face is at least {MIN_FACE} pixels wide.",
        )
    sharpness = _sharpness(image, face)
    if sharpness < MIN_SHARPNESS:
        raise _Refusal(
            "blurry",
            f"The face in {name} is too blurry (sharpness {sharpness:.0f}, at least {MIN_SHARPNESS:.0f} needed); "
            "upload a sharper photo.",
        )
    return face, sharpness


def _sharpness(image: np.ndarray, face: Face) -> float:
    """Variance of the Laplacian of the face box, resized so that its longer side is 128 pixels."""
    import cv2

    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in face.bbox)
    region = image[max(y1, 0) : min(y2, height), max(x1, 0) : min(x2, width)]
    grey = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
    scale = 128 / max(grey.shape)
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def portrait_crop(image: np.ndarray, face: Face) -> tuple[np.ndarray, Face, list[int]]:
    """A ``CROP_SIZE`` square around the face (as large as the photo allows), the face in its
    coordinates, and the window ``[x, y, side]`` in the original."""
    import cv2

    height, width = image.shape[:2]
    side = int(min(round(CROP_CONTEXT * max(face.width, face.height)), width, height))
    cx, cy = face.center
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    y0 = int(np.clip(round(cy - CROP_FACE_HEIGHT * side), 0, height - side))
    window = image[y0 : y0 + side, x0 : x0 + side]
    interpolation = cv2.INTER_AREA if side > CROP_SIZE else cv2.INTER_CUBIC
    crop = cv2.resize(window, (CROP_SIZE, CROP_SIZE), interpolation=interpolation)
    scale = CROP_SIZE / side
    return np.ascontiguousarray(crop), face.transformed(scale, (-x0 * scale, -y0 * scale)), [x0, y0, side]


def face_region(labels: np.ndarray, name: str) -> np.ndarray:
    from engine.faces import face_mask

    mask = face_mask(labels)
    if mask.mean() < MIN_FACE_MASK:
        raise _Refusal(
            "no_face_region",
            f"The face in {name} could not be outlined; upload a clearer photo of the face, facing the camera.",
        )
    return mask


def difference_hash(image: np.ndarray) -> str:
    """64-bit difference hash (horizontal gradients of a 9x8 grey thumbnail) as 16 hex digits."""
    import cv2

    grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (9, 8), interpolation=cv2.INTER_AREA)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def check_duplicates(
    project: Project,
    role: str,
    name: str,
    digest: str,
    fingerprint: str,
    embedding: np.ndarray | None,
    existing: list[PhotoRecord],
) -> None:
    from engine.faces.identity import cosine

    for record in existing:
        same = record.sha256 == digest
        if not same and record.dhash:
            same = bin(int(record.dhash, 16) ^ int(fingerprint, 16)).count("1") <= DUPLICATE_HASH_BITS
        if not same and embedding is not None and record.embedding:
            try:
                other = np.load(project.path(record.embedding), allow_pickle=False)
            except (OSError, ValueError):
                other = None
            same = (
                other is not None
                and other.size == embedding.size
                and cosine(other, embedding) > DUPLICATE_COSINE
            )
        if same:
            raise _Refusal(
                "duplicate",
                f"{name} is nearly the same photo as {record.filename or 'one'} already among this "
                f"project's {role} photos; upload a different photo.",
            )
