"""``magicapture prepare`` in process: cheap checks before the face kit, one kit per call, the reason
code of each refusal, and the fallback line that names the parts really on their fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures_faces import ScriptedDetector, encode

import engine.faces
from engine import cli
from engine.faces import FaceKit
from engine.faces.fallback import EllipseParser


class KitLoader:
    """Stands in for `engine.faces.load_face_kit`: counts its calls, returns a kit that finds no face."""

    def __init__(self, fallbacks: tuple[str, ...] = ()):
        self.fallbacks = fallbacks
        self.calls = 0

    def __call__(self, **options) -> FaceKit:
        self.calls += 1
        return FaceKit(ScriptedDetector([]), EllipseParser(), None, fallbacks=self.fallbacks)


@pytest.fixture
def loader(monkeypatch: pytest.MonkeyPatch) -> KitLoader:
    loader = KitLoader()
    monkeypatch.setattr(engine.faces, "load_face_kit", loader)
    return loader


def prepare(*photos: Path, capsys: pytest.CaptureFixture) -> tuple[int, list[str], list[str]]:
    """Runs ``magicapture prepare anna PHOTOS --role source``; its exit status, stdout and stderr lines."""
    with pytest.raises(SystemExit) as done:
        cli.main(["prepare", "anna", *map(str, photos), "--role", "source"])
    out, err = capsys.readouterr()
    return done.value.code, out.splitlines(), err.splitlines()


def blank(path: Path, side: int) -> Path:
    path.write_bytes(encode(np.full((side, side, 3), 128, np.uint8), "PNG"))
    return path


def test_a_tiny_or_unreadable_photo_is_refused_without_loading_the_face_kit(
    tmp_path: Path, loader: KitLoader, capsys: pytest.CaptureFixture
) -> None:
    """The kit (16 s with the real models) loaded before any check, so even a 1x1 PNG took 25 s."""
    tiny = blank(tmp_path / "tiny.png", 1)
    note = tmp_path / "note.jpg"
    note.write_text("not an image")
    code, out, _ = prepare(tiny, note, capsys=capsys)
    assert loader.calls == 0
    assert code == 2
    assert out == [
        "refused tiny.png: too_small - tiny.png is only 1x1 pixels; upload a photo whose shorter side is "
        "at least 256 pixels.",
        "refused note.jpg: unreadable - note.jpg is not an image file, or it is damaged; upload a JPEG, "
        "PNG, WebP or HEIC photo.",
    ]


def test_the_face_kit_loads_once_per_call_after_the_cheap_checks(
    tmp_path: Path, loader: KitLoader, capsys: pytest.CaptureFixture
) -> None:
    photos = [blank(tmp_path / "tiny.png", 1), blank(tmp_path / "a.png", 300), blank(tmp_path / "b.png", 300)]
    code, out, _ = prepare(*photos, capsys=capsys)
    assert loader.calls == 1 and code == 2
    assert [line.split(" - ")[0] for line in out] == [
        "refused tiny.png: too_small",
        "refused a.png: no_face",
        "refused b.png: no_face",
    ]


@pytest.mark.parametrize(
    ("fallbacks", "line"),
    [
        ((), None),
        (("detector",), "Using the offline fallback face detector (Haar cascades)."),
        (
            ("parser",),
            "Using the offline fallback face parser (an ellipse around the landmarks: approximate masks).",
        ),
        (
            ("detector", "parser"),
            "Using the offline fallback face detector (Haar cascades) and face parser (an ellipse around "
            "the landmarks: approximate masks).",
        ),
        (
            ("detector", "parser", "recogniser"),
            "Using the offline fallback face detector (Haar cascades) and face parser (an ellipse around "
            "the landmarks: approximate masks). No face recogniser: no identity embedding is stored.",
        ),
        (("recogniser",), "No face recogniser: no identity embedding is stored."),
    ],
)
def test_the_fallback_line_names_only_the_parts_on_their_fallback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    fallbacks: tuple[str, ...],
    line: str | None,
) -> None:
    """It said "fallback face detector (approximate masks)" whatever fell back, though masks are
    approximate only when the parser is the fallback."""
    loader = KitLoader(fallbacks)
    monkeypatch.setattr(engine.faces, "load_face_kit", loader)
    _, _, err = prepare(blank(tmp_path / "a.png", 300), capsys=capsys)
    assert loader.calls == 1
    said = [text for text in err if text.startswith(("Using the offline", "No face recogniser"))]
    assert said == ([line] if line else [])
