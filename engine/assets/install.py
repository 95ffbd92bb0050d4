"""Installing a downloaded or imported file into the cache: size and sha256 checked (against the
registry, or the hash recorded on first use), then moved into place or unpacked; a bad file is deleted."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock

from engine.assets.download import CHUNK
from engine.assets.errors import AssetCorrupt, AssetError, AssetHashMismatch, AssetSizeMismatch
from engine.assets.layout import LOCK_DIR, assets_dir, target_path
from engine.assets.registry import Asset, manual_hint
from engine.store import atomic_write_json, file_sha256, replace_folder

HASHES_FILE = "hashes.json"


def install(asset: Asset, file: Path) -> Path:
    """Check ``file`` (size, sha256) and move or unpack it into the cache; a bad file is deleted."""
    size = file.stat().st_size
    digest = _check(asset, file)
    target = target_path(asset)
    if asset.is_archive:
        _unpack(asset, file, target)
        file.unlink()
    else:
        os.replace(file, target)
    if asset.sha256 is None and _recorded_hash(asset) is None:
        _record_hash(asset, digest, size)
    return target


def _check(asset: Asset, file: Path) -> str:
    size = file.stat().st_size
    if asset.size is not None and size != asset.size:
        file.unlink()
        raise AssetSizeMismatch(
            f"{asset.filename} has {size} bytes, but it should have {asset.size}; it was not kept. "
            + manual_hint(asset)
        )
    digest = file_sha256(file)
    expected, origin = asset.sha256, "expected sha256"
    if expected is None:
        expected, origin = _recorded_hash(asset), "sha256 recorded when it was first installed"
    if expected is not None and digest != expected.lower():
        file.unlink()
        raise AssetHashMismatch(
            f"{asset.filename} has sha256 {digest}, not the {origin} ({expected}); it was deleted. "
            "The transfer may have been corrupted or the source changed: " + manual_hint(asset)
        )
    return digest


def _unpack(asset: Asset, archive: Path, target: Path) -> None:
    """Unzip ``archive`` flat into a temporary folder, check the members, then rename it to ``target``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{asset.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                base = PurePosixPath(info.filename).name
                if info.is_dir() or not base or base.startswith("."):
                    continue
                with bundle.open(info) as src, open(staging / base, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
        missing = [m for m in asset.archive_members if not (staging / m).is_file()]
        if missing:
            raise AssetCorrupt(_corrupt_message(asset, f"it lacks {', '.join(missing)}"))
        replace_folder(staging, target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        archive.unlink(missing_ok=True)
        raise AssetCorrupt(_corrupt_message(asset, str(error) or type(error).__name__)) from error
    except AssetCorrupt:
        archive.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _corrupt_message(asset: Asset, reason: str) -> str:
    return (
        f"The archive {asset.filename} cannot be used ({reason}); it was deleted. Run the download again, "
        f"or download {asset.urls[0]} yourself and run `magicapture models import {asset.name} PATH`."
    )


def _recorded_hash(asset: Asset) -> str | None:
    return _recorded_hashes().get(asset.name, {}).get("sha256")


def _recorded_hashes() -> dict[str, dict[str, Any]]:
    path = assets_dir() / HASHES_FILE
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as error:
        raise AssetError(
            f"{path} is damaged ({error}); delete it to record the asset hashes again."
        ) from error


def _record_hash(asset: Asset, digest: str, size: int) -> None:
    folder = assets_dir()
    with FileLock(str(folder / LOCK_DIR / f"{HASHES_FILE}.lock")):
        hashes = _recorded_hashes()
        hashes[asset.name] = {"sha256": digest, "filename": asset.filename, "size": size}
        atomic_write_json(folder / HASHES_FILE, hashes)
