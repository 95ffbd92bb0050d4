"""Typed events of long jobs, as plain frozen dataclasses.

Producers call a callback with them; `EventLog` also appends them, one JSON object per line, to a
run's ``events.jsonl`` so that a reopened studio can replay a training with `read_events`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.store import full_disk_as_storage_full


@dataclass(frozen=True, kw_only=True)
class Event:
    time: float = field(default_factory=time.time)
    """Unix time the event was made."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class Status(Event):
    """A setup stage that takes a while (loading, caching latents...)."""

    message: str


@dataclass(frozen=True, kw_only=True)
class PhaseStarted(Event):
    phase: int
    steps: int
    description: str


@dataclass(frozen=True, kw_only=True)
class StepDone(Event):
    """One optimiser step; ``losses`` holds each unweighted term and the weighted total."""

    phase: int
    step: int
    """Step within the phase, from 1."""
    phase_steps: int
    global_step: int
    total_steps: int
    losses: dict[str, float]
    lr: float
    it_per_s: float
    eta_s: float


@dataclass(frozen=True, kw_only=True)
class ImageStarted(Event):
    """Generation began image ``index`` (from 1) of ``count``; its steps follow as `StepDone` events
    counted over the whole batch (image ``index`` holds steps ``(index - 1) * steps + 1`` onwards)."""

    index: int
    count: int
    steps: int
    """Denoising steps of each image."""
    seed: int


@dataclass(frozen=True, kw_only=True)
class PreviewSaved(Event):
    """Preview samples of the composed prompt at fixed seeds, attention overlays per token, identity scores."""

    phase: int
    global_step: int
    prompt: str
    images: list[str]
    attention_maps: dict[str, list[str]]
    """Token -> one overlay PNG per image."""
    identity: list[float | None] = field(default_factory=list)
    """Per image: ArcFace cosine of its largest face to the mean source embedding; None without a face."""
    identity_framed: list[bool] = field(default_factory=list)
    """Per image: no face was detected, so it was scored at the source crops' mean face position."""
    identity_mean: float | None = None
    """Mean of the images' scores that are not None; None when no image was scored."""
    checkpoint: str | None = None
    """Folder of the preview checkpoint holding the weights these images came from."""


@dataclass(frozen=True, kw_only=True)
class MethodReport(Event):
    """What the method did since the last report (each preview and the end of phase 2): `engine.training.monitor`."""

    phase: int
    global_step: int
    attention: dict[str, float] = field(default_factory=dict)
    """Token -> its mean attention probability on the AR layers over this report's steps (phase 2)."""
    outside_share: dict[str, float] = field(default_factory=dict)
    """Token -> share of its attention mass outside its target region over this report's steps."""
    attention_start: dict[str, float] = field(default_factory=dict)
    """Token -> its mean attention over the first phase-2 steps (what the collapse guard compares with)."""
    face_found: dict[str, list[int]] = field(default_factory=dict)
    """``"<kind> t<low>-<high>"`` -> [identity estimates with a face found, estimates tried], run so far."""
    detection_rate: float | None = None
    """Share of all identity estimates so far in which the detector found a face (None before any)."""
    skipped_steps: int = 0
    """Optimiser steps the fp16 gradient scaler skipped so far (their gradients were not finite)."""
    steps: int = 0
    """Optimiser steps counted so far."""
    window_pixel_error: float | None = None
    """Phase-2 start: mean absolute difference (0-255) inside the face between the identity branch's
    face-window decode and a full decode (None: not checked, e.g. the window is off)."""
    window_edge_error: float | None = None
    """The same in the window's outer ring (one latent wide), where zero padding reaches."""
    window_identity_cosine: float | None = None
    """Cosine of the recogniser's embeddings of the window decode and the full decode."""
    decoder_pixel_error: float | None = None
    """Phase-2 start, with ``identity_decoder="tiny"``: mean absolute difference (0-255) inside the face
    between TAESD's and the VAE's decode of the source photos (None: not checked)."""
    decoder_identity_cosine: float | None = None
    """Cosine of the recogniser's embeddings of TAESD's and the VAE's decode of the same latents."""


@dataclass(frozen=True, kw_only=True)
class MethodWarning(Event):
    """Something the run watches about its method went wrong; ``message`` names the setting to change."""

    check: str
    """``attention_collapse <token>``, ``identity_detection`` or ``skipped_steps``."""
    global_step: int
    message: str


@dataclass(frozen=True, kw_only=True)
class CheckpointSaved(Event):
    global_step: int
    path: str


@dataclass(frozen=True, kw_only=True)
class Finished(Event):
    artefact: str
    seconds: float


@dataclass(frozen=True, kw_only=True)
class Cancelled(Event):
    global_step: int
    checkpoint: str | None


@dataclass(frozen=True, kw_only=True)
class Failed(Event):
    """The job stopped on an error; ``message`` is a full sentence saying what to do next."""

    message: str
    error: str
    """Exception type name."""
    checkpoint: str | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        Status,
        PhaseStarted,
        StepDone,
        ImageStarted,
        PreviewSaved,
        MethodReport,
        MethodWarning,
        CheckpointSaved,
        Finished,
        Cancelled,
        Failed,
    )
}


def event_from_dict(value: dict[str, Any]) -> Event:
    """Inverse of `Event.to_dict`."""
    values = dict(value)
    kind = EVENT_TYPES.get(values.pop("type", None))
    if kind is None:
        raise ValueError(f"Unknown event type in {value!r}.")
    return kind(**values)


def identity_curve(events: Iterable[Event]) -> list[tuple[int, float]]:
    """``(global step, mean identity)`` of each scored preview in step order.

    A step previewed twice (a resumed run repeats the steps after its checkpoint) keeps its last score.
    """
    scores = {e.global_step: e.identity_mean for e in events if isinstance(e, PreviewSaved)}
    return sorted((step, score) for step, score in scores.items() if score is not None)


class EventLog:
    """Appends events to a JSON-lines file.

    Each event is one line, written whole or not at all: a full disk (`StorageFull`) or a failed
    write leaves the file as it was, and a crash can at worst leave a partial last line, which
    `read_events` skips. (The store's atomic writers replace whole files, which would make a
    per-step log quadratic, hence the append.)
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        with full_disk_as_storage_full(self.path.parent):
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: Event) -> None:
        """Add ``event`` as the last line; `StorageFull` (the file unchanged) when the disk is full."""
        line = json.dumps(event.to_dict(), sort_keys=True).encode("utf-8") + b"\n"
        with full_disk_as_storage_full(self.path.parent), open(self.path, "a+b", buffering=0) as handle:
            end = handle.seek(0, os.SEEK_END)
            if end > 0:
                handle.seek(end - 1)
                if handle.read(1) != b"\n":  # a crash cut the last line: start a fresh one
                    line = b"\n" + line
            try:
                left = memoryview(line)
                while left:  # unbuffered: each write goes to the file, and may take part of the line
                    left = left[handle.write(left) :]
            except OSError:
                with contextlib.suppress(OSError):
                    handle.truncate(end)  # the part a full disk took
                raise


def read_events(path: Path) -> list[Event]:
    """Events of a ``events.jsonl`` file in order.

    Each line is decoded on its own: a line that is not UTF-8, not JSON or not an event (a crash
    mid-write, a damaged byte) is skipped, and only that line is lost.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for line in data.split(b"\n"):
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; a wrong shape raises TypeError.
        with contextlib.suppress(ValueError, TypeError):
            events.append(event_from_dict(json.loads(line.decode("utf-8"))))
    return events
