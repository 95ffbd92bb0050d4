"""engine.intake: decoding, every refusal with its message, cropping, atomic storage, removal."""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures_faces import ScriptedDetector, astronaut, encode, face_at, insightface_image_path, wheel_photo
from PIL import Image

from engine.faces import FaceKit
from engine.faces.fallback import EllipseParser
from engine.intake import Accepted, Refused, add_photo, decode_image, remove_photo, storing
from engine.photos import photo_records
from engine.store import Project, ProjectStore, StorageFull, StoreError

FORMATS = "JPEG, PNG, WebP or HEIC"
REASONS = {
    "unreadable", "unsupported_format", "too_large", "too_small", "no_face", "several_faces", "face_too_small",
    "face_cut_off", "blurry", "no_face_region", "duplicate",
}  # fmt: skip


@pytest.fixture
def project() -> Project:
    return ProjectStore().create("client")


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def refuse(
    project: Project, data: bytes, name: str, kit: FaceKit, reason: str, message: str, role="source"
) -> None:
    """Assert the exact refusal, and that the project folder did not change at all."""
    before = listing(project.root)
    manifest = project.manifest()
    result = add_photo(project, data, name, role, kit)
    assert result == Refused(reason, message)
    assert listing(project.root) == before
    assert project.manifest() == manifest


def scripted_kit(faces, parser=None, scorer=None) -> FaceKit:
    return FaceKit(ScriptedDetector(faces), parser or EllipseParser(), scorer)


# Accepted photos


def test_portrait_is_cropped_parsed_embedded_and_stored(project: Project, demo_kit: FaceKit) -> None:
    data = encode(astronaut())
    result = add_photo(project, data, "uploads/astronaut.jpg", "source", demo_kit)
    assert isinstance(result, Accepted)
    record = result.record
    assert record.filename == "astronaut.jpg" and record.role == "source" and record.status == "accepted"
    assert record.fallback is True  # demo mode detects with Haar cascades
    assert project.manifest()["images"] == [record.to_json()]
    assert photo_records(project, "source") == [record] and photo_records(project, "reference") == []

    folder = project.path("photos", "source", record.id)
    assert sorted(p.name for p in folder.iterdir()) == [
        "crop.png", "embedding.npy", "face.json", "labels.png", "mask.png", "original.jpg", "preview.png"
    ]  # fmt: skip
    assert project.path(record.original).read_bytes() == data
    crop = np.asarray(Image.open(project.path(record.crop)))
    mask = np.asarray(Image.open(project.path(record.mask)))
    labels = np.asarray(Image.open(project.path(record.labels)))
    preview = np.asarray(Image.open(project.path(record.preview)))
    assert crop.shape == preview.shape == (512, 512, 3) and mask.shape == labels.shape == (512, 512)
    assert set(np.unique(mask)) <= {0, 255} and labels.max() < 19
    np.testing.assert_array_equal(mask == 255, np.isin(labels, range(1, 14)))
    assert not np.array_equal(preview, crop)

    landmarks = np.array(record.landmarks)
    x1, y1, x2, y2 = record.bbox
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
    assert (landmarks[:, 0] > x1).all() and (landmarks[:, 0] < x2).all()
    assert landmarks[0, 1] < landmarks[2, 1] < landmarks[3, 1]  # eyes above nose above mouth
    assert 0.3 < (y1 + y2) / 2 / 512 < 0.6  # portrait framing
    embedding = np.load(project.path(record.embedding))
    assert embedding.shape == (512,) and np.isclose(np.linalg.norm(embedding), 1, atol=1e-5)
    details = json.loads(project.path(record.face).read_text())
    assert details["detector"] == "haar" and details["parser"] == "bisenet"
    assert details["face_in_crop"]["landmarks"] == record.landmarks
    assert not any(name.startswith(".incoming") for name in listing(project.root))


def test_adding_a_photo_emits_no_future_warning_and_leaves_the_filters_alone(
    project: Project, demo_kit: FaceKit
) -> None:
    """insightface's ``norm_crop`` (the ArcFace embedding) calls scikit-image's deprecated
    ``SimilarityTransform.estimate``, and the CLI printed that FutureWarning for every accepted photo."""
    from insightface.utils.face_align import norm_crop

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = add_photo(project, encode(astronaut()), "astronaut.jpg", "source", demo_kit)
        assert isinstance(result, Accepted) and result.record.embedding is not None  # ArcFace ran
        assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
        norm_crop(np.zeros((112, 112, 3), np.uint8), np.asarray(result.record.landmarks, np.float32) / 4)
    # Silenced at the call only: the same call outside it still warns.
    assert any(issubclass(w.category, FutureWarning) for w in caught)


def test_fallback_kit_stores_an_elliptical_mask_and_no_embedding(
    project: Project, fallback_kit: FaceKit
) -> None:
    result = add_photo(project, encode(astronaut(), "PNG"), "astronaut.png", "reference", fallback_kit)
    assert isinstance(result, Accepted)
    record = result.record
    assert record.fallback is True and record.embedding is None and record.original.endswith(".png")
    mask = np.asarray(Image.open(project.path(record.mask))) > 0
    x1, y1, x2, y2 = record.bbox
    assert 0.6 < mask.sum() / ((x2 - x1) * (y2 - y1)) < 1.6
    ys, xs = np.nonzero(mask)
    assert x1 < xs.mean() < x2 and y1 < ys.mean() < y2


def test_a_small_second_face_is_ignored_but_a_large_one_is_not(project: Project) -> None:
    image = encode(astronaut())
    main, small, large = face_at(150, 100, 350, 300), face_at(10, 10, 70, 70), face_at(380, 300, 500, 420)
    assert isinstance(add_photo(project, image, "a.jpg", "source", scripted_kit([small, main])), Accepted)
    refuse(
        project, image, "b.jpg", scripted_kit([main, large]), "several_faces",
        "b.jpg shows 2 faces; upload a photo of one person only, or crop it to one face.",
    )  # fmt: skip


def test_exif_orientation_is_applied(project: Project, fallback_kit: FaceKit) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; viewers turn it 90 degrees clockwise
    buffer = io.BytesIO()
    Image.fromarray(np.rot90(astronaut(), k=1).copy()).save(buffer, format="JPEG", exif=exif)
    result = add_photo(project, buffer.getvalue(), "rotated.jpg", "source", fallback_kit)
    assert isinstance(result, Accepted)
    landmarks = np.array(result.record.landmarks)
    assert landmarks[0, 1] < landmarks[3, 1] and landmarks[0, 0] < landmarks[1, 0]
    # The same pixels without the tag hold no upright face.
    plain = encode(np.rot90(astronaut(), k=1).copy())
    refuse(
        project, plain, "sideways.jpg", fallback_kit, "no_face",
        "No face was found in sideways.jpg; upload a photo in which one face is clearly visible.",
    )  # fmt: skip


# Refusals: one test per reason, each with its message and nothing written


def test_group_photo_is_refused(project: Project, fallback_kit: FaceKit) -> None:
    before = listing(project.root)
    result = add_photo(
        project, insightface_image_path("t1.jpg").read_bytes(), "t1.jpg", "source", fallback_kit
    )
    assert isinstance(result, Refused) and result.reason == "several_faces"
    assert re.fullmatch(
        r"t1\.jpg shows [4-9] faces; upload a photo of one person only, or crop it to one face\.",
        result.message,
    )
    assert listing(project.root) == before


def test_photo_without_a_face_is_refused(project: Project, fallback_kit: FaceKit) -> None:
    from skimage import data

    refuse(
        project, encode(data.coffee()), "coffee.jpg", fallback_kit, "no_face",
        "No face was found in coffee.jpg; upload a photo in which one face is clearly visible.",
    )  # fmt: skip


def test_tiny_image_is_refused(project: Project, fallback_kit: FaceKit) -> None:
    refuse(
        project, insightface_image_path("Tom_Hanks_54745.png").read_bytes(), "tom.png", fallback_kit, "too_small",
        "tom.png is only 112x112 pixels; upload a photo whose shorter side is at least 256 pixels.",
    )  # fmt: skip


def test_small_face_is_refused(project: Project, fallback_kit: FaceKit) -> None:
    small = np.asarray(Image.fromarray(astronaut()).resize((300, 300), Image.Resampling.LANCZOS))
    before = listing(project.root)
    result = add_photo(project, encode(small), "far.jpg", "source", fallback_kit)
    assert result.reason == "face_too_small"
    assert re.fullmatch(
        r"The face in far\.jpg is only \d+ pixels wide; upload a closer or larger photo in which the face is "
        r"at least 80 pixels wide\.",
        result.message,
    )
    assert listing(project.root) == before


def test_face_cut_off_by_the_border_is_refused(project: Project) -> None:
    message = (
        "The face in edge.jpg is cut off by the edge of the photo; upload one that shows the whole face."
    )
    image = encode(astronaut())
    refuse(project, image, "edge.jpg", scripted_kit([face_at(-60, 100, 140, 300)]), "face_cut_off", message)
    beyond = face_at(300, 100, 500, 300)
    beyond.landmarks[4] = [515, 280]  # a mouth corner outside the photo
    refuse(project, image, "edge.jpg", scripted_kit([beyond]), "face_cut_off", message)


def test_blurry_face_is_refused(project: Project, fallback_kit: FaceKit) -> None:
    import cv2

    blurred = cv2.GaussianBlur(astronaut(), (0, 0), 3)
    before = listing(project.root)
    result = add_photo(project, encode(blurred, quality=95), "soft.jpg", "source", fallback_kit)
    assert result.reason == "blurry"
    assert re.fullmatch(
        r"The face in soft\.jpg is too blurry \(sharpness \d, at least 10 needed\); upload a sharper photo\.",
        result.message,
    )
    assert listing(project.root) == before


def test_face_that_cannot_be_outlined_is_refused(project: Project) -> None:
    class NothingParser:
        name = "nothing"

        def parse(self, image, face):
            return np.zeros(image.shape[:2], np.uint8)

    refuse(
        project, encode(astronaut()), "odd.jpg", scripted_kit([face_at(150, 100, 350, 300)], NothingParser()),
        "no_face_region",
        "The face in odd.jpg could not be outlined; upload a clearer photo of the face, facing the camera.",
    )  # fmt: skip


def test_near_duplicates_are_refused_per_role(project: Project, demo_kit: FaceKit) -> None:
    data = encode(astronaut())
    assert isinstance(add_photo(project, data, "astronaut.jpg", "source", demo_kit), Accepted)
    message = (
        "{} is nearly the same photo as astronaut.jpg already among this project's source photos; "
        "upload a different photo."
    )
    refuse(project, data, "again.jpg", demo_kit, "duplicate", message.format("again.jpg"))
    recompressed = encode(astronaut(), quality=60)
    refuse(project, recompressed, "small.jpg", demo_kit, "duplicate", message.format("small.jpg"))
    assert isinstance(add_photo(project, data, "astronaut.jpg", "reference", demo_kit), Accepted)


def test_same_identity_embedding_counts_as_duplicate(project: Project) -> None:
    class ConstantScorer:
        name, dim = "constant", 4

        def __init__(self, vector):
            self.vector = np.asarray(vector, np.float32)

        def embed(self, image, face):
            return self.vector

    face = [face_at(150, 100, 350, 300)]
    assert isinstance(
        add_photo(
            project,
            encode(astronaut()),
            "a.jpg",
            "source",
            scripted_kit(face, scorer=ConstantScorer([1, 0, 0, 0])),
        ),
        Accepted,
    )
    mirrored = encode(astronaut()[:, ::-1].copy())  # different pixels and hash
    refuse(
        project, mirrored, "b.jpg", scripted_kit(face, scorer=ConstantScorer([0.99, 0.1, 0, 0])), "duplicate",
        "b.jpg is nearly the same photo as a.jpg already among this project's source photos; upload a different photo.",
    )  # fmt: skip
    other = scripted_kit(face, scorer=ConstantScorer([0, 1, 0, 0]))
    assert isinstance(add_photo(project, mirrored, "c.jpg", "source", other), Accepted)


def test_unreadable_files_are_refused(project: Project, fallback_kit: FaceKit) -> None:
    refuse(project, b"", "x.jpg", fallback_kit, "unreadable", f"x.jpg is empty; upload a {FORMATS} photo.")
    refuse(
        project, b"hello, not a picture", "notes.jpg", fallback_kit, "unreadable",
        f"notes.jpg is not an image file, or it is damaged; upload a {FORMATS} photo.",
    )  # fmt: skip
    data = encode(astronaut())
    before = listing(project.root)
    result = add_photo(project, data[: len(data) // 2], "cut.jpg", "source", fallback_kit)
    assert result.reason == "unreadable" and result.message.startswith(
        "cut.jpg could not be read as an image ("
    )
    assert listing(project.root) == before


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused(project: Project, fallback_kit: FaceKit, fmt: str) -> None:
    refuse(
        project, encode(astronaut(), fmt), f"photo.{fmt.lower()}", fallback_kit, "unsupported_format",
        f"photo.{fmt.lower()} is a {fmt} file; upload a {FORMATS} photo.",
    )  # fmt: skip


def png_header(width: int, height: int) -> bytes:
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_oversized_files_and_decompression_bombs_are_refused(project: Project, fallback_kit: FaceKit) -> None:
    refuse(
        project, png_header(9000, 8000), "huge.png", fallback_kit, "too_large",
        "huge.png is 9000x8000 pixels (72 megapixels); upload a photo of at most 64 megapixels.",
    )  # fmt: skip
    refuse(
        project, png_header(30000, 30000), "bomb.png", fallback_kit, "too_large",
        "bomb.png has too many pixels to open safely; upload a photo of at most 64 megapixels.",
    )  # fmt: skip
    refuse(
        project, b"\xff" * (70 * 2**20), "big.jpg", fallback_kit, "too_large",
        "big.jpg is 70.0 MB; upload a photo of at most 64 MB.",
    )  # fmt: skip


def test_bad_inputs_are_always_refused_never_raised(project: Project, fallback_kit: FaceKit) -> None:
    rng = np.random.default_rng(0)
    originals = [encode(astronaut(), fmt) for fmt in ("JPEG", "PNG", "WEBP")] + [encode(astronaut(), "HEIF")]
    samples = [rng.bytes(n) for n in (1, 7, 100, 5000)]
    for data in originals:
        samples += [data[:n] for n in (2, 16, 64, 300, len(data) // 3)]
        flipped = bytearray(data)
        for position in rng.integers(20, len(data), 40):
            flipped[position] ^= 0xFF
        samples.append(bytes(flipped))
    for data in samples:
        result = add_photo(project, data, "fuzz", "source", fallback_kit)
        if isinstance(result, Refused):
            assert result.reason in REASONS and result.message.endswith(".")
        else:
            assert isinstance(result, Accepted)


# Decoding of colour modes and formats


def _decoded(image: Image.Image, fmt: str, **options) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    rgb, _ = decode_image(buffer.getvalue())
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    return rgb


def test_every_colour_mode_becomes_8_bit_rgb() -> None:
    red = np.zeros((300, 400, 3), np.uint8)
    red[..., 0] = 200
    cmyk = _decoded(Image.fromarray(red).convert("CMYK"), "JPEG", quality=95)
    assert np.abs(cmyk[150, 200].astype(int) - [200, 0, 0]).max() < 12

    grey16 = np.full((300, 400), 40000, np.uint16)
    assert np.abs(_decoded(Image.fromarray(grey16), "PNG")[0, 0].astype(int) - 40000 / 257).max() <= 1

    rgba = np.zeros((300, 400, 4), np.uint8)
    rgba[:, :200] = [10, 20, 30, 255]
    composed = _decoded(Image.fromarray(rgba), "PNG")
    assert composed[0, 0].tolist() == [10, 20, 30] and composed[0, 399].tolist() == [255, 255, 255]

    palette = Image.fromarray(red).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert _decoded(palette, "PNG")[0, 0].tolist() == [200, 0, 0]
    assert _decoded(Image.fromarray(red).convert("LA"), "PNG")[0, 0].tolist() == [60, 60, 60]
    assert _decoded(Image.fromarray(red).convert("1"), "PNG")[0, 0].tolist() in ([0, 0, 0], [255, 255, 255])

    for fmt, extension in (("WEBP", ".webp"), ("HEIF", ".heic"), ("JPEG", ".jpg"), ("PNG", ".png")):
        buffer = io.BytesIO()
        Image.fromarray(red).save(buffer, format=fmt, quality=95)
        rgb, stored_as = decode_image(buffer.getvalue())
        assert stored_as == extension and np.abs(rgb[150, 200].astype(int) - [200, 0, 0]).max() < 12


def test_decoding_the_test_photos() -> None:
    rgb, extension = decode_image(insightface_image_path("t1.jpg").read_bytes())
    assert rgb.shape == (886, 1280, 3) and extension == ".jpg"
    np.testing.assert_array_equal(wheel_photo("t1.jpg"), rgb)


# Storage


def test_remove_photo_deletes_entry_and_files(project: Project, fallback_kit: FaceKit) -> None:
    record = add_photo(project, encode(astronaut()), "a.jpg", "source", fallback_kit).record
    assert remove_photo(project, record.id) == record
    assert photo_records(project) == [] and not project.path("photos", "source", record.id).exists()
    with pytest.raises(StoreError, match="has no photo with id 'nope'"):
        remove_photo(project, "nope")


def test_a_full_disk_leaves_nothing_behind(
    project: Project, fallback_kit: FaceKit, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = []
    real_write = storing.atomic_write_bytes

    def failing_write(path: Path, data: bytes) -> Path:
        if len(written) == 3:
            raise StorageFull("The disk holding the project is full; free some space and try again.")
        written.append(path)
        return real_write(path, data)

    monkeypatch.setattr(storing, "atomic_write_bytes", failing_write)
    before = listing(project.root)
    with pytest.raises(StorageFull):
        add_photo(project, encode(astronaut()), "a.jpg", "source", fallback_kit)
    assert len(written) == 3
    assert listing(project.root) == before and project.manifest()["images"] == []


def test_concurrent_uploads_of_the_same_photo_store_it_once(project: Project, fallback_kit: FaceKit) -> None:
    data = encode(astronaut())
    results: list = []
    threads = [
        threading.Thread(
            target=lambda: results.append(add_photo(project, data, "a.jpg", "source", fallback_kit))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(type(r).__name__ for r in results) == ["Accepted", "Refused"]
    assert [r.reason for r in results if isinstance(r, Refused)] == ["duplicate"]
    assert len(photo_records(project)) == 1 and len(list(project.path("photos", "source").iterdir())) == 1


def test_unknown_role_is_a_programming_error(project: Project, fallback_kit: FaceKit) -> None:
    with pytest.raises(ValueError, match="Unknown photo role 'style'"):
        add_photo(project, encode(astronaut()), "a.jpg", "style", fallback_kit)
