"""The asset cache's entry points: hand out an asset (downloading it on first use), download,
import a file the user fetched, and list what is there."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from engine.assets.download import Progress, fetch_from_any
from engine.assets.errors import AssetError, AssetMissing, NonCommercialAsset
from engine.assets.install import install
from engine.assets.layout import (
    LOCK_DIR,
    PARTIAL_DIR,
    assets_dir,
    is_present,
    missing_message,
    offline,
    target_path,
)
from engine.assets.registry import REGISTRY, get_asset


@dataclass(frozen=True)
class AssetStatus:
    """One row of ``magicapture models list``; ``size`` is the download size in bytes."""

    name: str
    kind: str
    present: bool
    path: Path
    size: int | None
    licence: str
    commercial_ok: bool
    description: str


def asset_path(
    name: str, *, download: bool = True, progress: Progress | None = None, commercial: bool = False
) -> Path:
    """The cached file (or folder, for archives) of asset ``name``, downloading it on first use.

    Raises `NonCommercialAsset` when ``commercial`` is set and the licence forbids commercial use,
    and `AssetMissing` when the asset is absent and ``download`` is false or offline mode is on.
    """
    asset = get_asset(name)
    if commercial and not asset.commercial_ok:
        raise NonCommercialAsset(
            f"{asset.description} ({asset.filename}) is licensed for non-commercial use only "
            f"({asset.licence}), and commercial use is switched on; pick a commercially usable model "
            "or switch commercial use off."
        )
    if is_present(asset):
        return target_path(asset)
    if not download:
        raise AssetMissing(missing_message(asset, "automatic download is switched off"))
    return download_asset(name, progress=progress)


def download_asset(name: str, *, progress: Progress | None = None) -> Path:
    """Download, check and install asset ``name`` unless it is already cached; return its path.

    Sources are tried in order; a network failure or HTTP error moves on to the next one. Only one
    process downloads a given asset at a time (a file lock); the others wait and reuse its result.
    """
    asset = get_asset(name)
    if offline():
        raise AssetMissing(
            missing_message(asset, "offline mode is on (HF_HUB_OFFLINE or MAGICAPTURE_OFFLINE)")
        )
    folder = assets_dir()
    (folder / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / LOCK_DIR / f"{asset.name}.lock")):
        if is_present(asset):
            return target_path(asset)
        part = folder / PARTIAL_DIR / f"{asset.filename}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        if asset.size is not None and part.exists() and part.stat().st_size > asset.size:
            part.unlink()
        if asset.size is None or not part.exists() or part.stat().st_size != asset.size:
            fetch_from_any(asset, part, progress)
        return install(asset, part)


def import_asset(name: str, path: str | os.PathLike[str]) -> Path:
    """Copy a file the user downloaded (the zip, for archives) into the cache after checking it."""
    asset = get_asset(name)
    source = Path(path).expanduser()
    if not source.is_file():
        raise AssetError(f"There is no file at {source} to import as {asset.name}.")
    folder = assets_dir()
    (folder / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
    (folder / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / LOCK_DIR / f"{asset.name}.lock")):
        fd, name_ = tempfile.mkstemp(prefix=f"{asset.filename}.", suffix=".import", dir=folder / PARTIAL_DIR)
        os.close(fd)
        copy = Path(name_)
        try:
            shutil.copyfile(source, copy)
            return install(asset, copy)
        finally:
            copy.unlink(missing_ok=True)


def list_assets() -> list[AssetStatus]:
    return [
        AssetStatus(
            name=asset.name,
            kind=asset.kind,
            present=is_present(asset),
            path=target_path(asset),
            size=asset.size,
            licence=asset.licence,
            commercial_ok=asset.commercial_ok,
            description=asset.description,
        )
        for asset in REGISTRY.values()
    ]
