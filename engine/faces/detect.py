"""Face detection: the `Face` record and the SCRFD (insightface) and YuNet (OpenCV) detectors.

Images are RGB ``uint8`` arrays of shape ``(H, W, 3)``; boxes and landmarks are in their pixel
coordinates. Landmarks are five points in the order of the ArcFace template: the eye on the image's
left, the eye on its right, the nose tip, the left and the right mouth corner.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import UserError


class FaceModelError(UserError):
    """A face model file cannot be used; the message names the file and what to do."""


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face."""

    bbox: tuple[float, float, float, float]
    """``x1, y1, x2, y2`` in pixels."""
    landmarks: np.ndarray
    """``(5, 2)`` float32, pixels."""
    score: float
    """Detector confidence in [0, 1]."""

    @property
    def width(self) -> float:
        return self.bbox[2] - self.bbox[0]

    @property
    def height(self) -> float:
        return self.bbox[3] - self.bbox[1]

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2

    def transformed(self, scale: float, offset: tuple[float, float] = (0.0, 0.0)) -> Face:
        """The same face in coordinates ``p * scale + offset`` (a resize and/or a crop)."""
        shift = np.asarray(offset, dtype=np.float32)
        box = np.asarray(self.bbox, dtype=np.float32).reshape(2, 2) * scale + shift
        landmarks = (np.asarray(self.landmarks, dtype=np.float32) * scale + shift).astype(np.float32)
        return Face(tuple(float(v) for v in box.reshape(-1)), landmarks, self.score)

    def to_json(self) -> dict[str, Any]:
        return {
            "bbox": [round(float(v), 2) for v in self.bbox],
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
            "score": round(float(self.score), 4),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Face:
        return cls(
            tuple(float(v) for v in value["bbox"]),
            np.asarray(value["landmarks"], dtype=np.float32).reshape(5, 2),
            float(value["score"]),
        )


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in an RGB ``uint8`` image, largest first."""
        ...


def largest_first(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda face: face.area, reverse=True)


def onnx_providers() -> list[str]:
    """ONNX Runtime providers: CUDA first when this onnxruntime build has it, then CPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available[:1]


class ScrfdDetector:
    """insightface's SCRFD (``det_10g.onnx`` of the buffalo_l pack) through its own model class."""

    name = "scrfd"

    def __init__(
        self,
        model_file: Path,
        *,
        providers: list[str] | None = None,
        det_size: tuple[int, int] = (640, 640),
        threshold: float = 0.5,
    ):
        from insightface.model_zoo import SCRFD, get_model

        try:
            model = get_model(str(model_file), providers=providers or onnx_providers())
        except Exception as error:  # onnxruntime and protobuf raise many types for a bad file
            raise FaceModelError(
                f"The face detector {model_file} cannot be loaded ({error}); download it again."
            ) from error
        if not isinstance(model, SCRFD) or not model.use_kps:
            raise FaceModelError(
                f"{model_file} is not an SCRFD face detector with landmarks; download the face pack again."
            )
        model.prepare(ctx_id=0, input_size=det_size, det_thresh=threshold)
        self.model = model
        self.det_size = det_size

    def detect(self, image: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        boxes, points = self.model.detect(bgr, input_size=self.det_size)
        faces = [
            Face(tuple(float(v) for v in box[:4]), np.asarray(kps, dtype=np.float32), float(box[4]))
            for box, kps in zip(boxes, points, strict=True)
        ]
        return largest_first(faces)


class YuNetDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``): the detector of commercial mode."""

    name = "yunet"

    def __init__(self, model_file: Path, *, threshold: float = 0.6, max_side: int = 640):
        import cv2

        try:
            self.model = cv2.FaceDetectorYN.create(str(model_file), "", (320, 320), threshold, 0.3, 50)
        except cv2.error as error:
            raise FaceModelError(
                f"The face detector {model_file} cannot be loaded ({error}); download it again."
            ) from error
        self.max_side = max_side
        self._lock = threading.Lock()  # the OpenCV object keeps the input size between calls

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        small = cv2.resize(
            image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        with self._lock:
            self.model.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, rows = self.model.detect(bgr)
        faces = []
        for row in rows if rows is not None else []:
            x, y, w, h = (float(v) for v in row[:4])
            landmarks = np.asarray(row[4:14], dtype=np.float32).reshape(5, 2)
            faces.append(Face((x, y, x + w, y + h), landmarks, float(row[14])).transformed(1.0 / scale))
        return largest_first(faces)
