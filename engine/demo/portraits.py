"""Synthetic portraits for toy trainings: a project of drawn faces whose masks are exact.

Each photo is a coloured background with a few rectangles (the style) and an elliptical face with
eyes and a mouth; the project follows the intake contract (`PhotoRecord` entries with
crop, face mask, landmarks, box and a unit identity embedding). Used by the tests and the toy AR
ablation in ``bench/``, where real photos and face models are not needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.photos import IMAGES, PhotoRecord
from engine.store import Project, ProjectStore, atomic_path

EMBEDDING_DIM = 16
CROP = 128


def _portrait(
    rng: np.random.Generator, size: int, face_scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """An RGB portrait, its face mask, five landmarks and the face box."""
    background = rng.integers(0, 255, size=3)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # some texture for the style
        x, y = rng.integers(0, size, size=2)
        draw.rectangle(
            [int(x), int(y), int(x) + size // 6, int(y) + size // 6],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    cx, cy = size / 2 + rng.uniform(-size / 10, size / 10), size / 2 + rng.uniform(-size / 10, size / 10)
    rx, ry = size * 0.22 * face_scale, size * 0.3 * face_scale
    box = [cx - rx, cy - ry, cx + rx, cy + ry]
    draw.ellipse(box, fill=(224, 172, 140))
    landmarks = np.array(
        [
            [cx - 0.4 * rx, cy - 0.25 * ry],
            [cx + 0.4 * rx, cy - 0.25 * ry],
            [cx, cy + 0.1 * ry],
            [cx - 0.3 * rx, cy + 0.45 * ry],
            [cx + 0.3 * rx, cy + 0.45 * ry],
        ],
        dtype=np.float32,
    )
    for x, y in landmarks[:2]:
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 30, 30))
    draw.line([tuple(landmarks[3]), tuple(landmarks[4])], fill=(150, 40, 40), width=2)
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return np.asarray(image), np.asarray(mask), landmarks, box


def make_project(
    root: Path,
    *,
    sources: int = 2,
    references: int = 2,
    seed: int = 0,
    name: str = "demo",
    face_scale: float = 1.0,
    embedding_dim: int = EMBEDDING_DIM,
) -> Project:
    """A project with accepted synthetic source and reference photos (``CROP`` px crops)."""
    project = ProjectStore(root).create(name)
    rng = np.random.default_rng(seed)
    records: list[PhotoRecord] = []
    for role, count in (("source", sources), ("reference", references)):
        for index in range(count):
            photo_id = f"{role[:3]}{index}"
            image, mask, landmarks, box = _portrait(rng, CROP, face_scale)
            folder = Path("photos") / role / photo_id
            for name_, pixels in (("crop.png", image), ("mask.png", mask)):
                with atomic_path(project.path(str(folder / name_))) as tmp:
                    Image.fromarray(pixels).save(tmp, format="PNG")
            embedding = rng.normal(size=embedding_dim).astype(np.float32)
            with atomic_path(project.path(str(folder / "embedding.npy"))) as tmp, open(tmp, "wb") as handle:
                np.save(handle, embedding / np.linalg.norm(embedding))
            records.append(
                PhotoRecord(
                    id=photo_id,
                    role=role,
                    crop=str(folder / "crop.png"),
                    mask=str(folder / "mask.png"),
                    landmarks=landmarks.tolist(),
                    bbox=box,
                    embedding=str(folder / "embedding.npy"),
                )
            )
    project.update(lambda manifest: manifest[IMAGES].extend(record.to_json() for record in records))
    return project
