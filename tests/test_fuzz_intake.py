"""Intake under hostile input: every file gets a clear refusal or a correct import, never a crash or a stray file.

Hypothesis builds files from real encoders (faces and noise in JPEG, PNG, WebP, HEIC, 16-bit, CMYK,
animated, EXIF-rotated...), files that only claim to be images (SVG, text, headers declaring huge
sizes) and random bytes behind real format signatures, then mutates them (truncation, flipped,
inserted and deleted bytes, appended garbage). The face kit is the offline fallback (Haar cascades
and ellipse masks), so unchanged portraits are accepted and the import path runs too.
"""

from __future__ import annotations

import functools
import io
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures_faces import astronaut, encode
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.faces import FaceKit
from engine.intake import Accepted, Refused, add_photo
from engine.store import ProjectStore

REASONS = {
    "unreadable", "unsupported_format", "too_large", "too_small", "no_face", "several_faces", "face_too_small",
    "face_cut_off", "blurry", "no_face_region", "duplicate",
}  # fmt: skip
STORED = {"crop.png", "mask.png", "labels.png", "preview.png", "face.json"}
EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "HEIF": ".heic"}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- files -----------------------------------------------------------------------------------


def _saved(image: Image.Image, fmt: str, **options) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))


def png_declaring(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG header declaring ``width`` x ``height`` with a few bytes of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A baseline JPEG whose frame header (SOF0) declares ``width`` x ``height`` (the data is a 16 px image)."""
    data = encode(np.full((16, 16, 3), 128, np.uint8))
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def gif_declaring(width: int, height: int) -> bytes:
    """A real 16 px GIF whose logical screen declares ``width`` x ``height``."""
    data = _saved(Image.new("P", (16, 16)), "GIF")
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


@functools.cache
def face(side: int = 512) -> Image.Image:
    return Image.fromarray(astronaut()).resize((side, side), Image.Resampling.LANCZOS)


def _exif_rotated() -> bytes:
    """The portrait stored lying on its side, with the EXIF tag (6) that turns it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _saved(face().transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=90)


def _animated(fmt: str) -> bytes:
    frames = [face(), face().transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
    return _saved(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def _noise(seed: int, side: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "PNG")


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="4000" height="4000">'
    b'<circle cx="2000" cy="2000" r="900" fill="#e0b090"/></svg>'
)
BUILDERS = {
    "jpeg": lambda: _saved(face(), "JPEG", quality=90),
    "png": lambda: _saved(face(), "PNG"),
    "webp": lambda: _saved(face(), "WEBP", quality=90),
    "heic": lambda: _saved(face(), "HEIF", quality=90),
    "png-16-bit-grey": lambda: _saved(
        Image.fromarray(np.asarray(face().convert("L"), np.uint16) * 257), "PNG"
    ),
    "png-rgba": lambda: _saved(face().convert("RGBA"), "PNG"),
    "png-palette": lambda: _saved(face().convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    "jpeg-cmyk": lambda: _saved(face().convert("CMYK"), "JPEG", quality=90),
    "jpeg-grey": lambda: _saved(face().convert("L"), "JPEG", quality=90),
    "jpeg-progressive": lambda: _saved(face(), "JPEG", quality=90, progressive=True),
    "jpeg-exif-rotated": _exif_rotated,
    "jpeg-bad-icc": lambda: _saved(face(), "JPEG", icc_profile=b"not a colour profile" * 8),
    "gif-animated": lambda: _animated("GIF"),
    "png-animated": lambda: _animated("PNG"),
    "webp-animated": lambda: _animated("WEBP"),
    "bmp": lambda: _saved(face(), "BMP"),
    "tiff": lambda: _saved(face(), "TIFF"),
    "ico": lambda: _saved(face(), "ICO"),
    "noise": lambda: _noise(1, 320),
    "tiny": lambda: _saved(face(32), "PNG"),
    "svg": lambda: SVG,
    "text-renamed": lambda: b"Dear client, here are the photos you asked for.\n" * 20,
    "empty": lambda: b"",
    "png-huge-dimensions": lambda: png_declaring(60_000, 60_000),
    "png-over-64-megapixels": lambda: png_declaring(9_000, 8_000),
    "png-zero-width": lambda: png_declaring(0, 512),
    "png-16-bit-huge": lambda: png_declaring(20_000, 20_000, depth=16),
    "jpeg-huge-dimensions": lambda: jpeg_declaring(65_500, 65_500),
    "gif-huge-dimensions": lambda: gif_declaring(65_535, 65_535),
}
SIGNATURES = [
    b"",
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    b"\xff\xd8\xff\xc0",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    b"\x00\x00\x00\x1cftypavif",
    b"BM",
    b"II*\x00",
    b"8BPS",
    b"<svg ",
    b"%PDF-1.7\n",
]


@functools.cache
def built(name: str) -> bytes:
    return BUILDERS[name]()


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` unchanged, or cut short, with bytes flipped, inserted or deleted, or with garbage appended."""
    kind = draw(st.sampled_from(["same", "truncate", "flip", "insert", "delete", "append"]))
    if kind == "same" or not data:
        return data if kind == "same" else draw(st.binary(max_size=64))
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    if kind == "flip":
        out = bytearray(data)
        for position in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=16)):
            out[position] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=256)) + data[at:]
    if kind == "delete":
        return data[:at] + data[at + draw(st.integers(1, 4096)) :]
    return data + draw(st.binary(min_size=1, max_size=4096))


FILENAMES = st.sampled_from(
    ["photo.jpg", "IMG_0001.HEIC", "", "  ", "../../../etc/passwd", "C:\\Users\\ann\\selfie.png", "a\x00b.jpg",
     "CON.jpg", "/abs/path/x.webp", "é" * 200 + ".png", ".."]
) | st.text(max_size=40)  # fmt: skip


# -- the property ----------------------------------------------------------------------------


def listing(root: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if p.name != ".lock"
    }


def check_intake(data: bytes, filename: str, role: str, kit: FaceKit) -> Accepted | Refused:
    """Add ``data`` to a fresh project and check the outcome: a clear refusal that changed nothing, or
    a complete import that added exactly one photo folder and its manifest entry."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        store = ProjectStore(root)
        project = store.create("client")
        before = listing(root)
        manifest = project.manifest()
        result = add_photo(project, data, filename, role, kit)
        after = listing(root)
        if isinstance(result, Refused):
            assert result.reason in REASONS, result
            assert result.message.endswith(".") and len(result.message) > 30, result
            assert after == before, "a refused file left something behind"
            assert project.manifest() == manifest
            return result
        assert isinstance(result, Accepted), result
        record = result.record
        folder = f"projects/client/photos/{role}/{record.id}"
        added = sorted(
            set(after) - set(before) - {"projects/client/photos", f"projects/client/photos/{role}"}
        )
        original = Path(record.original).name
        assert added == sorted([folder, *(f"{folder}/{name}" for name in STORED | {original})])
        assert after[f"{folder}/{original}"] == data
        assert Path(original).suffix in set(EXTENSIONS.values())
        assert "/" not in record.filename and "\\" not in record.filename
        crop = Image.open(io.BytesIO(after[f"{folder}/crop.png"]))
        mask = np.asarray(Image.open(io.BytesIO(after[f"{folder}/mask.png"])))
        assert crop.size == (512, 512) and crop.mode == "RGB" and mask.shape == (512, 512)
        assert 0 < (mask > 0).mean() < 1
        assert store.open("client").manifest()["images"] == [record.to_json()]
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(BUILDERS)), filename=FILENAMES)
def test_mutated_images_are_refused_clearly_or_imported_correctly(fallback_kit, data, name, filename):
    payload = data.draw(mutated(built(name)), label="payload")
    role = data.draw(st.sampled_from(["source", "reference"]), label="role")
    result = check_intake(payload, filename, role, fallback_kit)
    event(result.reason if isinstance(result, Refused) else "accepted")


@FUZZ
@given(signature=st.sampled_from(SIGNATURES), tail=st.binary(max_size=2048))
def test_random_bytes_behind_a_format_signature_are_refused(fallback_kit, signature, tail):
    result = check_intake(signature + tail, "upload.jpg", "source", fallback_kit)
    assert isinstance(result, Refused) and result.reason in {"unreadable", "unsupported_format", "too_large"}


# -- the cases named in the issue, each with its definite outcome ----------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("jpeg", "accepted"),
        ("png-16-bit-grey", "accepted"),
        ("jpeg-cmyk", "accepted"),
        ("jpeg-exif-rotated", "accepted"),
        ("jpeg-bad-icc", "accepted"),
        ("png-animated", "accepted"),
        ("heic", "accepted"),
        ("gif-animated", "unsupported_format"),
        ("svg", "unreadable"),
        ("text-renamed", "unreadable"),
        ("empty", "unreadable"),
        ("png-zero-width", "unreadable"),
        ("png-huge-dimensions", "too_large"),
        ("png-over-64-megapixels", "too_large"),
        ("jpeg-huge-dimensions", "too_large"),
        ("gif-huge-dimensions", "too_large"),
        ("tiny", "too_small"),
        ("noise", "no_face"),
    ],
)
def test_each_kind_of_file_gets_its_outcome(fallback_kit, name, expected):
    result = check_intake(built(name), f"{name}.jpg", "source", fallback_kit)
    assert (result.reason if isinstance(result, Refused) else "accepted") == expected, result


def test_a_truncated_jpeg_is_refused_at_every_cut(fallback_kit):
    data = built("jpeg")
    for cut in (0, 1, 2, 3, 10, 100, 600, len(data) // 2, len(data) - 200):
        result = check_intake(data[:cut], "cut.jpg", "source", fallback_kit)
        assert isinstance(result, Refused) and result.reason == "unreadable", (cut, result)
