"""A run's state on disk: its lock, which run to resume and from where, and its checkpoints.

A checkpoint (``checkpoints/step-N/``) holds the trained tensors, the optimiser, the schedule and
every process's RNG states; restoring one puts a run back exactly where it was saved.
"""

from __future__ import annotations

import contextlib
import random
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine import checkpoint as ckpt
from engine.events import CheckpointSaved
from engine.runs import RUNS, remove_run, runs, update_run
from engine.store import Project, StoreError, now
from engine.training.errors import TrainingError

if TYPE_CHECKING:
    from filelock import FileLock
    from torch import nn

    from engine.training.loop import Trainer

# Runs -------------------------------------------------------------------------------------------


def run_lock(project: Project, run: str) -> FileLock:
    """The lock a process holds while it trains ``run`` (not blocking: taking a held one times out)."""
    from filelock import FileLock

    return FileLock(str(project.path(RUNS, run, ".lock")), timeout=0)


def unfinished(project: Project) -> list[str]:
    """Runs that are not finished and have a checkpoint, newest first."""
    ids = [record.id for record in reversed(runs(project)) if record.id and not record.finished]
    return [run for run in ids if ckpt.checkpoints(project.path(RUNS, run, "checkpoints"))]


def resume_available(project: Project) -> str | None:
    """The newest unfinished run that has a checkpoint and is not being trained now, or None."""
    from filelock import Timeout

    for run in unfinished(project):
        try:
            with run_lock(project, run):
                return run
        except Timeout:
            continue
    return None


def new_run_id(project: Project) -> str:
    """A run id from the current time, unused in the project."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    taken = {record.id for record in runs(project)}
    run, suffix = f"run-{stamp}", 1
    while run in taken or project.path(RUNS, run).exists():
        suffix += 1
        run = f"run-{stamp}-{suffix}"
    return run


def training_run(project: Project, other_than: str | None) -> str | None:
    """A run of the project, other than ``other_than``, whose lock a process holds now; None if none is."""
    from filelock import Timeout

    for path in sorted(project.path(RUNS).glob("*/.lock")):
        run = path.parent.name
        if run == other_than:
            continue
        try:
            with run_lock(project, run):
                pass
        except Timeout:
            return run
    return None


def forget_run(project: Project, run: str) -> None:
    """Remove a run's folder and manifest entry (a new run that failed with nothing to resume)."""
    import shutil

    with contextlib.suppress(OSError, StoreError):
        remove_run(project, run)
    shutil.rmtree(project.path(RUNS, run), ignore_errors=True)


# Resume selection -------------------------------------------------------------------------------


def resume_point(project: Project, run: str | None) -> tuple[Path, list[ckpt.Damaged]]:
    """The newest checkpoint of ``run`` that verifies and the newer, damaged ones; `TrainingError` if none does.

    When none does, they are all set aside (so the run is no longer offered for resuming).
    """
    from accelerate import PartialState
    from filelock import Timeout

    folder = project.path(RUNS, run, "checkpoints") if run else None
    if folder is None or not ckpt.checkpoints(folder):
        raise TrainingError(f"Project {project.name!r} has no stopped training to resume; start a new one.")
    start, damaged = ckpt.newest_intact(folder)
    if start is not None:
        return start, damaged
    if PartialState().is_main_process:
        try:
            with run_lock(project, run):
                for item in damaged:
                    ckpt.set_aside(item.path)
        except Timeout as error:
            raise TrainingError(
                f"Training {run} is already running in another process; wait for it or cancel it first."
            ) from error
    reasons = "; ".join(f"{item.path.name}: {item.reason}" for item in damaged)
    raise TrainingError(
        f"No checkpoint of training {run} can be trusted ({reasons}). They were kept aside as "
        f"'{ckpt.DAMAGED}-step-N' folders in {folder}; start a new training."
    )


def set_aside_damaged(item: ckpt.Damaged, run: str, start: Path) -> str:
    """Rename a damaged checkpoint out of the way; returns the sentence that tells the user."""
    kept = ckpt.set_aside(item.path)
    return (
        f"Checkpoint {item.path.name} of training {run} is damaged ({item.reason}); it was kept aside as "
        f"{kept.name}, and the training resumes from {start.name}."
    )


# Checkpoints ------------------------------------------------------------------------------------


def save_checkpoint(trainer: Trainer, phase: int, step: int, global_step: int) -> Path:
    """Save the trainer's state as ``checkpoints/step-<global_step>/`` (all processes take part)."""
    accelerator = trainer.accelerator
    folder = trainer.folder / "checkpoints"
    staged = folder / f".tmp-step-{global_step}"
    try:
        if accelerator.is_main_process:
            ckpt.staging(folder, global_step)
        accelerator.wait_for_everyone()
        rank = accelerator.process_index
        ckpt.save_tensors(
            staged / f"rng-{rank}.safetensors", {"torch": trainer.generator.get_state()}, folder
        )
        ckpt.save_json(staged / f"rng-{rank}.json", {"python": python_state(trainer.rng.getstate())}, folder)
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(trainer.model)
            trainable = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
            ckpt.save_tensors(staged / "trainable.safetensors", trainable, folder)
            tree, tensors = ckpt.split_state(trainer.optimizer.state_dict())
            ckpt.save_tensors(staged / "optimizer.safetensors", tensors, folder)
            ckpt.save_json(staged / "optimizer.json", tree, folder)
        accelerator.wait_for_everyone()  # every process's RNG files are written: checksum them all
        if accelerator.is_main_process:
            state = {
                "phase": phase,
                "step": step,
                "global_step": global_step,
                "run": trainer.run_id,
                "config": trainer.config.to_dict(),
                "scheduler": trainer.scheduler.state_dict(),
                "saved": now(),
                "processes": accelerator.num_processes,
                "monitor": trainer.monitor.to_json(),
            }
            ckpt.seal(staged, state, folder)
            ckpt.commit(staged, global_step, trainer.config.keep_checkpoints)
    except BaseException:
        if accelerator.is_main_process:
            ckpt.discard(staged)
        raise
    path = folder / f"step-{global_step}"
    accelerator.wait_for_everyone()
    trainer.emit(CheckpointSaved(global_step=global_step, path=str(path)))
    if accelerator.is_main_process:
        update_run(trainer.project, trainer.run_id, step=global_step, total_steps=trainer.total_steps)
    return path


def load_trainable(model: nn.Module, path: Path, device: torch.device, strict: bool) -> None:
    """Copy the saved trained tensors into ``model``; with ``strict`` every trainable one must be there."""
    saved = ckpt.load_tensors(path, device)
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad or "lora_" in n}
    missing = sorted(wanted - saved.keys()) if strict else []
    unknown = sorted(saved.keys() - params.keys())
    if missing or unknown:
        raise TrainingError(
            f"Checkpoint {path.parent} does not match this model ({len(missing)} missing, {len(unknown)} unknown tensors)."
        )
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def load_optimisation(path: Path, optimizer: Any, scheduler: Any, processes: int) -> None:
    """Restore the optimiser and learning-rate schedule of checkpoint ``path``."""
    state = ckpt.read_json(path / ckpt.STATE)
    if state.get("processes", 1) != processes:
        raise TrainingError(
            f"Checkpoint {path} was saved with {state.get('processes', 1)} processes; resume it with the same number."
        )
    tree = ckpt.read_json(path / "optimizer.json")
    optimizer.load_state_dict(ckpt.join_state(tree, ckpt.load_tensors(path / "optimizer.safetensors")))
    scheduler.load_state_dict(state["scheduler"])


def load_rng(path: Path, rank: int, generator: torch.Generator, rng: random.Random) -> None:
    """Restore process ``rank``'s torch generator and Python RNG from checkpoint ``path``."""
    generator.set_state(ckpt.load_tensors(path / f"rng-{rank}.safetensors")["torch"])
    rng.setstate(python_state(ckpt.read_json(path / f"rng-{rank}.json")["python"]))


def python_state(state):
    """``random.getstate()`` <-> JSON lists."""
    version, internal, gauss = state
    return (
        [version, list(internal), gauss] if isinstance(internal, tuple) else (version, tuple(internal), gauss)
    )
