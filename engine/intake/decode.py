"""Reading an upload: a photo file read within bounds, its bytes decoded to an upright 8-bit sRGB array."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import UserError
from engine.intake.outcome import Refused, _Refusal

if TYPE_CHECKING:
    from PIL import Image

FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "HEIF": ".heic"}
"""Accepted container formats (Pillow's names) and the extension the original is stored with."""
MAX_BYTES = 64 * 2**20
MAX_PIXELS = 64_000_000
MIN_SIDE = 256
_FORMAT_NAMES = "JPEG, PNG, WebP or HEIC"


class PhotoFileError(UserError):
    """A photo path that is not a readable file of at most `MAX_BYTES`; the message names it."""


def check_photo_file(path: str | Path) -> None:
    """Refuse, without opening it, a path that is missing, not a regular file, or larger than `MAX_BYTES`.

    Raises `PhotoFileError`.
    """
    try:
        info = os.stat(path)
    except OSError as error:
        raise PhotoFileError(_unreadable_message(path, error)) from error
    _check_file_kind(path, info)


def read_photo(path: str | Path) -> bytes:
    """The bytes of the photo file at ``path``, refused as by `check_photo_file`.

    Opens without waiting for a pipe's writer and reads at most ``MAX_BYTES + 1`` bytes, so a
    file swapped or grown after a check is refused too.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise PhotoFileError(_unreadable_message(path, error)) from error
    with open(fd, "rb") as handle:
        _check_file_kind(path, os.fstat(fd))
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise PhotoFileError(_too_large_message(path))
    return data


def _check_file_kind(path: str | Path, info: os.stat_result) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise PhotoFileError(f"{path} is a folder, not a photo file; give the paths of the photos in it.")
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "pipe" if stat.S_ISFIFO(info.st_mode) else "socket" if stat.S_ISSOCK(info.st_mode) else "device"
        )
        raise PhotoFileError(
            f"{path} is a {kind}, not a photo file; give the path of a {_FORMAT_NAMES} photo."
        )
    if info.st_size > MAX_BYTES:
        raise PhotoFileError(_too_large_message(path))


def _unreadable_message(path: str | Path, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"There is no file {path}; check the path of the photo."
    return f"{path} could not be opened ({error.strerror or error}); check that the photo is a readable file."


def _too_large_message(path: str | Path) -> str:
    return f"{path} is larger than {MAX_BYTES // 2**20} MB, the most a photo may be; choose a smaller file."


def display_name(filename: str) -> str:
    """How messages name an upload: its base name (any folders dropped), at most 80 characters."""
    name = Path(str(filename).replace("\\", "/")).name.strip() or "the photo"
    return name if len(name) <= 80 else name[:77] + "..."


@dataclass(frozen=True)
class CheckedUpload:
    """An upload that passed the checks that need no face model, decoded once for `add_checked`."""

    data: bytes
    """The uploaded bytes, stored as the original."""
    name: str
    """How messages name it (`display_name`)."""
    image: np.ndarray
    """Upright RGB ``uint8`` pixels."""
    extension: str
    """The original's storage extension."""


def check_upload(data: bytes, filename: str) -> CheckedUpload | Refused:
    """The checks that need no face model, as `add_photo` runs them first: the upload is readable, in
    a supported format and within the size limits. The decoded upload, or its refusal.

    A caller with many photos runs this before it loads the face models, and loads them only when
    a photo passes.
    """
    name = display_name(filename)
    try:
        image, extension = decode_image(data, name)
    except _Refusal as refusal:
        return refusal.refused
    return CheckedUpload(data, name, image, extension)


def decode_image(data: bytes, name: str = "the photo") -> tuple[np.ndarray, str]:
    """Decode an upload to an RGB ``uint8`` array (EXIF orientation applied) and its storage extension.

    Raises `_Refusal` (inside this package) for anything that is not a usable JPEG/PNG/WebP/HEIC.
    """
    from PIL import Image, UnidentifiedImageError

    _register_heif()
    if not data:
        raise _Refusal("unreadable", f"{name} is empty; upload a {_FORMAT_NAMES} photo.")
    if len(data) > MAX_BYTES:
        raise _Refusal(
            "too_large",
            f"{name} is {len(data) / 2**20:.1f} MB; upload a photo of at most {MAX_BYTES // 2**20} MB.",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise _Refusal(
                    "unsupported_format",
                    f"{name} is a {image.format or 'unknown'} file; upload a {_FORMAT_NAMES} photo.",
                )
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise _too_large(name, width, height)
            image.load()
            extension = FORMATS[image.format]
            rgb = _to_rgb(_upright(image))
        except _Refusal:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError) as error:
            raise _Refusal(
                "too_large",
                f"{name} has too many pixels to open safely; upload a photo of at most "
                f"{MAX_PIXELS // 1_000_000} megapixels.",
            ) from error
        except UnidentifiedImageError as error:
            raise _Refusal(
                "unreadable",
                f"{name} is not an image file, or it is damaged; upload a {_FORMAT_NAMES} photo.",
            ) from error
        except Exception as error:  # Pillow raises OSError, ValueError, SyntaxError, struct.error...
            raise _Refusal(
                "unreadable",
                f"{name} could not be read as an image ({_short(error)}); upload a {_FORMAT_NAMES} photo.",
            ) from error
    height, width = rgb.shape[:2]
    if min(width, height) < MIN_SIDE:
        raise _Refusal(
            "too_small",
            f"{name} is only {width}x{height} pixels; upload a photo whose shorter side is at least {MIN_SIDE} pixels.",
        )
    return rgb, extension


def _too_large(name: str, width: int, height: int) -> _Refusal:
    return _Refusal(
        "too_large",
        f"{name} is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
        f"upload a photo of at most {MAX_PIXELS // 1_000_000} megapixels.",
    )


def _short(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _register_heif() -> None:
    import pillow_heif

    pillow_heif.register_heif_opener()


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block leaves the image as it is."""
    from PIL import ImageOps

    # In place: no copy of an upright photo. Malformed EXIF must not make a readable photo unusable.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    """8-bit sRGB from any Pillow mode: 16-bit and float greys rescaled, transparency over white."""
    from PIL import Image, ImageCms

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if image.mode == "F" and peak <= 1.0:
            values = values * 255.0
        elif peak > 255:
            values = values / 257.0
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "CMYK"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            image = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass  # an unusable profile: fall back to the plain conversion below
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
