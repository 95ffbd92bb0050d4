"""`train`: one training run from its settings to its artefact, with its record, lock, events and failures.

Everything a run writes is under ``trainings/<run>/`` of the project: ``events.jsonl``,
``previews/``, ``checkpoints/step-N/`` and ``final.safetensors``.
"""

from __future__ import annotations

import contextlib
import gc
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine import checkpoint as ckpt
from engine.config import MEMORY_FIELDS, ConfigError, TrainingConfig, preset
from engine.events import Event, EventLog, Failed, Status
from engine.runs import RUNS, update_run
from engine.store import Project, StorageFull, StoreError
from engine.training.errors import TrainingCancelled, TrainingError
from engine.training.loop import Trainer
from engine.training.options import Options, make_accelerator, resolve_options
from engine.training.state import (
    forget_run,
    new_run_id,
    resume_point,
    run_lock,
    set_aside_damaged,
    training_run,
    unfinished,
)

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from accelerate import Accelerator

    from engine.faces import FaceKit
    from engine.models import BaseModel


class _Events:
    """Sends events to the callback and to ``events.jsonl`` (main process only)."""

    def __init__(self, path: Path, callback: Callable[[Event], None] | None, enabled: bool):
        self.log = EventLog(path) if enabled else None
        self.callback = callback if enabled else None

    def __call__(self, event: Event) -> None:
        if self.log is None:
            return
        self.log.append(event)
        if self.callback is not None:
            self.callback(event)


def train(
    project: Project,
    config: TrainingConfig | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
    resume: bool | str = False,
    base: BaseModel | None = None,
    face_kit: FaceKit | None = None,
) -> Path:
    """Train on the project's accepted photos and return the path of ``final.safetensors``.

    ``resume`` (True for the newest resumable run, or a run id) continues a stopped or crashed run
    from its last checkpoint with that run's own settings; only memory options
    (`engine.config.MEMORY_FIELDS`) come from ``config``. ``cancel`` stops the run within one step,
    after saving a checkpoint, by raising `TrainingCancelled`. ``base`` (a loaded base model) is
    modified by the training (tokens, LoRA, attention processors): load a fresh one per run.
    A resume starts from the newest checkpoint whose checksums verify; newer, damaged ones are
    renamed ``damaged-step-N`` (a `Status` event says so). A new run is refused while another run
    of the project trains, and one that fails before its first checkpoint leaves no run behind.
    Works in one process or under ``accelerate launch`` (data parallel; the run folder and events
    belong to the main process).
    """
    from accelerate.utils import set_seed
    from filelock import Timeout

    config, run, start, damaged = _settings(project, config, resume)
    options = resolve_options(config)
    if not resume:  # pin what the profile decided about what is trained, so a resume matches it
        config = config.replace(
            use_8bit_adam=options.use_8bit_adam, train_text_encoder=options.train_text_encoder
        )
    accelerator = make_accelerator(options, config.gradient_accumulation_steps)
    set_seed(config.seed)
    run = _claim(project, run, accelerator)
    folder = project.path(RUNS, run)
    folder.mkdir(parents=True, exist_ok=True)
    lock = run_lock(project, run) if accelerator.is_main_process else None
    try:
        if lock is not None:
            lock.acquire()
    except Timeout as error:
        raise TrainingError(
            f"Training {run} is already running in another process; wait for it or cancel it first."
        ) from error
    emit = _Events(folder / "events.jsonl", on_event, accelerator.is_main_process)
    abandoned = False
    try:
        if accelerator.is_main_process:
            for item in damaged:
                emit(Status(message=set_aside_damaged(item, run, start)))
            update_run(project, run, status="running", preset=config.preset, error=None)
        trainer = Trainer(project, run, config, options, accelerator, emit, cancel)
        return trainer.run(start, base, face_kit)
    except TrainingCancelled:
        if accelerator.is_main_process:
            update_run(project, run, status="stopped")
        raise
    except BaseException as error:
        message = _failure_message(error, options, run)
        kept = ckpt.checkpoints(folder / "checkpoints")
        # A new run that fails before its first checkpoint has nothing to resume: it leaves no trace.
        abandoned = accelerator.is_main_process and not kept and not resume
        if accelerator.is_main_process and not isinstance(error, KeyboardInterrupt):
            _record_failure(project, run, emit, error, message, kept, abandoned)
        if isinstance(error, torch.OutOfMemoryError):
            traceback.clear_frames(error.__traceback__)  # let the models' memory go with the frames
            raise TrainingError(message) from error
        raise
    finally:
        if lock is not None:
            lock.release()
        if abandoned:
            forget_run(project, run)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _settings(
    project: Project, given: TrainingConfig | None, resume: bool | str
) -> tuple[TrainingConfig, str | None, Path | None, list[ckpt.Damaged]]:
    """The run's config, and for a resume its id, checkpoint and newer damaged checkpoints.

    A resumed run keeps its own settings except the memory options of ``given``.
    """
    config = given or preset("released")
    if not resume:
        return config, None, None, []
    # The newest unfinished run, the same in every process (its lock is taken by `train`).
    run = resume if isinstance(resume, str) else next(iter(unfinished(project)), None)
    start, damaged = resume_point(project, run)
    saved = TrainingConfig.from_dict(ckpt.read_json(start / ckpt.STATE)["config"])
    config = saved.replace(**{name: getattr(given, name) for name in MEMORY_FIELDS}) if given else saved
    return config, run, start, damaged


def _claim(project: Project, run: str | None, accelerator: Accelerator) -> str:
    """The run's id (the main process names a new run), the same in every process.

    Refused while another run of the project trains.
    """
    from accelerate.utils import broadcast_object_list

    chosen = [None, None]
    if accelerator.is_main_process:
        chosen = [run or new_run_id(project), training_run(project, other_than=run)]
    broadcast_object_list(chosen)
    run, busy = chosen
    if busy is not None:
        raise TrainingError(
            f"Project {project.name!r} is already training run {busy}; wait for it to finish or cancel it, "
            "then try again."
        )
    return run


def _record_failure(
    project: Project,
    run: str,
    emit: Callable[[Event], None],
    error: BaseException,
    message: str,
    kept: list[Path],
    abandoned: bool,
) -> None:
    """A `Failed` event and (unless the run is abandoned) the failure in the run's record."""
    checkpoint = str(kept[-1]) if kept else None
    # Recording the failure may fail too (a full disk): never let that hide the error itself.
    with contextlib.suppress(OSError, StoreError):
        emit(Failed(message=message, error=type(error).__name__, checkpoint=checkpoint))
    if not abandoned:
        with contextlib.suppress(OSError, StoreError):
            update_run(project, run, status="failed", error=message)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is already a sentence for the user."""
    from engine.data import DataError
    from engine.faces import FaceModelError
    from engine.models import ModelLoadError
    from engine.tokens import TokenError

    return (StorageFull, TrainingError, ConfigError, DataError, TokenError, FaceModelError, ModelLoadError)


def _failure_message(error: BaseException, options: Options, run: str) -> str:
    """The sentence a failed run reports: out-of-memory advice, a user error's own message, or the error."""
    from engine.devices import lower_profile

    if isinstance(error, torch.OutOfMemoryError):
        lower = lower_profile(options.profile, options.family)
        advice = (
            f"choose the smaller '{lower.name}' VRAM profile and resume it"
            if lower
            else "lower the resolution or close other programs using the GPU, then resume it"
        )
        return f"Training {run} ran out of GPU memory with the '{options.profile}' profile; its last checkpoint is kept: {advice}."
    if isinstance(error, _user_errors()):
        return str(error)
    return f"Training {run} failed: {type(error).__name__}: {error}"
