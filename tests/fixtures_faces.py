"""Face fixtures: stand-in model folders, kits, and the test photos that ship inside installed wheels."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.faces import Face, FaceKit


def wheel_photo(name: str) -> np.ndarray:
    """An RGB photo from insightface's wheel: ``Tom_Hanks_54745.png`` (one face) or ``t1.jpg`` (group)."""
    from PIL import Image

    return np.asarray(Image.open(insightface_image_path(name)).convert("RGB"))


def insightface_image_path(name: str) -> Path:
    import insightface

    return Path(insightface.__file__).parent / "data" / "images" / name


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def encode(image: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def face_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An asset folder holding every face stand-in and the demo marker, built once."""
    from engine.demo.faces import build_face_assets

    folder = tmp_path_factory.mktemp("face-assets")
    build_face_assets(folder)
    return folder


@pytest.fixture
def assets_copy(face_assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the stand-in folder, made the asset cache of this test."""
    folder = tmp_path / "assets"
    shutil.copytree(face_assets, folder)
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(folder))
    return folder


@pytest.fixture(scope="session")
def demo_kit(face_assets: Path) -> FaceKit:
    """The demo kit: Haar detection (the SCRFD file is a marked stand-in), stand-in BiSeNet and ArcFace."""
    from engine.faces import load_face_kit

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MAGICAPTURE_ASSETS", str(face_assets))
        return load_face_kit()


@pytest.fixture(scope="session")
def fallback_kit() -> FaceKit:
    """What a user gets offline without any face model: Haar cascades, ellipse masks, no recogniser."""
    from engine.faces.fallback import EllipseParser, HaarDetector

    return FaceKit(HaarDetector(), EllipseParser(), None, fallbacks=("detector", "parser", "recogniser"))


class ScriptedDetector:
    """Returns the faces it was given, whatever the image."""

    name = "scripted"

    def __init__(self, faces: list[Face]):
        self.faces = faces

    def detect(self, image: np.ndarray) -> list[Face]:
        return list(self.faces)


def face_at(x1: float, y1: float, x2: float, y2: float) -> Face:
    """A face with landmarks at their typical places inside the box."""
    from engine.faces.fallback import BOX_LANDMARKS

    size = np.array([x2 - x1, y2 - y1], dtype=np.float32)
    return Face((x1, y1, x2, y2), BOX_LANDMARKS * size + np.array([x1, y1], dtype=np.float32), 0.99)
