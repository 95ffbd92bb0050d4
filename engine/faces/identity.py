"""Identity embeddings: ONNX recognisers for scoring, and the same network in torch for the loss.

`ArcFaceScorer` runs the buffalo_l ``w600k_r50.onnx`` through insightface's ``ArcFaceONNX``;
`SFaceScorer` runs OpenCV's SFace (commercial mode). Both return L2-normalised embeddings of a
face given its landmarks. `IdentityModel` is the ONNX graph converted to torch (onnx2torch),
frozen, taking already aligned faces in [-1, 1] with the scorer's exact preprocessing, so that
a loss on its embedding sends gradients to the image.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .detect import Face, FaceModelError, onnx_providers


class Scorer(Protocol):
    name: str
    dim: int

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """L2-normalised embedding (float32) of ``face`` in an RGB ``uint8`` image."""
        ...

    def identity_model(self) -> IdentityModel:
        """The same recogniser as a differentiable torch module."""
        ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _normalised(feature: np.ndarray) -> np.ndarray:
    feature = np.asarray(feature, dtype=np.float32).ravel()
    return feature / max(float(np.linalg.norm(feature)), 1e-12)


class IdentityModel(nn.Module):
    """Frozen recogniser: aligned faces ``[B, 3, 112, 112]`` RGB in [-1, 1] -> unit embeddings ``[B, D]``.

    The network sees ``((x + 1) * 127.5 - input_mean) / input_std``, i.e. 0-255 RGB pixels
    normalised the way the ONNX scorer feeds it. It stays in eval mode (its batch norms never
    update); its parameters do not require grad, but gradients flow to the input.
    """

    def __init__(self, network: nn.Module, *, input_mean: float, input_std: float):
        super().__init__()
        self.network = network
        self.input_mean = float(input_mean)
        self.input_std = float(input_std)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_onnx(cls, model_file: Path, *, input_mean: float, input_std: float) -> IdentityModel:
        from onnx2torch import convert

        try:
            network = convert(str(model_file))
        except Exception as error:  # onnx2torch raises NotImplementedError, KeyError... per graph
            raise FaceModelError(
                f"The face recogniser {model_file} cannot be converted to torch ({error}); "
                "the identity loss needs a recogniser that onnx2torch supports."
            ) from error
        return cls(network.float(), input_mean=input_mean, input_std=input_std)

    def train(self, mode: bool = True) -> IdentityModel:
        return super().train(False)

    def forward(self, aligned: torch.Tensor) -> torch.Tensor:
        pixels = (aligned + 1) * 127.5
        features = self.network((pixels - self.input_mean) / self.input_std)
        return F.normalize(features.float().flatten(1), dim=1)


class ArcFaceScorer:
    """buffalo_l's ArcFace (ResNet-50, 512-d) through insightface's ``ArcFaceONNX``."""

    name = "arcface"

    def __init__(self, model_file: Path, *, providers: list[str] | None = None):
        from insightface.model_zoo import ArcFaceONNX, get_model

        try:
            model = get_model(str(model_file), providers=providers or onnx_providers())
        except Exception as error:  # onnxruntime and protobuf raise many types for a bad file
            raise FaceModelError(
                f"The face recogniser {model_file} cannot be loaded ({error}); download it again."
            ) from error
        if not isinstance(model, ArcFaceONNX):
            raise FaceModelError(f"{model_file} is not an ArcFace recogniser; download the face pack again.")
        self.model = model
        self.model_file = Path(model_file)
        self.dim = int(model.output_shape[-1])

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        from insightface.utils.face_align import norm_crop

        bgr = np.ascontiguousarray(image[:, :, ::-1])
        with warnings.catch_warnings():
            # norm_crop calls scikit-image's SimilarityTransform.estimate, deprecated since 0.26:
            # a FutureWarning per face that the user can do nothing about.
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"insightface\.")
            aligned = norm_crop(
                bgr, np.asarray(face.landmarks, dtype=np.float32), image_size=self.model.input_size[0]
            )
        return _normalised(self.model.get_feat(aligned)[0])

    def identity_model(self) -> IdentityModel:
        return IdentityModel.from_onnx(
            self.model_file, input_mean=self.model.input_mean, input_std=self.model.input_std
        )


class SFaceScorer:
    """OpenCV's SFace (128-d) through ``cv2.FaceRecognizerSF``: the recogniser of commercial mode."""

    name = "sface"

    def __init__(self, model_file: Path):
        import cv2

        try:
            self.model = cv2.FaceRecognizerSF.create(str(model_file), "")
        except cv2.error as error:
            raise FaceModelError(
                f"The face recogniser {model_file} cannot be loaded ({error}); download it again."
            ) from error
        self.model_file = Path(model_file)
        self.dim = int(self.model.feature(np.zeros((112, 112, 3), np.uint8)).size)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        x1, y1, x2, y2 = face.bbox
        row = np.array(
            [[x1, y1, x2 - x1, y2 - y1, *np.asarray(face.landmarks).ravel(), face.score]], np.float32
        )
        aligned = self.model.alignCrop(np.ascontiguousarray(image[:, :, ::-1]), row)
        return _normalised(self.model.feature(aligned))

    def identity_model(self) -> IdentityModel:
        # FaceRecognizerSF feeds raw 0-255 RGB (blobFromImage: scale 1, no mean, swapRB).
        return IdentityModel.from_onnx(self.model_file, input_mean=0.0, input_std=1.0)
