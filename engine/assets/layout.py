"""Where the asset cache is and what is in it: its folder, the offline switch, each asset's place."""

from __future__ import annotations

import os
from pathlib import Path

from engine.assets.registry import Asset

ASSETS_ENV = "MAGICAPTURE_ASSETS"
OFFLINE_ENVS = ("MAGICAPTURE_OFFLINE", "HF_HUB_OFFLINE")
PARTIAL_DIR = ".partial"
LOCK_DIR = ".locks"
STANDIN_MARKER = "DEMO_STANDIN"
"""JSON file the demo kit puts in its asset folder: ``{"detectors": {path relative to the folder: sha256}}``."""
_TRUE = {"1", "true", "yes", "on"}


def assets_dir() -> Path:
    """The asset cache: ``$MAGICAPTURE_ASSETS``, else ``magicapture-assets`` beside the Hugging Face hub cache."""
    override = os.environ.get(ASSETS_ENV)
    if override:
        return Path(override).expanduser().resolve()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser().resolve().parent / "magicapture-assets"


def demo_standins() -> bool:
    """Whether the asset folder is the demo kit's (it holds `STANDIN_MARKER`): every model in it is a
    stand-in with random weights in the real format."""
    return (assets_dir() / STANDIN_MARKER).is_file()


def offline() -> bool:
    """Whether downloads are switched off by ``MAGICAPTURE_OFFLINE`` or ``HF_HUB_OFFLINE``."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENVS)


def target_path(asset: Asset) -> Path:
    """Where the asset lives in the cache: the file, or the unpacked folder of an archive."""
    return assets_dir() / (asset.name if asset.is_archive else asset.filename)


def is_present(asset: Asset) -> bool:
    target = target_path(asset)
    if asset.is_archive:
        return all((target / member).is_file() for member in asset.archive_members)
    return target.is_file()


def missing_message(asset: Asset, reason: str) -> str:
    """Say which file is missing, where it goes and where to get it."""
    folder = assets_dir()
    if asset.is_archive:
        place = f"or unzip it so that {folder / asset.name} holds {', '.join(asset.archive_members)}"
    else:
        place = f"or copy it to {folder / asset.filename}"
    return (
        f"The model file {asset.filename} ({asset.description}) is not in {folder}, and {reason}. "
        f"Download it from {asset.urls[0]} (project page: {asset.home}), then run "
        f"`magicapture models import {asset.name} PATH` to check and install it, {place}."
    )
