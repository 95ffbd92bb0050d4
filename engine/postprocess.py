"""Post-processing: background upscaling, face restoration pasted back through the parsing mask, presets.

Order (METHOD.md section 7): faces are detected on the original image, and each is aligned to the
512x512 FFHQ crop the restorers were trained on, taken from the original, and restored (GFPGAN
v1.4 or CodeFormer with its fidelity weight): the restorer sees the generated face, never Real-
ESRGAN's rendering of it. The whole image is upscaled with Real-ESRGAN as the background (x2 or
x4, in overlapping tiles, so a 2048 px result fits in 8 GB), and each restored face is pasted into
it through the face-parsing mask of the restored crop with a feathered edge, at its landmarks
scaled to the upscaled frame. An output preset (passport, headshot) frames the result last. Every
step is optional, and the original is kept: the result is a new output that names its parent.

Weights are assets of the registry, loaded by spandrel's `ModelLoader` (``weights_only``-style
restricted unpickling for ``.pth``); CodeFormer's architecture comes from spandrel_extra_arches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import UserError
from engine.events import Event, Status
from engine.identity import identity_score, shared_face_kit, source_embedding
from engine.model_cache import ModelCache
from engine.outputs import OUTPUTS, OutputRecord, a1111_pairs, add_output, new_output_id, read_parameters
from engine.store import Project, now

if TYPE_CHECKING:
    import torch
    from spandrel import ImageModelDescriptor

    from engine.faces import Face, FaceKit
    from engine.presets import Framed

RESTORERS = {"gfpgan": "gfpgan_v1.4", "codeformer": "codeformer"}
"""Restorer name -> asset name."""
RESTORER_LABELS = {"gfpgan": "GFPGAN", "codeformer": "CodeFormer"}
UPSCALERS = {2: "realesrgan_x2plus", 4: "realesrgan_x4plus"}
"""Upscale factor -> asset name."""
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
TILE = 256
TILE_OVERLAP = 32
"""Upscaling tile side and the context added on each side, in input pixels."""
FEATHER = 12
"""Width of the soft edge of the paste-back mask, in pixels of the 512 crop."""
FIDELITY = 0.5
MODELS_KEPT = 2
"""Loaded models kept for the next image (an upscaler and a restorer)."""


class PostprocessError(UserError):
    """Post-processing cannot run as asked; the message says what to change."""


@functools.cache
def _registry() -> Any:
    """spandrel's registry plus the extra architectures (CodeFormer), without touching the global one."""
    from spandrel import MAIN_REGISTRY
    from spandrel_extra_arches import EXTRA_REGISTRY

    registry = MAIN_REGISTRY.copy()
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


_MODELS: ModelCache[tuple[str, int, str], ImageModelDescriptor] = ModelCache(capacity=MODELS_KEPT)


def load_model(path: Path, device: torch.device | str | None = None) -> ImageModelDescriptor:
    """A spandrel model from a weights file on ``device``, fp16 on CUDA where it supports it (kept for reuse)."""
    from pickle import UnpicklingError

    import torch
    from spandrel import ModelLoader, UnsupportedModelError

    from engine.devices import pick_device

    device = torch.device(device) if device is not None else pick_device()
    key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, str(device))

    def load() -> ImageModelDescriptor:
        try:
            model = ModelLoader(registry=_registry()).load_from_file(str(path))
        except (UnsupportedModelError, UnpicklingError, ValueError, RuntimeError, KeyError, OSError) as error:
            raise PostprocessError(
                f"{path} is not a restoration or upscaling model spandrel can load ({error})."
            ) from error
        dtype = torch.float16 if device.type == "cuda" and model.supports_half else torch.float32
        return model.to(device).to(dtype).eval()

    return _MODELS.get(key, load)


def _to_tensor(image: np.ndarray, model: Any) -> torch.Tensor:
    import torch

    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    return tensor.to(model.device, model.dtype)


def _to_image(tensor: torch.Tensor) -> np.ndarray:
    pixels = tensor[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (pixels * 255).round().astype(np.uint8)


def upscale_image(
    image: np.ndarray, model: Any, *, tile: int = TILE, overlap: int = TILE_OVERLAP
) -> np.ndarray:
    """Upscale an RGB ``uint8`` image tile by tile; each tile sees ``overlap`` pixels of context per side."""
    import torch

    if model.scale < 2:
        raise PostprocessError(f"{model.architecture.name} does not upscale (scale {model.scale}).")
    scale, (height, width) = model.scale, image.shape[:2]
    pixels = _to_tensor(image, model)
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    with torch.inference_mode():
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
                y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
                piece = model(pixels[..., y0:y1, x0:x1])
                rows = slice((top - y0) * scale, (bottom - y0) * scale)
                cols = slice((left - x0) * scale, (right - x0) * scale)
                out[top * scale : bottom * scale, left * scale : right * scale] = _to_image(
                    piece[..., rows, cols]
                )
    return out


def alignment_matrix(face: Face, size: int = FACE_SIZE) -> np.ndarray:
    """The ``2x3`` similarity taking ``face``'s landmarks onto the FFHQ template of a ``size`` crop."""
    import torch

    from engine.faces.align import similarity_matrices

    template = torch.from_numpy(FFHQ_TEMPLATE * (size / FACE_SIZE))
    landmarks = torch.as_tensor(np.asarray(face.landmarks, dtype=np.float32))[None]
    return similarity_matrices(landmarks, template)[0].double().numpy()


def align_face(image: np.ndarray, face: Face, size: int = FACE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` square FFHQ-aligned crop of ``face`` and the ``2x3`` affine from image to crop."""
    import cv2

    matrix = alignment_matrix(face, size)
    crop = cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    return crop, matrix


def restore_crop(model: Any, crop: np.ndarray, *, fidelity: float = FIDELITY) -> np.ndarray:
    """Run GFPGAN or CodeFormer on an aligned 512 crop (the networks take and give [-1, 1])."""
    import torch

    kind = model.architecture.id
    pixels = _to_tensor(crop, model) * 2 - 1
    with torch.inference_mode():
        if kind == "CodeFormer":
            restored = model.model(pixels, weight=fidelity)[0]
        elif kind == "GFPGAN":
            restored = model.model(pixels, return_rgb=False, randomize_noise=False)[0]
        else:
            raise PostprocessError(
                f"{model.architecture.name} is not a face restorer (GFPGAN or CodeFormer)."
            )
    return _to_image((restored + 1) / 2)


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


def _load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def _postprocess_text(parent: Path, extras: dict[str, Any]) -> str:
    text = read_parameters(parent) or ""
    pairs = a1111_pairs(extras)
    return f"{text}, {pairs}" if text else pairs


def _check_request(restore: str | None, upscale: int, preset: str | None, fidelity: float) -> None:
    """Refuse a request that cannot run, before any work."""
    from engine.presets import get_preset

    if restore is not None and restore not in RESTORERS:
        raise PostprocessError(
            f"Unknown face restorer {restore!r}; choose {' or '.join(RESTORERS)}, or none."
        )
    if upscale not in (1, *UPSCALERS):
        raise PostprocessError(f"Upscaling is x1, x2 or x4, not x{upscale}.")
    if preset is not None:
        get_preset(preset)
    if restore is None and upscale == 1 and preset is None:
        raise PostprocessError(
            "Nothing to do: choose a face restorer, an upscale factor or an output preset."
        )
    if not 0.0 <= fidelity <= 1.0:
        raise PostprocessError(f"The fidelity weight must lie between 0 and 1 (got {fidelity}).")


def _parent_output(project: Project, output_id: str) -> OutputRecord:
    entry = next((e for e in project.manifest().get("outputs", []) if e.get("id") == output_id), None)
    if entry is None or not project.path(entry["file"]).is_file():
        raise PostprocessError(
            f"Project {project.name!r} has no output image {output_id!r}; refresh the gallery."
        )
    return OutputRecord.from_json(entry)


@dataclass
class _Result:
    """The image as post-processing leaves it, its faces in its frame, and what was done."""

    image: np.ndarray
    faces: list[Face]
    steps: dict[str, Any] = field(default_factory=dict)
    """Recorded in the output's ``params["postprocess"]``."""
    extras: dict[str, Any] = field(default_factory=dict)
    """A1111 ``parameters`` pairs."""
    warnings: list[str] = field(default_factory=list)
    dpi: int | None = None


def _weights(restore: str | None, upscale: int, commercial: bool) -> tuple[Path | None, Path | None]:
    """The upscaler's and the restorer's weights files (None where not asked for), fetched on first use."""
    from engine import assets

    upscaler = assets.asset_path(UPSCALERS[upscale], commercial=commercial) if upscale > 1 else None
    restorer = assets.asset_path(RESTORERS[restore], commercial=commercial) if restore is not None else None
    return upscaler, restorer


def _restore_and_upscale(
    result: _Result,
    restore: str | None,
    upscale: int,
    weights: tuple[Path | None, Path | None],
    *,
    parser: Any,
    fidelity: float,
    emit: Callable[[Event], None],
) -> None:
    """Restore the faces from the original, upscale the background, paste the faces into it (module docstring)."""
    upscaler, restorer = weights
    original, background = result.image, result.image
    if upscaler is not None:
        emit(Status(message=f"Upscaling x{upscale} with Real-ESRGAN…"))
        background = upscale_image(original, load_model(upscaler))
        result.steps["upscale"] = upscale
        result.extras.update(
            {"Postprocess upscale by": upscale, "Postprocess upscaler": f"RealESRGAN x{upscale}plus"}
        )
    if restorer is not None:
        if result.faces:
            emit(Status(message=f"Restoring {len(result.faces)} face(s) with {RESTORER_LABELS[restore]}…"))
            background = restore_faces(
                original, result.faces, load_model(restorer), parser, fidelity=fidelity, background=background
            )
        else:
            result.warnings.append("No face was found in the image, so no face was restored.")
        result.steps["restore"] = restore
        result.extras["Face restoration"] = RESTORER_LABELS[restore]
        if restore == "codeformer":
            result.steps["fidelity"] = result.extras["CodeFormer weight"] = fidelity
    result.image, result.faces = background, [face.transformed(float(upscale)) for face in result.faces]


def _frame(result: _Result, preset: str) -> None:
    """Apply an output preset around the largest face."""
    from engine.presets import apply_preset

    framed: Framed = apply_preset(result.image, result.faces[0], preset)
    result.image, result.dpi = framed.image, framed.preset.dpi
    result.warnings.extend(framed.warnings)
    result.steps.update(
        preset=preset, eye_line=round(framed.eye_line, 4), head_height=round(framed.head_height, 4)
    )
    result.extras["Output preset"] = preset


def postprocess_output(
    project: Project,
    output_id: str,
    restore: str | None = None,
    upscale: int = 1,
    preset: str | None = None,
    *,
    fidelity: float = FIDELITY,
    face_kit: FaceKit | None = None,
    commercial: bool = False,
    on_event: Callable[[Event], None] | None = None,
) -> OutputRecord:
    """Upscale, restore faces and/or frame output ``output_id``; the result is a new output, the original stays.

    ``restore`` is "gfpgan", "codeformer" or None; ``upscale`` 1, 2 or 4; ``preset`` one of
    `engine.presets.PRESETS` or None. ``fidelity`` is CodeFormer's weight (0: strongest
    restoration, 1: closest to the input). With ``commercial``, non-commercial weights are refused.
    """
    emit = on_event or (lambda event: None)
    _check_request(restore, upscale, preset, fidelity)
    parent = _parent_output(project, output_id)
    weights = _weights(restore, upscale, commercial)
    image = _load_rgb(project.path(parent.file))
    face_kit = face_kit or shared_face_kit(commercial)
    result = _Result(image, face_kit.detector.detect(image))
    if preset is not None and not result.faces:
        raise PostprocessError(
            f"No face was found in output {output_id!r}, so the {preset} preset cannot place it."
        )
    _restore_and_upscale(
        result, restore, upscale, weights, parser=face_kit.parser, fidelity=fidelity, emit=emit
    )
    if preset is not None:
        _frame(result, preset)
    emit(Status(message="Scoring identity…"))
    identity = identity_score(face_kit, result.image, source_embedding(project, face_kit))
    new_id = new_output_id(parent.seed)
    record = OutputRecord(
        id=new_id,
        file=f"{OUTPUTS}/{new_id}.png",
        seed=parent.seed,
        params={
            **parent.params,
            "postprocess": {**result.steps, "identity_before": parent.identity},
            "width": int(result.image.shape[1]),
            "height": int(result.image.shape[0]),
        },
        run=parent.run,
        identity=identity,
        created=now(),
        parent=parent.id,
        raw=parent.raw or parent.file,
        warnings=result.warnings,
    )
    text = _postprocess_text(project.path(parent.file), result.extras)
    return add_output(project, result.image, record, text, result.dpi)
