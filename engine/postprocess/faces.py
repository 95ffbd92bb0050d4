"""Faces restored from the original image: FFHQ alignment, the feathered parsing mask, the paste-back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from engine.postprocess.models import FIDELITY, restore_crop

if TYPE_CHECKING:
    from engine.faces import Face

FACE_SIZE = 512
FFHQ_TEMPLATE = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
"""The five landmarks in the 512x512 aligned crops GFPGAN and CodeFormer were trained on (FFHQ alignment)."""
CROP_BOX = (128.0, 128.0, 384.0, 384.0)
"""Face box given to the parser for an aligned crop: with the parser's context of 2 it parses the whole crop."""
FEATHER = 12
"""Width of the soft edge of the paste-back mask, in pixels of the 512 crop."""


def alignment_matrix(face: Face, size: int = FACE_SIZE) -> np.ndarray:
    """The ``2x3`` similarity taking ``face``'s landmarks onto the FFHQ template of a ``size`` crop."""
    import torch

    from engine.faces.align import similarity_matrices

    template = torch.from_numpy(FFHQ_TEMPLATE * (size / FACE_SIZE))
    landmarks = torch.as_tensor(np.asarray(face.landmarks, dtype=np.float32))[None]
    return similarity_matrices(landmarks, template)[0].double().numpy()


def align_face(image: np.ndarray, face: Face, size: int = FACE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` square FFHQ-aligned crop of ``face`` and the ``2x3`` affine from image to crop.

    A face larger than the crop's (an SDXL headshot's, at 1024 px) is reduced with area averaging
    first, so that the crop averages its pixels instead of sampling every other one.
    """
    import cv2

    matrix = alignment_matrix(face, size)
    source, warp = _reduced(image, matrix)
    crop = cv2.warpAffine(
        source, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    return crop, matrix


def _reduced(image: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` area-averaged down to ``matrix``'s scale where it shrinks, and the affine from the
    reduced image to the crop (pixel centres kept in place); unchanged where it does not shrink."""
    import cv2

    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if scale >= 1.0:
        return image, matrix
    height, width = image.shape[:2]
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    reduced = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    factors = np.array([size[0] / width, size[1] / height])
    warp = matrix.copy()
    warp[:, :2] = matrix[:, :2] / factors
    warp[:, 2] = matrix[:, 2] + matrix[:, :2] @ (0.5 / factors - 0.5)
    return reduced, warp


def feather_mask(mask: np.ndarray, feather: int = FEATHER) -> np.ndarray:
    """A float mask in [0, 1] that is 0 outside ``mask``: eroded by ``feather`` then blurred by as much.

    The crop's border strip of ``feather`` pixels is cleared first, so the pasted face never shows
    the crop's edge.
    """
    import cv2

    binary = np.asarray(mask).astype(np.uint8)
    binary[:feather], binary[-feather:], binary[:, :feather], binary[:, -feather:] = 0, 0, 0, 0
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * feather + 1, 2 * feather + 1))
    inner = cv2.erode(binary, kernel).astype(np.float32)
    soft = cv2.blur(inner, (feather + 1, feather + 1))
    soft = cv2.blur(soft, (feather + 1, feather + 1))
    return np.where(binary > 0, soft, 0.0).astype(np.float32)


def paste_face(image: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend the (restored) ``crop`` back into ``image`` through ``mask`` (crop space, [0, 1]).

    Pixels where the warped mask is 0 are returned unchanged.
    """
    import cv2

    height, width = image.shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    back = cv2.warpAffine(crop, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpAffine(
        mask, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    weight = np.clip(weight, 0.0, 1.0)[..., None]
    blended = image.astype(np.float32) * (1 - weight) + back.astype(np.float32) * weight
    return np.where(weight > 0, np.clip(np.round(blended), 0, 255), image).astype(np.uint8)


def restore_faces(
    image: np.ndarray,
    faces: list[Face],
    model: Any,
    parser: Any,
    *,
    fidelity: float = FIDELITY,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Restore every face of ``image`` from ``image`` itself and paste it into ``background``.

    ``background`` (default: ``image``) is ``image`` upscaled by a whole factor, e.g. by
    Real-ESRGAN; each restored crop is pasted there through the face-parsing mask of the restored
    crop, at the face's landmarks scaled to that frame. ``faces`` are in ``image``'s coordinates.
    """
    from engine.faces import Face, face_mask

    background = image if background is None else background
    scale = background.shape[1] / image.shape[1]
    crop_face = Face(CROP_BOX, FFHQ_TEMPLATE.copy(), 1.0)
    for face in faces:
        crop, _ = align_face(image, face)
        restored = restore_crop(model, crop, fidelity=fidelity)
        mask = feather_mask(face_mask(parser.parse(restored, crop_face)))
        background = paste_face(background, restored, alignment_matrix(face.transformed(scale)), mask)
    return background
