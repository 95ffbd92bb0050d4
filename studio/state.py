"""The studio's state, shared by every tab: the store, the job runner, settings, refusals and the device.

Event handlers are module-level functions of the tab modules taking a `Studio` first; `bind` fills
it in for Gradio. Nothing here imports torch or a tab module.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from engine.identity import loaded_face_kit, shared_face_kit
from engine.models import DEFAULT_BASE
from engine.store import Project, ProjectStore, StoreError, atomic_write_json
from studio.jobs import JobRunner

if TYPE_CHECKING:
    from engine.demo import DemoKit
    from engine.faces import FaceKit
    from engine.families import ModelFamily
    from studio.reach import Reach

logger = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"
DEMO_STEPS = 4
"""Sampling steps of the demo's tiny model (portraits and painted style references)."""
REFUSALS_KEPT = 12


@dataclass
class StudioSettings:
    """Choices that outlive a session, saved in ``<data root>/settings.json``."""

    base_model: str = DEFAULT_BASE
    """Base model of either family (SD 1.x or SDXL): a hub id, a diffusers folder or one .safetensors file."""
    allow_pickle: bool = False
    """Load pickle checkpoints (.ckpt/.bin), which can run code; off unless the user trusts the file."""
    commercial: bool = False
    """Use only models whose licence allows commercial use."""

    @classmethod
    def load(cls, root: Path) -> StudioSettings:
        """The saved settings, or the defaults when there are none (or the file is unreadable)."""
        try:
            saved = json.loads((Path(root) / SETTINGS_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return cls()
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in saved.items() if key in known})

    def save(self, root: Path) -> None:
        atomic_write_json(Path(root) / SETTINGS_FILE, asdict(self))


@dataclass(frozen=True)
class Refusal:
    filename: str
    role: str
    reason: str
    """The intake's reason code, e.g. ``several_faces``."""
    message: str


class RefusalLog:
    """The latest refused uploads per project and role, kept in the server so a reload still shows
    them, until the user dismisses a role's list."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], deque[Refusal]] = defaultdict(lambda: deque(maxlen=REFUSALS_KEPT))
        self._lock = threading.Lock()

    def add(self, project: str, refusal: Refusal) -> None:
        with self._lock:
            self._items[project, refusal.role].appendleft(refusal)

    def get(self, project: str | None, role: str | None = None) -> list[Refusal]:
        """Newest first, one role after the other (only ``role``'s when given)."""
        with self._lock:
            return [
                item
                for (name, kind), items in self._items.items()
                if name == (project or "") and role in (None, kind)
                for item in items
            ]

    def clear(self, project: str, role: str | None = None) -> None:
        """Forget the project's refusals (only ``role``'s when given)."""
        with self._lock:
            for key in [key for key in self._items if key[0] == project and role in (None, key[1])]:
                del self._items[key]


def _apply_pickle_choice(choice: StudioSettings) -> None:
    """The Settings checkbox is this process's pickle opt-in (read by `engine.models.load_base`)."""
    from engine.models import ALLOW_PICKLE_ENV

    os.environ[ALLOW_PICKLE_ENV] = "1" if choice.allow_pickle else "0"


class Studio:
    """What every tab shares: the store, the job runner, settings, the demo kit and the device."""

    def __init__(self, store: ProjectStore, demo: DemoKit | None = None, demo_family: str = "sd1"):
        self.store = store
        self.runner = JobRunner()
        self.demo = demo
        self.demo_family = demo_family
        """Demo mode: the family of the tiny model that trains and paints (``sd1`` or ``sdxl``)."""
        self._family: tuple[tuple[str, bool], ModelFamily | None] | None = None
        self.settings = StudioSettings.load(store.root)
        _apply_pickle_choice(self.settings)
        self.refusals = RefusalLog()
        """The latest refused photos of each project, shown in the Photos tab."""
        self.device = "Looking for a GPU…"
        """One line on the device and memory profile (filled in by the warm-up thread: it imports torch)."""
        self.reach: Reach | None = None
        """Where clients can reach the studio (set by `studio.app.launch`): proof links are built from it."""

    @property
    def base_model(self) -> str:
        """The base model in use: the settings', or in demo mode the tiny model of `demo_family`."""
        if self.demo is None:
            return self.settings.base_model
        return str((self.demo.sdxl if self.demo_family == "sdxl" else self.demo.sd).folder)

    def base_family(self) -> ModelFamily | None:
        """The family of `base_model`, read without loading it (`engine.models.identify_base`); None
        when it is unknown before a download or the source is unusable (Settings says why)."""
        from engine.models import ModelLoadError, identify_base

        key = (self.base_model, self.settings.allow_pickle)
        if self._family is None or self._family[0] != key:
            try:
                family = identify_base(key[0], allow_pickle=key[1]).family
            except ModelLoadError:
                family = None
            self._family = (key, family)
        return self._family[1]

    def update_settings(self, new: StudioSettings) -> None:
        self.settings = new
        new.save(self.store.root)
        _apply_pickle_choice(new)

    def face_kit(self) -> FaceKit:
        """The face models of the licence setting (`engine.identity.shared_face_kit`: loaded on first use, kept)."""
        return shared_face_kit(self.settings.commercial)

    def face_kit_loaded(self) -> FaceKit | None:
        return loaded_face_kit(self.settings.commercial)

    def project(self, name: str | None) -> Project:
        """The open project, or a `gr.Error` telling the user to pick one."""
        if not name:
            raise gr.Error("Open or create a project first (step 1).")
        try:
            return self.store.open(name)
        except StoreError as error:
            raise gr.Error(str(error)) from error

    def interrupted_runs(self) -> list[tuple[str, str]]:
        """(project, run) of every stopped or crashed run that can be resumed, for the start-up notice."""
        from engine.training import resume_available

        found = []
        for name in self.store.list():
            run = resume_available(self.store.open(name))
            if run is not None:
                found.append((name, run))
        return found

    def warm_up(self) -> None:
        """Probe the device (and load the demo's face models) in the background, so start-up stays fast."""
        threading.Thread(target=self._warm_up, name="studio-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        self.device = probe_device(demo=self.demo is not None)
        print(self.device, flush=True)
        for name, run in self.interrupted_runs():
            print(
                f"Training {run} of project {name} stopped before the end; resume it in the Train tab.",
                flush=True,
            )
        if self.demo is None:
            return  # the real face models may need a download: that waits for the first photo
        try:
            self.face_kit()
        except Exception:  # shown when a photo is added; the studio runs without it
            logger.exception("The face models could not be loaded")


def probe_device(demo: bool = False) -> str:
    """One line on the device training will use and its memory profile."""
    from engine.devices import detect_profile, gpu_memory_gb, pick_device
    from engine.families import FAMILIES

    device = pick_device()
    if device.type == "cpu":
        if demo:
            return "Demo mode on the CPU (no GPU needed)."
        return (
            "No GPU found: training on the CPU takes hours. To try the whole flow in about a minute, "
            "start the studio with --demo (tiny random models)."
        )
    memory = gpu_memory_gb(device)
    size = f" with {memory:.0f} GB" if memory else ""
    profiles = []
    for family in FAMILIES.values():
        profile = detect_profile(device, family.name)
        fits = memory is None or profile.vram_gb <= memory + 0.5
        profiles.append(
            f"{profile.name} for {family.label}" if fits else f"{family.label} needs {profile.vram_gb} GB"
        )
    return f"GPU: {device.type}{size}; memory profile {', '.join(profiles)}."


def bind(handler: Callable[..., Any], *leading: Any) -> Callable[..., Any]:
    """``handler`` with its first arguments (the `Studio`, a photo role...) filled in, for Gradio.

    Unlike `functools.partial`, the result keeps the handler's name (Gradio's endpoint name) and
    shows Gradio the remaining signature with its type hints, which Gradio reads to pass
    `gr.Request`, `gr.SelectData` and `gr.Progress`.
    """

    @functools.wraps(handler)
    def bound(*args: Any, **kwargs: Any) -> Any:
        return handler(*leading, *args, **kwargs)

    signature = inspect.signature(handler)
    bound.__signature__ = signature.replace(parameters=list(signature.parameters.values())[len(leading) :])
    return bound
