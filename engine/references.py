"""Style references painted from a text prompt by the plain base model, then added like uploads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from engine.events import Event, Status
from engine.generate import GenerationError, GenerationSettings, plain_base, sample_image
from engine.outputs import encode_image, model_name

if TYPE_CHECKING:
    from engine.faces import FaceKit
    from engine.intake import Accepted, Refused
    from engine.store import Project


def make_references(
    project: Project,
    prompt: str,
    count: int,
    *,
    base_model: str,
    kit: FaceKit,
    seed: int = 0,
    steps: int = 30,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Accepted | Refused]:
    """Paint ``count`` style references from ``prompt`` with the plain base model and add them as reference photos.

    Returns `engine.intake.add_photo`'s result per image (a picture without a usable face is refused
    like any upload).
    """
    from engine.intake import add_photo
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
        for index in range(count):
            emit(Status(message=f"Painting style reference {index + 1} of {count}…"))
            image = sample_image(
                pipe, f"a portrait of a person, {prompt.strip()}", settings, seed + index, cancel=cancel
            )
            if image is None:
                break
            data = encode_image(image, ".png")
            results.append(add_photo(project, data, f"style-{seed + index}.png", "reference", kit))
    return results
