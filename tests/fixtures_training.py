"""Helpers for the training tests: a small project of synthetic portraits and a tiny face kit.

The project follows the intake contract (``manifest["images"]`` entries with crop, face mask,
landmarks, box and ArcFace embedding); the photos are drawn: a coloured background with an
elliptical face whose mask is exact. The face kits use the real classes: OpenCV's Haar detector
and an `IdentityModel`, around a tiny random network (16-d, fast) or converted by onnx2torch from
the demo kit's ArcFace stand-in (512-d, the production path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

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
    entries = []
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
            entries.append(
                {
                    "id": photo_id,
                    "role": role,
                    "status": "accepted",
                    "crop": str(folder / "crop.png"),
                    "mask": str(folder / "mask.png"),
                    "landmarks": landmarks.tolist(),
                    "bbox": box,
                    "embedding": str(folder / "embedding.npy"),
                }
            )
    project.update(lambda manifest: manifest["images"].extend(entries))
    return project


class TinyScorer:
    """A Scorer whose torch model is a tiny random CNN (same contract as ArcFace's)."""

    name = "tiny"
    dim = EMBEDDING_DIM

    def identity_model(self):
        from engine.faces.identity import IdentityModel

        torch.manual_seed(0)
        network = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, stride=4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(),
            torch.nn.Linear(128, EMBEDDING_DIM),
        )
        return IdentityModel(network, input_mean=127.5, input_std=127.5)


def tiny_face_kit():
    from engine.faces import FaceKit
    from engine.faces.fallback import EllipseParser, HaarDetector

    return FaceKit(detector=HaarDetector(), parser=EllipseParser(), scorer=TinyScorer())


def demo_face_kit(folder: Path):
    """Haar detection plus the demo kit's ArcFace stand-in (ONNX, 512-d) as the recogniser."""
    import onnx

    from engine.demo.faces import arcface_standin
    from engine.faces import FaceKit
    from engine.faces.fallback import EllipseParser, HaarDetector
    from engine.faces.identity import ArcFaceScorer

    path = Path(folder) / "w600k_r50.onnx"
    with atomic_path(path) as tmp:
        onnx.save(arcface_standin(), str(tmp))
    return FaceKit(detector=HaarDetector(), parser=EllipseParser(), scorer=ArcFaceScorer(path))
