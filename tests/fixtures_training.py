"""Face kits for the training tests (their projects come from `engine.demo.portraits`).

The kits use the real classes: OpenCV's Haar detector and an `IdentityModel`, around a tiny random
network (16-d, fast) or converted by onnx2torch from the demo kit's ArcFace stand-in (512-d, the
production path).
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.demo.portraits import EMBEDDING_DIM
from engine.store import atomic_path


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
