"""Model weights that are not diffusers models: a registry, a verified download cache and licences.

Each `Asset` names one file (or one zip archive that is unpacked into a folder named after the
asset), where to get it, its sha256, size and licence. `asset_path` hands out the cached file and
downloads it on first use: the transfer streams into ``<assets dir>/.partial/<file>.part`` (resumed
with an HTTP ``Range`` request after an interruption), the size and sha256 are checked, and only then
is the file moved into place with ``os.replace`` (same file system, so atomic); a file that fails a
check is deleted. In offline mode (``HF_HUB_OFFLINE=1`` or ``MAGICAPTURE_OFFLINE=1``) nothing is
downloaded and `AssetMissing` says which file to put where.

Trust on first use: an entry whose ``sha256`` is ``None`` is accepted on its first complete download
or import, and that file's hash is recorded in ``<assets dir>/hashes.json``; later downloads and
imports of the same asset must match it.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from filelock import FileLock

from engine.store import StorageFull, atomic_write_json, file_sha256, replace_folder

ASSETS_ENV = "MAGICAPTURE_ASSETS"
OFFLINE_ENVS = ("MAGICAPTURE_OFFLINE", "HF_HUB_OFFLINE")
HASHES_FILE = "hashes.json"
PARTIAL_DIR = ".partial"
LOCK_DIR = ".locks"
CHUNK = 1 << 20
TIMEOUT_S = 30
_TRUE = {"1", "true", "yes", "on"}

Progress = Callable[[int, int | None], None]
"""Called as ``progress(done_bytes, total_bytes)``; ``total_bytes`` is ``None`` when unknown."""


class AssetError(Exception):
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


@dataclass(frozen=True)
class Asset:
    """One downloadable weight file (or zip archive of files).

    ``archive_members`` lists the files the rest of the app needs from a zip download; the whole zip
    is unpacked (flattened) into ``<assets dir>/<name>/`` and the zip itself is not kept.
    ``commercial_ok`` follows the licence the weights are published under.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    licence: str
    commercial_ok: bool
    kind: str
    description: str
    home: str
    archive_members: tuple[str, ...] = ()

    @property
    def is_archive(self) -> bool:
        return bool(self.archive_members)


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


_INSIGHTFACE_LICENCE = "InsightFace model licence: non-commercial research use only"

REGISTRY: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="buffalo_l",
            filename="buffalo_l.zip",
            urls=(
                "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                "https://github.com/deepinsight/insightface/releases/download/model-zoo/buffalo_l.zip",
            ),
            sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
            size=288_621_354,
            licence=_INSIGHTFACE_LICENCE,
            commercial_ok=False,
            kind="face-analysis",
            description="InsightFace buffalo_l pack: SCRFD-10G face detector and ArcFace R50 recogniser",
            home="https://github.com/deepinsight/insightface/tree/master/model_zoo",
            archive_members=("det_10g.onnx", "w600k_r50.onnx"),
        ),
        Asset(
            name="bisenet",
            filename="79999_iter.pth",
            urls=(
                "https://huggingface.co/ManyOtherFunctions/face-parse-bisent/resolve/main/79999_iter.pth",
                "https://github.com/clibdev/face-parsing.PyTorch/releases/latest/download/face-parsing-bisenet.pth",
            ),
            sha256="468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
            size=53_289_463,
            licence="MIT (face-parsing.PyTorch); trained on CelebAMask-HQ, a non-commercial research data set",
            commercial_ok=True,
            kind="face-parser",
            description="BiSeNet face parser, 19 CelebAMask-HQ classes (skin, hair, eyes, mouth...)",
            home="https://github.com/zllrunning/face-parsing.PyTorch",
        ),
        Asset(
            name="gfpgan_v1.4",
            filename="GFPGANv1.4.pth",
            urls=(
                "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
                "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth",
            ),
            sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
            size=348_632_874,
            licence="Apache-2.0",
            commercial_ok=True,
            kind="face-restorer",
            description="GFPGAN v1.4 face restorer",
            home="https://github.com/TencentARC/GFPGAN",
        ),
        Asset(
            name="codeformer",
            filename="codeformer.pth",
            urls=("https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",),
            sha256="1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7",
            size=376_637_898,
            licence="NTU S-Lab License 1.0: non-commercial use only",
            commercial_ok=False,
            kind="face-restorer",
            description="CodeFormer face restorer",
            home="https://github.com/sczhou/CodeFormer",
        ),
        Asset(
            name="realesrgan_x2plus",
            filename="RealESRGAN_x2plus.pth",
            urls=("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",),
            sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
            size=67_061_725,
            licence="BSD-3-Clause",
            commercial_ok=True,
            kind="upscaler",
            description="Real-ESRGAN x2plus upscaler (2x)",
            home="https://github.com/xinntao/Real-ESRGAN",
        ),
        Asset(
            name="realesrgan_x4plus",
            filename="RealESRGAN_x4plus.pth",
            urls=("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",),
            sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
            size=67_040_989,
            licence="BSD-3-Clause",
            commercial_ok=True,
            kind="upscaler",
            description="Real-ESRGAN x4plus upscaler (4x)",
            home="https://github.com/xinntao/Real-ESRGAN",
        ),
        Asset(
            name="yunet",
            filename="face_detection_yunet_2023mar.onnx",
            urls=(
                "https://huggingface.co/opencv/face_detection_yunet/resolve/main/face_detection_yunet_2023mar.onnx",
                "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
            ),
            sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            size=232_589,
            licence="MIT",
            commercial_ok=True,
            kind="face-detector",
            description="OpenCV YuNet face detector (2023mar), the commercially usable detector",
            home="https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet",
        ),
        Asset(
            name="sface",
            filename="face_recognition_sface_2021dec.onnx",
            urls=(
                "https://huggingface.co/opencv/face_recognition_sface/resolve/main/face_recognition_sface_2021dec.onnx",
                "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec.onnx",
            ),
            sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
            size=38_696_353,
            licence="Apache-2.0",
            commercial_ok=True,
            kind="face-recogniser",
            description="OpenCV SFace face recogniser (2021dec), the commercially usable recogniser",
            home="https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface",
        ),
        Asset(
            name="laion_aesthetic",
            filename="sac+logos+ava1-l14-linearMSE.pth",
            urls=(
                "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth",
                "https://huggingface.co/camenduru/improved-aesthetic-predictor/resolve/main/sac%2Blogos%2Bava1-l14-linearMSE.pth",
            ),
            sha256="21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
            size=3_714_759,
            licence="Apache-2.0",
            commercial_ok=True,
            kind="aesthetic",
            description="LAION improved aesthetic predictor head for CLIP ViT-L/14 image embeddings",
            home="https://github.com/christophschuhmann/improved-aesthetic-predictor",
        ),
    )
}

COMMERCIAL_ALTERNATIVES = {
    "buffalo_l": "OpenCV's YuNet and SFace replace InsightFace's detector and recogniser",
    "codeformer": "GFPGAN replaces CodeFormer for face restoration",
}
"""Commercially usable replacements of the non-commercial assets, as the commercial-use setting picks them."""


def assets_dir() -> Path:
    """The asset cache: ``$MAGICAPTURE_ASSETS``, else ``magicapture-assets`` beside the Hugging Face hub cache."""
    override = os.environ.get(ASSETS_ENV)
    if override:
        return Path(override).expanduser().resolve()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser().resolve().parent / "magicapture-assets"


def offline() -> bool:
    """Whether downloads are switched off by ``MAGICAPTURE_OFFLINE`` or ``HF_HUB_OFFLINE``."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENVS)


def get_asset(name: str) -> Asset:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownAsset(f"There is no model asset named {name!r}; known assets: {known}.") from None


def target_path(asset: Asset) -> Path:
    """Where the asset lives in the cache: the file, or the unpacked folder of an archive."""
    return assets_dir() / (asset.name if asset.is_archive else asset.filename)


def is_present(asset: Asset) -> bool:
    target = target_path(asset)
    if asset.is_archive:
        return all((target / member).is_file() for member in asset.archive_members)
    return target.is_file()


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
        raise AssetMissing(_missing_message(asset, "automatic download is switched off"))
    return download_asset(name, progress=progress)


def download_asset(name: str, *, progress: Progress | None = None) -> Path:
    """Download, check and install asset ``name`` unless it is already cached; return its path.

    Sources are tried in order; a network failure or HTTP error moves on to the next one. Only one
    process downloads a given asset at a time (a file lock); the others wait and reuse its result.
    """
    asset = get_asset(name)
    if offline():
        raise AssetMissing(
            _missing_message(asset, "offline mode is on (HF_HUB_OFFLINE or MAGICAPTURE_OFFLINE)")
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
            _fetch_from_any(asset, part, progress)
        return _install(asset, part)


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
            return _install(asset, copy)
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


def licence_notice(names: Iterable[str], *, alternatives: bool = False) -> str | None:
    """One sentence naming the non-commercial assets among ``names``, or ``None`` if there are none.

    With ``alternatives``, a second sentence says what the commercial-use setting uses instead.
    """
    restricted = [asset for asset in dict.fromkeys(map(get_asset, names)) if not asset.commercial_ok]
    if not restricted:
        return None
    listed = "; ".join(f"{asset.name} ({asset.licence})" for asset in restricted)
    notice = (
        f"These model weights may be used for non-commercial purposes only: {listed}; switch on the "
        "commercial-use setting to work with commercially usable models instead."
    )
    swaps = [COMMERCIAL_ALTERNATIVES[a.name] for a in restricted if a.name in COMMERCIAL_ALTERNATIVES]
    return f"{notice} With commercial use on, {'; '.join(swaps)}." if alternatives and swaps else notice


def _missing_message(asset: Asset, reason: str) -> str:
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


def _manual_hint(asset: Asset) -> str:
    return (
        f"Check the internet connection or proxy and try again, or download {asset.urls[0]} yourself "
        f"and run `magicapture models import {asset.name} PATH`."
    )


class _SourceFailed(Exception):
    """One source could not be used; the caller tries the next one."""

    def __init__(self, url: str, reason: str, status: int | None = None):
        super().__init__(reason)
        self.url, self.reason, self.status = url, reason, status


def _fetch_from_any(asset: Asset, part: Path, progress: Progress | None) -> None:
    failures: list[_SourceFailed] = []
    for url in asset.urls:
        try:
            _fetch(asset, url, part, progress)
            return
        except _SourceFailed as failure:
            failures.append(failure)
    tried = "; ".join(f"{f.url}: {f.reason}" for f in failures)
    statuses = [f.status for f in failures if f.status is not None]
    if len(statuses) == len(failures):
        raise AssetServerError(
            f"Could not download {asset.filename}: the server answered with an error ({tried}). "
            + _manual_hint(asset),
            statuses[-1],
        )
    raise AssetNetworkError(
        f"Could not download {asset.filename}: no source could be reached ({tried}). " + _manual_hint(asset)
    )


def _fetch(asset: Asset, url: str, part: Path, progress: Progress | None) -> None:
    """Stream ``url`` into ``part``, resuming what is there when the server allows it."""
    response, done, total = _open(url, part)
    with response:
        if asset.size is not None and total is not None and total != asset.size:
            part.unlink(missing_ok=True)
            raise AssetSizeMismatch(
                f"{urlsplit(url).netloc} offers {asset.filename} with {total} bytes, but it should have "
                f"{asset.size}; nothing was kept. The source may have changed: " + _manual_hint(asset)
            )
        bar = None
        if progress is None:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total, initial=done, unit="B", unit_scale=True, desc=asset.filename, disable=None
            )

            def progress(now: int, _total: int | None) -> None:
                bar.update(now - bar.n)

        try:
            with open(part, "ab" if done else "wb") as handle:
                while True:
                    try:
                        chunk = response.read1(CHUNK)  # what has arrived, so a stall loses nothing
                    except (OSError, http.client.HTTPException) as error:
                        raise _interrupted(
                            asset, url, part, done, total, str(error) or type(error).__name__
                        ) from error
                    if not chunk:
                        break
                    _write(handle, chunk, part)
                    done += len(chunk)
                    progress(done, total)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done < total:
        raise _interrupted(asset, url, part, done, total, "the connection closed early")


def _open(url: str, part: Path) -> tuple[http.client.HTTPResponse, int, int | None]:
    """Open ``url`` asking for the bytes after ``part``; return the response, its offset and the file size.

    A server that ignores ``Range`` (200), refuses it (416) or answers another range makes the
    download start again from byte 0.
    """
    have = part.stat().st_size if part.exists() else 0
    try:
        response = _request(url, have)
    except _SourceFailed as failure:
        if failure.status != 416 or not have:
            raise
        part.unlink()
        have, response = 0, _request(url, 0)
    if response.status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if start == have:
            return response, have, total
        response.close()
        part.unlink(missing_ok=True)
        if not have:
            raise _SourceFailed(url, "the server sent part of the file when asked for all of it")
        response = _request(url, 0)
        if response.status != 200:
            response.close()
            raise _SourceFailed(url, f"unexpected HTTP {response.status} for the whole file")
    length = response.headers.get("Content-Length", "")
    return response, 0, int(length) if length.isdigit() else None


def _request(url: str, start: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": "magicapture-studio"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        error.close()
        raise _SourceFailed(url, f"HTTP {error.code} {error.reason}", error.code) from error
    except urllib.error.URLError as error:
        raise _SourceFailed(url, str(error.reason)) from error
    except (OSError, http.client.HTTPException) as error:
        raise _SourceFailed(url, str(error) or type(error).__name__) from error


def _content_range(value: str) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` into (START, TOTAL); unknown parts are ``None``."""
    unit, _, spec = value.strip().partition(" ")
    span, _, total = spec.partition("/")
    start = span.partition("-")[0]
    if unit != "bytes" or not start.isdigit():
        return None, None
    return int(start), int(total) if total.isdigit() else None


def _write(handle: BinaryIO, chunk: bytes, part: Path) -> None:
    try:
        handle.write(chunk)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(
                f"The disk holding {part.parent} is full; free some space and run the download again "
                "(it resumes where it stopped)."
            ) from error
        raise


def _interrupted(
    asset: Asset, url: str, part: Path, done: int, total: int | None, reason: str
) -> AssetInterrupted:
    of = f" of {total}" if total is not None else ""
    return AssetInterrupted(
        f"The download of {asset.filename} from {urlsplit(url).netloc} stopped after {done}{of} bytes "
        f"({reason}). The partial file is kept in {part}; run the download again to resume it."
    )


def _install(asset: Asset, file: Path) -> Path:
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
            + _manual_hint(asset)
        )
    digest = file_sha256(file)
    expected, origin = asset.sha256, "expected sha256"
    if expected is None:
        expected, origin = _recorded_hash(asset), "sha256 recorded when it was first installed"
    if expected is not None and digest != expected.lower():
        file.unlink()
        raise AssetHashMismatch(
            f"{asset.filename} has sha256 {digest}, not the {origin} ({expected}); it was deleted. "
            "The transfer may have been corrupted or the source changed: " + _manual_hint(asset)
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
