"""Photo intake: decode an upload, check it has one usable face, crop it, and store it in the project.

`add_photo` accepts source (selfie) and reference (style) photos alike. It decodes JPEG, PNG,
WebP and HEIC (EXIF orientation applied, any colour mode to 8-bit sRGB), refuses what training
cannot use, each refusal with a reason code and a full-sentence message, crops a 512x512 portrait
around the one dominant face, parses it, embeds it, and writes everything into
``photos/<role>/<id>/`` before adding the manifest entry. Nothing is written for a refused file.
`read_photo` reads an upload from a path, refusing folders, devices, pipes and files over the size
limit without reading them.

Stored per photo: ``original.<ext>`` (the uploaded bytes), ``crop.png``, ``mask.png`` (face region,
255 = face, for both roles: training uses ``1 - mask`` for references), ``labels.png`` (CelebAMask-HQ
class per pixel), ``preview.png`` (crop with the mask tinted), ``face.json`` and ``embedding.npy``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from engine.photos import IMAGES, PhotoRecord, photo_records
from engine.store import MANIFEST, Project, StoreError, atomic_write_bytes, now

if TYPE_CHECKING:
    from PIL import Image

    from engine.faces import Face, FaceKit

Role = Literal["source", "reference"]
ROLES: tuple[str, ...] = ("source", "reference")
FORMATS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "HEIF": ".heic"}
"""Accepted container formats (Pillow's names) and the extension the original is stored with."""
MAX_BYTES = 64 * 2**20
MAX_PIXELS = 64_000_000
MIN_SIDE = 256
CROP_SIZE = 512
CROP_CONTEXT = 2.5
"""Crop side in face-box sizes (when the photo is large enough)."""
CROP_FACE_HEIGHT = 0.45
"""Where the face-box centre sits in the crop, from the top."""
MIN_FACE = 80
"""Smallest face-box side in pixels of the original photo."""
SEVERAL_FACES_AREA = 0.3
"""A second face whose box is larger than this fraction of the largest makes the photo a group photo."""
MIN_VISIBLE = 0.9
"""A face box that lies less than this fraction inside the photo is cut off."""
MIN_SHARPNESS = 10.0
"""Variance of the Laplacian of the face, resized to 128 pixels; sharp faces score 70-200."""
MIN_FACE_MASK = 0.01
"""Smallest fraction of the crop the parsed face region must cover."""
DUPLICATE_COSINE = 0.95
DUPLICATE_HASH_BITS = 4
"""Near-duplicate if the 64-bit difference hashes of the crops differ in at most this many bits."""
_FORMAT_NAMES = "JPEG, PNG, WebP or HEIC"


@dataclass(frozen=True)
class Accepted:
    record: PhotoRecord


@dataclass(frozen=True)
class Refused:
    reason: str
    """Stable code: unreadable, unsupported_format, too_large, too_small, no_face, several_faces,
    face_too_small, face_cut_off, blurry, no_face_region, duplicate."""
    message: str


class PhotoFileError(Exception):
    """A photo path that is not a readable file of at most `MAX_BYTES`; the message names it."""


class _Refusal(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.refused = Refused(reason, message)


def add_photo(project: Project, data: bytes, filename: str, role: Role, kit: FaceKit) -> Accepted | Refused:
    """Check and store one uploaded photo; never raises for a bad file (only `StorageFull` and store errors)."""
    if role not in ROLES:
        raise ValueError(f"Unknown photo role {role!r}; use one of {', '.join(ROLES)}.")
    name = _display_name(filename)
    try:
        image, extension = decode_image(data, name)
        face, sharpness = _dominant_face(image, name, kit)
        crop, crop_face, window = _portrait_crop(image, face)
        labels = kit.parser.parse(crop, crop_face)
        mask = _face_mask(labels, name)
        embedding = kit.scorer.embed(crop, crop_face) if kit.scorer is not None else None
        digest = hashlib.sha256(data).hexdigest()
        fingerprint = _difference_hash(crop)
        _check_duplicates(project, role, name, digest, fingerprint, embedding, photo_records(project, role))
    except _Refusal as refusal:
        return refusal.refused
    photo_id = uuid.uuid4().hex[:12]
    folder = Path("photos", role, photo_id)
    placed = crop_face.to_json()
    record = PhotoRecord(
        id=photo_id,
        role=role,
        status="accepted",
        filename=name,
        original=(folder / f"original{extension}").as_posix(),
        crop=(folder / "crop.png").as_posix(),
        mask=(folder / "mask.png").as_posix(),
        labels=(folder / "labels.png").as_posix(),
        preview=(folder / "preview.png").as_posix(),
        face=(folder / "face.json").as_posix(),
        embedding=(folder / "embedding.npy").as_posix() if embedding is not None else None,
        embedding_model=kit.scorer.name if kit.scorer is not None else None,
        landmarks=placed["landmarks"],
        bbox=placed["bbox"],
        size=[int(image.shape[1]), int(image.shape[0])],
        sharpness=round(sharpness, 1),
        sha256=digest,
        dhash=fingerprint,
        fallback=kit.is_fallback,
        added=now(),
    )
    files = {
        record.original: data,
        record.crop: _png(crop),
        record.mask: _png(mask.astype(np.uint8) * 255),
        record.labels: _png(labels),
        record.preview: _png(_preview(crop, mask)),
    }
    if embedding is not None:
        files[record.embedding] = _npy(embedding)
    details = {
        "face_in_crop": placed,
        "face_in_original": face.to_json(),
        "crop_window": window,
        "detector": kit.detector.name,
        "parser": kit.parser.name,
        "fallbacks": list(kit.fallbacks),
    }
    files[record.face] = json.dumps(details, indent=2).encode("utf-8")
    try:
        _store(project, record, files, embedding)
    except _Refusal as refusal:  # a duplicate stored by a concurrent upload
        return refusal.refused
    return Accepted(record)


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


def remove_photo(project: Project, photo_id: str) -> PhotoRecord:
    """Delete a photo's entry and files; returns the removed record."""

    def change(manifest: dict[str, Any]) -> dict[str, Any]:
        for index, entry in enumerate(manifest.get(IMAGES, [])):
            if entry.get("id") == photo_id:
                return manifest[IMAGES].pop(index)
        raise StoreError(f"Project {project.name!r} has no photo with id {photo_id!r}.")

    record = PhotoRecord.from_json(project.update(change))
    folder = project.path("photos", record.role, record.id)
    if folder.exists():
        trash = folder.with_name(f".removing-{record.id}")
        os.replace(folder, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return record


def _display_name(filename: str) -> str:
    name = Path(str(filename).replace("\\", "/")).name.strip() or "the photo"
    return name if len(name) <= 80 else name[:77] + "..."


def decode_image(data: bytes, name: str = "the photo") -> tuple[np.ndarray, str]:
    """Decode an upload to an RGB ``uint8`` array (EXIF orientation applied) and its storage extension.

    Raises `_Refusal` (inside this module) for anything that is not a usable JPEG/PNG/WebP/HEIC.
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

    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF must not make a readable photo unusable
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


def _dominant_face(image: np.ndarray, name: str, kit: FaceKit) -> tuple[Face, float]:
    """The one usable face, and its sharpness; refuses none, several, small, cut-off or blurry faces."""
    faces = kit.detector.detect(image)
    if not faces:
        raise _Refusal(
            "no_face", f"No face was found in {name}; upload a photo in which one face is clearly visible."
        )
    face = max(faces, key=lambda f: f.area)
    others = [f for f in faces if f is not face and f.area > SEVERAL_FACES_AREA * face.area]
    if others:
        raise _Refusal(
            "several_faces",
            f"{name} shows {len(others) + 1} faces; upload a photo of one person only, or crop it to one face.",
        )
    height, width = image.shape[:2]
    x1, y1, x2, y2 = face.bbox
    visible = max(0.0, min(x2, width) - max(x1, 0)) * max(0.0, min(y2, height) - max(y1, 0))
    landmarks = np.asarray(face.landmarks)
    inside = np.all((landmarks >= 0) & (landmarks < [width, height]))
    if visible < MIN_VISIBLE * face.area or not inside:
        raise _Refusal(
            "face_cut_off",
            f"The face in {name} is cut off by the edge of the photo; upload one that shows the whole face.",
        )
    if min(face.width, face.height) < MIN_FACE:
        raise _Refusal(
            "face_too_small",
            f"The face in {name} is only {min(face.width, face.height):.0f} pixels wide; upload a closer or "
            f"larger photo in which the face is at least {MIN_FACE} pixels wide.",
        )
    sharpness = _sharpness(image, face)
    if sharpness < MIN_SHARPNESS:
        raise _Refusal(
            "blurry",
            f"The face in {name} is too blurry (sharpness {sharpness:.0f}, at least {MIN_SHARPNESS:.0f} needed); "
            "upload a sharper photo.",
        )
    return face, sharpness


def _sharpness(image: np.ndarray, face: Face) -> float:
    """Variance of the Laplacian of the face box, resized so that its longer side is 128 pixels."""
    import cv2

    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in face.bbox)
    region = image[max(y1, 0) : min(y2, height), max(x1, 0) : min(x2, width)]
    grey = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
    scale = 128 / max(grey.shape)
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def _portrait_crop(image: np.ndarray, face: Face) -> tuple[np.ndarray, Face, list[int]]:
    """A ``CROP_SIZE`` square around the face (as large as the photo allows), the face in its
    coordinates, and the window ``[x, y, side]`` in the original."""
    import cv2

    height, width = image.shape[:2]
    side = int(min(round(CROP_CONTEXT * max(face.width, face.height)), width, height))
    cx, cy = face.center
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    y0 = int(np.clip(round(cy - CROP_FACE_HEIGHT * side), 0, height - side))
    window = image[y0 : y0 + side, x0 : x0 + side]
    interpolation = cv2.INTER_AREA if side > CROP_SIZE else cv2.INTER_CUBIC
    crop = cv2.resize(window, (CROP_SIZE, CROP_SIZE), interpolation=interpolation)
    scale = CROP_SIZE / side
    return np.ascontiguousarray(crop), face.transformed(scale, (-x0 * scale, -y0 * scale)), [x0, y0, side]


def _face_mask(labels: np.ndarray, name: str) -> np.ndarray:
    from engine.faces import face_mask

    mask = face_mask(labels)
    if mask.mean() < MIN_FACE_MASK:
        raise _Refusal(
            "no_face_region",
            f"The face in {name} could not be outlined; upload a clearer photo of the face, facing the camera.",
        )
    return mask


def _difference_hash(image: np.ndarray) -> str:
    """64-bit difference hash (horizontal gradients of a 9x8 grey thumbnail) as 16 hex digits."""
    import cv2

    grey = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (9, 8), interpolation=cv2.INTER_AREA)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def _check_duplicates(
    project: Project,
    role: str,
    name: str,
    digest: str,
    fingerprint: str,
    embedding: np.ndarray | None,
    existing: list[PhotoRecord],
) -> None:
    from engine.faces.identity import cosine

    for record in existing:
        same = record.sha256 == digest
        if not same and record.dhash:
            same = bin(int(record.dhash, 16) ^ int(fingerprint, 16)).count("1") <= DUPLICATE_HASH_BITS
        if not same and embedding is not None and record.embedding:
            try:
                other = np.load(project.path(record.embedding), allow_pickle=False)
            except (OSError, ValueError):
                other = None
            same = (
                other is not None
                and other.size == embedding.size
                and cosine(other, embedding) > DUPLICATE_COSINE
            )
        if same:
            raise _Refusal(
                "duplicate",
                f"{name} is nearly the same photo as {record.filename or 'one'} already among this "
                f"project's {role} photos; upload a different photo.",
            )


def _store(
    project: Project, record: PhotoRecord, files: dict[str, bytes], embedding: np.ndarray | None
) -> None:
    """Write the files into a hidden folder, rename it into place, then add the manifest entry.

    The duplicate check runs again under the manifest lock, for uploads racing each other.
    """
    folder = project.path(record.crop).parent
    staging = folder.with_name(f".incoming-{record.id}")
    try:
        for relative, payload in files.items():
            atomic_write_bytes(staging / Path(relative).name, payload)
        os.replace(staging, folder)

        def add(manifest: dict[str, Any]) -> None:
            entries = manifest.setdefault(IMAGES, [])
            existing = [PhotoRecord.from_json(e) for e in entries if e.get("role") == record.role]
            _check_duplicates(
                project, record.role, record.filename, record.sha256, record.dhash, embedding, existing
            )
            entries.append(record.to_json())

        project.update(add)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):  # photos/<role>, photos: only if now empty
            with contextlib.suppress(OSError):
                parent.rmdir()
        if not (project.root / MANIFEST).exists():  # deleted by another tab meanwhile: leave no remnant
            shutil.rmtree(project.root, ignore_errors=True)
        raise


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _preview(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The crop with the face region tinted and outlined."""
    import cv2

    preview = crop.astype(np.float32)
    tint = np.array([255, 80, 80], dtype=np.float32)
    preview[mask] = 0.6 * preview[mask] + 0.4 * tint
    preview = preview.astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(preview, contours, -1, (255, 40, 40), 2)
    return preview
