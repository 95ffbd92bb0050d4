"""Face parsing: per-pixel CelebAMask-HQ labels, and the face mask of the method (classes 1-13).

`BiSeNetParser` runs the BiSeNet of face-parsing.PyTorch (``79999_iter.pth``) on a square crop
around the detector box, enlarged so that forehead, ears and chin outside the box are parsed too,
at 512x512, and pastes the labels back into the full image (background elsewhere).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .detect import Face, FaceModelError

if TYPE_CHECKING:
    import torch

LABELS = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip
"""CelebAMask-HQ class order used by face-parsing.PyTorch (index = label value)."""
FACE_CLASSES = tuple(range(1, 14))
"""Skin, brows, eyes, glasses, ears, earrings, nose, mouth, lips: the face region of METHOD.md."""
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def face_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the face classes in a label map."""
    return np.isin(labels, FACE_CLASSES)


class Parser(Protocol):
    name: str

    def parse(self, image: np.ndarray, face: Face) -> np.ndarray:
        """``uint8`` label map ``(H, W)`` of an RGB ``uint8`` image around ``face``."""
        ...


def crop_matrix(face: Face, context: float, size: int) -> np.ndarray:
    """Affine ``2x3`` taking image pixels to a ``size`` square of side ``context * max(w, h)`` on the box."""
    side = context * max(face.width, face.height, 1.0)
    scale = size / side
    cx, cy = face.center
    return np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]], dtype=np.float64)


class BiSeNetParser:
    """The CelebAMask-HQ BiSeNet; weights are a plain state dict loaded with ``weights_only=True``."""

    name = "bisenet"

    def __init__(
        self,
        weights: Path,
        *,
        device: torch.device | str | None = None,
        size: int = 512,
        context: float = 2.0,
    ):
        import torch

        from ..devices import pick_device
        from .bisenet import BiSeNet

        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            network = BiSeNet.from_state_dict(state)
        except Exception as error:  # unpickling refuses, truncated zips, foreign state dicts
            raise FaceModelError(
                f"The face parser {weights} cannot be loaded ({error}); download it again."
            ) from error
        self.device = torch.device(device) if device is not None else pick_device()
        self.network = network.to(self.device).requires_grad_(False)
        self.size = size
        self.context = context

    def parse(self, image: np.ndarray, face: Face) -> np.ndarray:
        import cv2
        import torch

        matrix = crop_matrix(face, self.context, self.size)
        crop = cv2.warpAffine(image, matrix, (self.size, self.size), flags=cv2.INTER_LINEAR, borderValue=0)
        pixels = (crop.astype(np.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        batch = torch.from_numpy(pixels.transpose(2, 0, 1)).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            labels = self.network(batch).argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        height, width = image.shape[:2]
        flags = cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP
        return cv2.warpAffine(labels, matrix, (width, height), flags=flags, borderValue=0)
