"""Style references painted from a text prompt by the plain base model, then added like uploads.

A painting smaller than intake's smallest photo (the demo's tiny model paints 64 pixels) is
scaled up to the base model's native size before intake sees it: intake refuses small photos
because a face in them is too small to learn, and a painting has no more detail to lose. In demo
mode the tiny model's random weights paint no face at all, so its painting becomes the backdrop
of a drawn sample portrait (`engine.demo.samples.portrait_over`), which the demo's intake accepts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.events import Event, Status
from engine.generate import GenerationError, GenerationSettings, plain_base, sample_image
from engine.outputs import encode_image, model_name

if TYPE_CHECKING:
    from engine.faces import FaceKit
    from engine.intake import Accepted, Refused
    from engine.store import Project


@dataclass(frozen=True, kw_only=True)
class ReferenceProgress(Event):
    """Painting reference ``index`` (from 1) of ``count`` has done ``step`` of its ``steps``
    (0: started); ``outcome`` is set once intake has taken or refused it."""

    index: int
    count: int
    step: int
    steps: int
    outcome: str | None = None
    """``"accepted"`` or the refusal's reason code."""


def painted_photo(image: np.ndarray, native: int) -> np.ndarray:
    """``image`` scaled up to ``native`` pixels on its shorter side when it is smaller than intake accepts."""
    from PIL import Image

    from engine.intake.decode import MIN_SIDE

    height, width = image.shape[:2]
    if min(height, width) >= MIN_SIDE:
        return image
    scale = max(native, MIN_SIDE) / min(height, width)
    size = (round(width * scale), round(height * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def make_references(
    project: Project,
    prompt: str,
    count: int,
    *,
    base_model: str,
    kit: FaceKit,
    seed: int = 0,
    steps: int = 30,
    demo: bool = False,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Accepted | Refused]:
    """Paint ``count`` style references from ``prompt`` with the plain base model and add them as reference photos.

    Returns `engine.intake.add_photo`'s result per image (a picture without a usable face is refused
    like any upload). ``on_event`` gets a `ReferenceProgress` at the start, after every step and
    at the end of each image. With ``demo`` (the tiny random model) each painting is the backdrop
    of a drawn portrait.
    """
    from engine.intake import Accepted, add_photo
    from engine.models import make_pipeline

    emit = on_event or (lambda event: None)
    if not prompt.strip():
        raise GenerationError("Describe the style first, e.g. 'studio headshot, soft light, grey backdrop'.")
    emit(Status(message=f"Loading {model_name(base_model)}…"))
    results = []
    with plain_base(base_model) as base:
        pipe = make_pipeline(base)
        pipe.set_progress_bar_config(disable=True)
        settings = GenerationSettings(seed=seed, count=count, steps=steps)
        for index in range(1, count + 1):

            def progress(step: int, index: int = index) -> None:
                emit(ReferenceProgress(index=index, count=count, step=step, steps=steps))

            progress(0)
            image = sample_image(
                pipe,
                f"a portrait of a person, {prompt.strip()}",
                settings,
                seed + index - 1,
                progress,
                cancel,
            )
            if image is None:
                break
            image = painted_photo(image, base.family.native_resolution)
            if demo:
                from engine.demo.samples import portrait_over

                image = portrait_over(image, index - 1)
            data = encode_image(image, ".png")
            result = add_photo(project, data, f"style-{seed + index - 1}.png", "reference", kit)
            outcome = "accepted" if isinstance(result, Accepted) else result.reason
            emit(ReferenceProgress(index=index, count=count, step=steps, steps=steps, outcome=outcome))
            results.append(result)
    return results
