"""`postprocess_output`: one output upscaled, restored and framed into a new output that names its parent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.events import Event, Status
from engine.identity import identity_score, shared_face_kit, source_embedding
from engine.outputs import (
    OUTPUTS,
    OutputRecord,
    a1111_pairs,
    add_output,
    get_output,
    new_output_id,
    read_parameters,
)
from engine.postprocess.faces import restore_faces
from engine.postprocess.models import (
    FIDELITY,
    RESTORER_LABELS,
    RESTORERS,
    UPSCALERS,
    PostprocessError,
    load_model,
    upscale_image,
)
from engine.store import Project, now

if TYPE_CHECKING:
    from engine.faces import Face, FaceKit
    from engine.presets import Framed


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


@dataclass(frozen=True)
class Suggested:
    """The post-processing offered first for a family's outputs."""

    restore: str | None
    upscale: int


def suggested_postprocess(native_resolution: int) -> Suggested:
    """What to offer first for outputs of a family of this native size.

    At 1024 px (SDXL) a portrait's face is large enough to print: restoration, and no upscaling
    unless asked for. Below that (SD 1.x's 512 px) nothing is chosen for the user, as before.
    """
    return Suggested("gfpgan", 1) if native_resolution >= 1024 else Suggested(None, 1)


def _parent_output(project: Project, output_id: str) -> OutputRecord:
    record = get_output(project, output_id)
    if record is None or not project.path(record.file).is_file():
        raise PostprocessError(
            f"Project {project.name!r} has no output image {output_id!r}; refresh the gallery."
        )
    return record


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
