"""Sample photos for a first run without photos of one's own: drawn selfies of one person and drawn
style references, which demo mode's intake accepts.

Demo mode detects faces with OpenCV's Haar cascades (the kit's detector is a marked stand-in, see
`engine.faces`), so the portraits are drawn with what a frontal-face cascade looks for: a skin oval
lit evenly, darker brows and eye sockets, a lighter nose bridge, a mouth, hair above. The selfies
share one person's features and differ in backdrop, light, framing and tilt (so none is a
near-duplicate of another); the references are other people, each painted in another look. They
go through `engine.intake.add_photo` like any upload: nothing here writes a photo record itself.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.faces import FaceKit
    from engine.intake import Accepted, Refused
    from engine.store import Project

SIZE = 512
"""Side of a sample photo: twice intake's smallest, the size an SD 1.x model paints."""
SAMPLES_PER_ROLE = 5
"""Within the 4-6 photos per role the Photos tab recommends; there are this many shots and looks."""

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class Person:
    """The features that stay the same in every photo of one person."""

    skin: Colour
    hair: Colour
    eyes: Colour
    shirt: Colour
    width: float
    """Half the face's width, in photo sides."""
    height: float
    """Half the face's height, in photo sides."""


@dataclass(frozen=True)
class Shot:
    """How one photo of a person is taken: backdrop, light, framing and head tilt."""

    backdrop: Colour
    light: float
    """Brightness change from the left edge to the right one (-0.3 to 0.3)."""
    shift: tuple[float, float]
    """Face centre offset from the middle, in photo sides."""
    scale: float
    tilt: float
    """Degrees, counter-clockwise."""
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """The light's colour, as a factor per channel (daylight: 1, 1, 1)."""
    greyscale: bool = False


@dataclass(frozen=True)
class SamplePhoto:
    """A sample photo as the file a user would pick."""

    filename: str
    role: str
    data: bytes
    """PNG bytes."""


SELFIE_PERSON = Person(
    skin=(214, 168, 136), hair=(62, 42, 30), eyes=(58, 40, 28), shirt=(48, 62, 96), width=0.2, height=0.27
)
SELFIE_SHOTS = (
    Shot((122, 142, 172), 0.0, (0.0, 0.0), 1.0, 0.0),
    Shot((196, 186, 160), 0.2, (0.06, 0.01), 0.92, 3.0, tint=(1.3, 0.9, 0.7)),
    Shot((90, 112, 92), -0.18, (-0.05, 0.02), 1.05, -3.0, tint=(0.7, 1.0, 1.5)),
    Shot((168, 120, 110), 0.1, (0.03, -0.02), 0.86, -1.5, tint=(0.8, 1.15, 0.7)),
    Shot((70, 76, 98), -0.25, (0.07, 0.04), 0.86, 4.0, greyscale=True),
)
"""Daylight, a warm lamp, cool shade, green fluorescent light, and black and white: the demo's
random-weight recognisers (ArcFace's, and SFace's in commercial mode) tell photos of one person
apart mostly by their colours, so these keep every pair under intake's near-duplicate similarity."""
REFERENCE_PEOPLE = (
    Person((236, 196, 170), (170, 120, 60), (60, 90, 120), (120, 30, 40), 0.19, 0.26),
    Person((150, 104, 78), (30, 24, 20), (40, 28, 20), (200, 190, 170), 0.21, 0.27),
    Person((226, 180, 150), (120, 70, 40), (70, 60, 40), (30, 90, 80), 0.2, 0.28),
    Person((190, 140, 110), (90, 90, 96), (50, 50, 50), (70, 40, 90), 0.2, 0.26),
    Person((240, 206, 184), (20, 16, 14), (36, 30, 26), (160, 150, 60), 0.19, 0.27),
)
REFERENCE_LOOKS = ("oil painting", "sepia studio", "pop art", "charcoal", "pastel")
"""The look each reference is painted in, in `REFERENCE_PEOPLE` order."""
PAINTED_LOOKS: tuple[tuple[Colour, Colour, tuple[float, float, float], bool], ...] = (
    ((236, 196, 170), (170, 120, 60), (1.0, 1.0, 1.0), False),
    ((236, 196, 170), (200, 170, 110), (0.7, 1.0, 1.5), False),
    ((236, 196, 170), (20, 16, 14), (1.2, 1.1, 0.6), False),
    ((240, 206, 184), (120, 70, 40), (0.7, 1.0, 1.5), False),
    ((205, 160, 125), (200, 170, 110), (0.75, 1.05, 1.05), False),
    ((240, 206, 184), (200, 170, 110), (1.0, 1.0, 1.0), True),
    ((205, 160, 125), (200, 170, 110), (0.8, 1.15, 0.7), False),
    ((240, 206, 184), (200, 170, 110), (0.8, 1.15, 0.7), False),
)
"""Skin, hair and the light's colour (and black and white) of the demo's painted references, in
turn: skins light enough for the Haar cascade in front of any backdrop, and, since the random-weight
recognisers (ArcFace's, SFace's) tell pictures apart mostly by colour, combinations chosen so that
eight of the tiny model's paintings are not taken for near-duplicates of each other."""
REFERENCE_BACKDROPS: tuple[Colour, ...] = (
    (70, 90, 60),
    (60, 60, 70),
    (230, 200, 40),
    (150, 150, 150),
    (150, 200, 220),
)


def draw_portrait(person: Person, shot: Shot, background: np.ndarray | None = None) -> np.ndarray:
    """A ``SIZE`` square RGB portrait of ``person`` taken as ``shot`` (over ``background`` if given)."""
    from PIL import Image, ImageDraw, ImageFilter

    if background is None:
        image = Image.new("RGB", (SIZE, SIZE), shot.backdrop)
    else:
        image = Image.fromarray(background).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
    draw = ImageDraw.Draw(image)
    cx, cy = SIZE * (0.5 + shot.shift[0]), SIZE * (0.46 + shot.shift[1])
    fw, fh = SIZE * person.width * shot.scale, SIZE * person.height * shot.scale

    def shade(colour: Colour, factor: float) -> Colour:
        return tuple(int(channel * factor) for channel in colour)  # type: ignore[return-value]

    draw.ellipse([cx - 2.1 * fw, cy + 1.05 * fh, cx + 2.1 * fw, cy + 2.6 * fh], fill=person.shirt)
    draw.rectangle(
        [cx - 0.45 * fw, cy + 0.6 * fh, cx + 0.45 * fw, cy + 1.3 * fh], fill=shade(person.skin, 0.85)
    )
    draw.ellipse([cx - 1.15 * fw, cy - 1.2 * fh, cx + 1.15 * fw, cy + 0.3 * fh], fill=person.hair)
    draw.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=person.skin)
    draw.chord([cx - 1.05 * fw, cy - 1.15 * fh, cx + 1.05 * fw, cy - 0.2 * fh], 180, 360, fill=person.hair)
    eye_y = cy - 0.18 * fh
    for side in (-1, 1):
        ex = cx + side * 0.42 * fw
        brow = [ex - 0.22 * fw, eye_y - 0.2 * fh, ex + 0.22 * fw, eye_y - 0.22 * fh]
        draw.line(brow, fill=shade(person.hair, 0.7), width=max(2, int(0.09 * fw)))
        draw.ellipse(
            [ex - 0.26 * fw, eye_y - 0.1 * fh, ex + 0.26 * fw, eye_y + 0.1 * fh],
            fill=shade(person.skin, 0.75),
        )
        draw.ellipse(
            [ex - 0.18 * fw, eye_y - 0.055 * fh, ex + 0.18 * fw, eye_y + 0.055 * fh], fill=(240, 240, 240)
        )
        draw.ellipse(
            [ex - 0.08 * fw, eye_y - 0.055 * fh, ex + 0.08 * fw, eye_y + 0.055 * fh], fill=person.eyes
        )
    nose = [(cx, eye_y + 0.05 * fh), (cx - 0.13 * fw, cy + 0.28 * fh), (cx + 0.13 * fw, cy + 0.28 * fh)]
    draw.polygon(nose, fill=shade(person.skin, 0.85))
    draw.ellipse(
        [cx - 0.14 * fw, cy + 0.22 * fh, cx + 0.14 * fw, cy + 0.32 * fh], fill=shade(person.skin, 0.7)
    )
    draw.chord([cx - 0.35 * fw, cy + 0.38 * fh, cx + 0.35 * fw, cy + 0.6 * fh], 0, 180, fill=(150, 60, 60))
    image = image.rotate(shot.tilt, resample=Image.BICUBIC, center=(cx, cy), fillcolor=shot.backdrop)
    image = image.filter(ImageFilter.GaussianBlur(SIZE / 300))
    pixels = np.asarray(image, dtype=np.float32)
    pixels *= 1.0 + shot.light * np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)[None, :, None]
    pixels *= np.asarray(shot.tint, dtype=np.float32)
    if shot.greyscale:
        pixels[:] = pixels.mean(axis=2, keepdims=True)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def paint_in_look(image: np.ndarray, look: str) -> np.ndarray:
    """``image`` re-painted in one of `REFERENCE_LOOKS`."""
    from PIL import Image, ImageFilter, ImageOps

    picture = Image.fromarray(image)
    if look == "oil painting":
        picture = ImageOps.posterize(picture.filter(ImageFilter.ModeFilter(5)), 4)
    elif look == "sepia studio":
        picture = ImageOps.colorize(ImageOps.grayscale(picture), (52, 32, 16), (246, 226, 190))
    elif look == "pop art":
        picture = ImageOps.posterize(ImageOps.autocontrast(picture), 2)
    elif look == "charcoal":
        picture = ImageOps.autocontrast(ImageOps.grayscale(picture), cutoff=2).convert("RGB")
    elif look == "pastel":
        picture = Image.blend(picture, Image.new("RGB", picture.size, (236, 214, 236)), 0.35)
    else:
        raise ValueError(f"Unknown look {look!r}; choose one of {', '.join(REFERENCE_LOOKS)}.")
    return np.asarray(picture.convert("RGB"))


def texture(pixels: np.ndarray, seed: int) -> np.ndarray:
    """``pixels`` with a faint fixed grain, as a camera's sensor leaves."""
    grain = np.random.default_rng(seed).normal(0.0, 3.0, pixels.shape)
    return np.clip(pixels.astype(np.float32) + grain, 0, 255).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_photos(role: str, count: int = SAMPLES_PER_ROLE) -> list[SamplePhoto]:
    """``count`` (at most `SAMPLES_PER_ROLE`) sample photos of ``role``: selfies of one person, or style references."""
    if not 1 <= count <= SAMPLES_PER_ROLE:
        raise ValueError(f"count must be between 1 and {SAMPLES_PER_ROLE} (got {count}).")
    photos = []
    for index in range(count):
        if role == "source":
            pixels = draw_portrait(SELFIE_PERSON, SELFIE_SHOTS[index])
            name = f"sample-selfie-{index + 1}.png"
        elif role == "reference":
            shot = Shot(REFERENCE_BACKDROPS[index], 0.0, (0.0, 0.0), 1.0, 0.0)
            look = REFERENCE_LOOKS[index]
            pixels = paint_in_look(draw_portrait(REFERENCE_PEOPLE[index], shot), look)
            name = f"sample-style-{index + 1}-{look.replace(' ', '-')}.png"
        else:
            raise ValueError(f"Unknown photo role {role!r}; use source or reference.")
        photos.append(SamplePhoto(name, role, _png(texture(pixels, index))))
    return photos


def portrait_over(painting: np.ndarray, index: int) -> np.ndarray:
    """A drawn portrait in front of ``painting``: the demo's style reference painted from a prompt.

    The tiny model's random weights paint no face, so demo mode keeps its painting, softened and
    darkened to a low-key backdrop in its colours (a face stands out from a dark backdrop for the
    Haar cascade whatever was painted), and draws a person in front of it; a
    real model paints the whole portrait.
    """
    from PIL import Image, ImageFilter

    skin, hair, tint, greyscale = PAINTED_LOOKS[index % len(PAINTED_LOOKS)]
    person = Person(skin, hair, (60, 90, 120), (120, 30, 40), 0.19, 0.26)
    picture = Image.fromarray(np.asarray(painting)).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
    soft = np.asarray(picture.filter(ImageFilter.GaussianBlur(SIZE / 32)), dtype=np.float32)
    mean = soft.reshape(-1, 3).mean(axis=0)
    backdrop = (0.5 * soft + 0.5 * mean).astype(np.uint8)
    shot = Shot(tuple(int(v) for v in mean), 0.0, (0.0, 0.0), 1.0, 0.0, tint, greyscale)  # type: ignore[arg-type]
    return texture(draw_portrait(person, shot, background=backdrop), index)


@dataclass(frozen=True)
class SampleOutcome:
    """What intake made of each sample photo."""

    results: Sequence[tuple[SamplePhoto, Accepted | Refused]]

    def accepted(self, role: str) -> int:
        from engine.intake import Accepted

        return sum(1 for photo, result in self.results if photo.role == role and isinstance(result, Accepted))


def add_samples(project: Project, kit: FaceKit, count: int = SAMPLES_PER_ROLE) -> SampleOutcome:
    """Add ``count`` sample selfies and style references to ``project`` through intake."""
    from engine.intake import add_photo

    results = []
    for role in ("source", "reference"):
        for photo in sample_photos(role, count):
            results.append((photo, add_photo(project, photo.data, photo.filename, role, kit)))  # type: ignore[arg-type]
    return SampleOutcome(results)
