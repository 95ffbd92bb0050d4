"""The store's errors (each message meant for the user) and its one warning."""

from __future__ import annotations

from engine.errors import UserError


class StoreError(UserError):
    """A project-store operation failed; the message is meant for the user."""


class InvalidName(StoreError):
    """A name cannot become a file or folder name."""


class NameTaken(StoreError):
    """A name gives the same folder as another project's name."""


class ProjectBusy(StoreError):
    """A project cannot be deleted while one of its trainings runs."""


class StorageFull(StoreError):
    """The disk holding a folder ran out of space."""


class ManifestRecovered(UserWarning):
    """A manifest did not parse, so the previous one is used."""
