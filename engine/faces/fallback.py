"""Offline fallback: OpenCV's bundled Haar cascades and an elliptical face mask.

Used only when the real face models are absent and cannot be downloaded (or, in demo mode, in
place of a random-weight detector stand-in); the kit that uses them says so (`FaceKit.is_fallback`).
Frontal faces only; landmarks come from the eye cascade when it finds both eyes, otherwise from
typical positions inside the face box, so alignment and masks are approximate.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np

from .detect import Face, FaceModelError, largest_first

BOX_LANDMARKS = np.array(
    [[0.29, 0.41], [0.70, 0.41], [0.50, 0.64], [0.33, 0.88], [0.67, 0.88]], dtype=np.float32
)
"""Typical landmark positions inside an OpenCV frontal-face box, in box widths/heights."""


def _two_point_similarity(points: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Move ``points`` by the similarity taking the segment ``old`` (2x2) onto ``new`` (2x2)."""
    z = complex(*(new[1] - new[0])) / complex(*(old[1] - old[0]))
    moved = [complex(*new[0]) + z * (complex(*p) - complex(*old[0])) for p in points]
    return np.array([[m.real, m.imag] for m in moved], dtype=np.float32)


class HaarDetector:
    """Viola-Jones frontal-face cascade plus the eye cascade, both shipped inside opencv-python."""

    name = "haar"

    def __init__(self, *, max_side: int = 640, min_neighbors: int = 5):
        import cv2

        folder = Path(cv2.data.haarcascades)
        self.faces = cv2.CascadeClassifier(str(folder / "haarcascade_frontalface_alt2.xml"))
        self.eyes = cv2.CascadeClassifier(str(folder / "haarcascade_eye.xml"))
        if self.faces.empty() or self.eyes.empty():
            raise FaceModelError(
                f"OpenCV's Haar cascades are missing from {folder}; reinstall opencv-python."
            )
        self.max_side = max_side
        self.min_neighbors = min_neighbors
        self._lock = threading.Lock()  # one cascade evaluation at a time per classifier object

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        faces = []
        with self._lock:
            boxes, _, weights = self.faces.detectMultiScale3(
                gray,
                scaleFactor=1.1,
                minNeighbors=self.min_neighbors,
                minSize=(24, 24),
                outputRejectLevels=True,
            )
            for (x, y, w, h), weight in zip(boxes, np.ravel(weights), strict=True):
                landmarks = self._landmarks(gray, float(x), float(y), float(w), float(h))
                score = 1.0 / (1.0 + math.exp(-float(weight)))
                faces.append(Face((x, y, x + w, y + h), landmarks, score).transformed(1.0 / scale))
        return largest_first(faces)

    def _landmarks(self, gray: np.ndarray, x: float, y: float, w: float, h: float) -> np.ndarray:
        guess = BOX_LANDMARKS * np.array([w, h], dtype=np.float32) + np.array([x, y], dtype=np.float32)
        top, bottom = int(y + 0.15 * h), int(y + 0.6 * h)
        region = gray[top:bottom, int(x) : int(x + w)]
        low, high = max(6, int(w / 8)), max(7, int(w / 3))
        found = self.eyes.detectMultiScale(region, 1.1, 4, minSize=(low, low), maxSize=(high, high))
        centres = np.array(
            [[ex + ew / 2 + int(x), ey + eh / 2 + top] for ex, ey, ew, eh in found], np.float32
        )
        eyes = []
        for expected in guess[:2]:
            if len(centres) == 0:
                return guess
            distance = np.linalg.norm(centres - expected, axis=1)
            if distance.min() > 0.15 * w:
                return guess
            eyes.append(centres[distance.argmin()])
        eyes = np.array(eyes)
        span = eyes[1] - eyes[0]
        if not 0.3 * w < np.linalg.norm(span) < 0.55 * w or abs(span[1]) > 0.45 * abs(span[0]):
            return guess
        return _two_point_similarity(guess, guess[:2], eyes)


class EllipseParser:
    """Approximate face region: an ellipse laid on the landmarks, labelled skin (class 1)."""

    name = "ellipse"

    def parse(self, image: np.ndarray, face: Face) -> np.ndarray:
        import cv2

        landmarks = np.asarray(face.landmarks, dtype=np.float64)
        left, right = landmarks[0], landmarks[1]
        span = right - left
        distance = max(float(np.linalg.norm(span)), 1.0)
        down = np.array([-span[1], span[0]]) / distance
        centre = (left + right) / 2 + 0.35 * distance * down
        axes = (1.05 * distance, 1.45 * distance)
        angle = math.degrees(math.atan2(span[1], span[0]))
        labels = np.zeros(image.shape[:2], dtype=np.uint8)
        shift = 4  # sub-pixel precision for cv2.ellipse
        cv2.ellipse(
            labels,
            tuple(int(round(v * 2**shift)) for v in centre),
            tuple(int(round(v * 2**shift)) for v in axes),
            angle, 0, 360, 1, -1, cv2.LINE_8, shift,
        )  # fmt: skip
        return labels
