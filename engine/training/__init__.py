"""Two-phase MagiCapture training under accelerate: checkpoints, resume, cancel, previews, events.

`train` runs phase 1 (the two placeholder embeddings, masked reconstruction) and phase 2 (LoRA on
the UNet and text encoder plus the two embeddings; masked reconstruction, composed prompts,
identity loss and Attention Refocusing), writing everything under ``trainings/<run>/`` of the
project.

Modules, one job each: `options` (memory options from the VRAM profile, LoRA targets, the
accelerator), `objective` (one function per loss term, composed by `Objective`), `state` (run
locks, resume selection, checkpoint save and restore), `previews` (scored previews and choosing
one as the artefact), `weights` (the artefact file of the current weights), `loop` (`Trainer`,
both phases) and `run` (`train`: a run's record, events and failures).
"""

from engine.training.errors import TrainingCancelled, TrainingError
from engine.training.loop import Trainer, phase_two_trainer
from engine.training.objective import Objective
from engine.training.options import Options, lora_configs, make_accelerator, resolve_options
from engine.training.previews import (
    PreviewCheckpoint,
    artefact_from_preview,
    best_preview,
    preview_checkpoints,
    use_preview,
)
from engine.training.run import train
from engine.training.state import resume_available
from engine.training.weights import ARTEFACT, PREVIEW_WEIGHTS, save_weights

__all__ = [
    "ARTEFACT",
    "PREVIEW_WEIGHTS",
    "Objective",
    "Options",
    "PreviewCheckpoint",
    "Trainer",
    "TrainingCancelled",
    "TrainingError",
    "artefact_from_preview",
    "best_preview",
    "lora_configs",
    "make_accelerator",
    "phase_two_trainer",
    "preview_checkpoints",
    "resolve_options",
    "resume_available",
    "save_weights",
    "train",
    "use_preview",
]
