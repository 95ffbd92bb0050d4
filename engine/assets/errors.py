"""The asset errors: `AssetError` and one subclass per failure; each message is meant for the user."""

from __future__ import annotations

from engine.errors import UserError


class AssetError(UserError):
    """A model asset could not be found, fetched or checked; the message is meant for the user."""


class UnknownAsset(AssetError):
    """No asset of that name is registered."""


class AssetMissing(AssetError):
    """The asset is not in the cache and may not be downloaded now."""


class NonCommercialAsset(AssetError):
    """Commercial use is switched on and the asset's licence forbids it."""


class AssetNetworkError(AssetError):
    """No source of the asset could be reached."""


class AssetServerError(AssetError):
    """A server answered with an HTTP error status."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class AssetInterrupted(AssetError):
    """The transfer stopped part-way; the partial file is kept so that a retry resumes it."""


class AssetSizeMismatch(AssetError):
    """The file does not have the registered size; it was not kept."""


class AssetHashMismatch(AssetError):
    """The file's sha256 is not the expected one; it was deleted."""


class AssetCorrupt(AssetError):
    """A downloaded archive cannot be unpacked or lacks a required file; it was deleted."""
