"""The two ways a training stops early: a failure the user can act on, and a cancellation."""

from __future__ import annotations

from pathlib import Path

from engine.errors import UserError


class TrainingError(UserError):
    """Training could not run or stopped on an error; the message says what to do."""


class TrainingCancelled(UserError):
    """The training was cancelled; its state is in ``checkpoint`` and can be resumed."""

    def __init__(self, run: str, checkpoint: Path | None):
        super().__init__(f"Training {run} was cancelled; resume it to continue from its last checkpoint.")
        self.run = run
        self.checkpoint = checkpoint
