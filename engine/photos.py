"""The photos of a project: the ``"images"`` section of the manifest, one `PhotoRecord` each.

Intake writes the records (`engine.intake.add_photo`); training, identity scoring and evaluation
read them through `photo_records`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from engine.store import Project

IMAGES = "images"
"""The manifest key of the photo records."""


@dataclass
class PhotoRecord:
    """One accepted photo; its JSON form is the manifest entry (paths relative to the project folder)."""

    id: str
    role: str
    """``source`` (the person) or ``reference`` (the style)."""
    status: str = "accepted"
    filename: str | None = None
    """The upload's name, as shown to the user."""
    original: str | None = None
    crop: str | None = None
    mask: str | None = None
    labels: str | None = None
    preview: str | None = None
    face: str | None = None
    """``face.json``: where intake found the face, in the crop and in the original."""
    embedding: str | None = None
    embedding_model: str | None = None
    """Name of the recogniser that made ``embedding``."""
    landmarks: list[float] | None = None
    """Five face landmarks in crop pixels, flattened."""
    bbox: list[float] | None = None
    """Face box in crop pixels: x1, y1, x2, y2."""
    size: list[int] | None = None
    sharpness: float | None = None
    sha256: str | None = None
    dhash: str | None = None
    fallback: bool = False
    """Whether a fallback face model found the face."""
    added: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> PhotoRecord:
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: item for key, item in value.items() if key in names})


def photo_records(project: Project, role: str | None = None) -> list[PhotoRecord]:
    """The project's photos, of one role or all, in upload order."""
    entries = project.manifest().get(IMAGES, [])
    return [PhotoRecord.from_json(e) for e in entries if role is None or e.get("role") == role]
