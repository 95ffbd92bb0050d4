"""What intake makes of an upload: `Accepted` with its record, or `Refused` with a reason code."""

from __future__ import annotations

from dataclasses import dataclass

from engine.photos import PhotoRecord


@dataclass(frozen=True)
class Accepted:
    record: PhotoRecord


@dataclass(frozen=True)
class Refused:
    reason: str
    """Stable code: unreadable, unsupported_format, too_large, too_small, no_face, several_faces,
    face_too_small, face_cut_off, blurry, no_face_region, duplicate."""
    message: str


class _Refusal(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.refused = Refused(reason, message)
