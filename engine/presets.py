"""Output presets: passport photos (EU/ICAO, US) and square headshots, framed by the face landmarks.

A preset fixes the pixel size and print resolution, the head height (chin to crown) and the eye
line. The five landmarks give the eye line and the eye-to-mouth distance ``d``; the chin and the
crown are estimated from ``d`` with adult head proportions (`CHIN_BELOW_EYES`, `CROWN_ABOVE_EYES`),
so check a passport photo against the official rules before printing. The image is scaled and
shifted (and, for passports, rotated so that the eyes are level) in one affine warp; where the
frame reaches past the picture it is filled with the preset's plain background colour.

Passports and square headshots suit every model family. A family's own frames are the sizes its
models were trained at (``native``: SDXL's 1024 px buckets, e.g. 832 x 1216 portrait); `presets_for`
gives the presets offered for the outputs of a family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import UserError

if TYPE_CHECKING:
    from engine.faces import Face

MM_PER_INCH = 25.4
CHIN_BELOW_EYES = 1.7
CROWN_ABOVE_EYES = 1.8
"""Chin below and top of the head above the eye line, in eye-to-mouth distances (eye centres to the
mouth-corner line). Adult averages: eye-to-mouth ~6.6 cm, mouth to chin ~4.7 cm, chin to crown
~23 cm, so the eyes sit near the middle of the head."""
MAX_ENLARGEMENT = 2.0
"""Beyond this enlargement of the source pixels a print looks soft: the result carries a warning."""


def mm_to_px(mm: float, dpi: int) -> int:
    """Pixels of a printed length: ``round(mm / 25.4 * dpi)``."""
    return round(mm / MM_PER_INCH * dpi)


@dataclass(frozen=True)
class OutputPreset:
    """A target frame; heights and eye lines are fractions of the image height."""

    name: str
    description: str
    width: int
    height: int
    dpi: int
    head_height: float
    """Chin-to-crown height aimed at."""
    eye_line: float
    """Eye line aimed at, measured from the bottom edge."""
    head_range: tuple[float, float] | None = None
    """Allowed head heights under the document rules (None: no rule)."""
    eye_band: tuple[float, float] | None = None
    """Allowed eye lines from the bottom under the document rules (None: no rule)."""
    level_eyes: bool = False
    """Rotate so that the eyes are level (passports ask for a straight head)."""
    background: tuple[int, int, int] = (128, 128, 128)
    """RGB fill where the frame reaches past the picture."""
    native: int | None = None
    """The family's native size (`ModelFamily.native_resolution`) this frame is made for; None: any family."""


# EU (ICAO 9303 / ISO/IEC 19794-5 as used for Schengen passports): 35 x 45 mm, chin to crown 32-36 mm
# (71-80 % of the height), eye line 50-70 % of the height above the bottom edge.
PASSPORT_EU = OutputPreset(
    name="passport-eu",
    description="EU/ICAO passport photo, 35 x 45 mm at 600 dpi",
    width=mm_to_px(35, 600),
    height=mm_to_px(45, 600),
    dpi=600,
    head_height=34 / 45,
    eye_line=0.55,
    head_range=(32 / 45, 36 / 45),
    eye_band=(0.50, 0.70),
    level_eyes=True,
    background=(235, 235, 235),
)
# US (Department of State): 2 x 2 in, chin to top of head 1 to 1 3/8 in (50-69 %), eyes 1 1/8 to
# 1 3/8 in above the bottom edge (56-69 %), white or off-white background.
PASSPORT_US = OutputPreset(
    name="passport-us",
    description="US passport photo, 2 x 2 in at 600 dpi",
    width=mm_to_px(2 * MM_PER_INCH, 600),
    height=mm_to_px(2 * MM_PER_INCH, 600),
    dpi=600,
    head_height=1.1875 / 2,
    eye_line=0.625,
    head_range=(1 / 2, 1.375 / 2),
    eye_band=(1.125 / 2, 1.375 / 2),
    level_eyes=True,
    background=(255, 255, 255),
)
PRESETS: dict[str, OutputPreset] = {
    preset.name: preset
    for preset in (
        PASSPORT_EU,
        PASSPORT_US,
        OutputPreset(
            "headshot-1024", "Square headshot, 1024 px", 1024, 1024, 300, head_height=0.45, eye_line=0.62
        ),
        OutputPreset(
            "headshot-2048", "Square headshot, 2048 px", 2048, 2048, 300, head_height=0.45, eye_line=0.62
        ),
        # SDXL's portrait buckets (sizes of its 1024 px training): head and shoulders
        OutputPreset(
            "portrait-832x1216",
            "Portrait, 832 x 1216 px (SDXL size)",
            832,
            1216,
            300,
            head_height=0.30,
            eye_line=0.64,
            native=1024,
        ),
        OutputPreset(
            "portrait-896x1152",
            "Portrait, 896 x 1152 px (SDXL size)",
            896,
            1152,
            300,
            head_height=0.34,
            eye_line=0.63,
            native=1024,
        ),
    )
}


class PresetError(UserError):
    """A preset cannot be applied; the message says why."""


@dataclass
class Framed:
    """An image framed by a preset."""

    image: np.ndarray
    preset: OutputPreset
    matrix: np.ndarray
    """``2x3`` affine from source pixels to output pixels."""
    eye_line: float
    """Eye line of the output, from the bottom, as a fraction of the height."""
    head_height: float
    """Estimated chin-to-crown height of the output, as a fraction of the height."""
    enlargement: float
    """Output pixels per source pixel."""
    warnings: list[str] = field(default_factory=list)


def get_preset(name: str) -> OutputPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(
            f"There is no output preset {name!r}; choose one of {', '.join(PRESETS)}."
        ) from None


def presets_for(native_resolution: int) -> dict[str, OutputPreset]:
    """The presets offered for outputs of a family of this native size: its own frames first, then
    those that suit any family."""
    own = {name: p for name, p in PRESETS.items() if p.native == native_resolution}
    return own | {name: p for name, p in PRESETS.items() if p.native is None}


def placement(face: Face, preset: OutputPreset) -> np.ndarray:
    """The ``2x3`` affine that puts ``face`` where ``preset`` wants it (eyes centred horizontally)."""
    points = np.asarray(face.landmarks, dtype=np.float64)
    eyes = (points[0] + points[1]) / 2
    mouth = (points[3] + points[4]) / 2
    distance = float(np.linalg.norm(mouth - eyes))
    if distance < 1.0:
        raise PresetError("The face is too small or its landmarks are degenerate; it cannot be framed.")
    angle = math.atan2(points[1][1] - points[0][1], points[1][0] - points[0][0]) if preset.level_eyes else 0.0
    scale = preset.head_height * preset.height / ((CHIN_BELOW_EYES + CROWN_ABOVE_EYES) * distance)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    rotation = np.array([[cos, sin], [-sin, cos]])
    target = np.array([preset.width / 2, preset.height * (1 - preset.eye_line)])
    return np.hstack([rotation, (target - rotation @ eyes)[:, None]])


def apply_preset(
    image: np.ndarray,
    face: Face,
    preset: str | OutputPreset,
    *,
    background: tuple[int, int, int] | None = None,
) -> Framed:
    """Frame an RGB ``uint8`` image around ``face`` (its largest face, in its pixel coordinates)."""
    import cv2

    preset = get_preset(preset) if isinstance(preset, str) else preset
    matrix = placement(face, preset)
    enlargement = float(math.hypot(matrix[0, 0], matrix[0, 1]))
    source, warp = image, matrix
    if enlargement < 0.75:  # shrink with area averaging first; warpAffine would alias
        factor = enlargement / 0.75
        source = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
        factors = np.array([source.shape[1] / image.shape[1], source.shape[0] / image.shape[0]])
        warp = matrix.copy()
        warp[:, :2] = matrix[:, :2] / factors[None, :]
    fill = tuple(int(v) for v in (background or preset.background))
    framed = cv2.warpAffine(
        source,
        warp,
        (preset.width, preset.height),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )
    points = np.asarray(face.landmarks, dtype=np.float64)
    eyes = matrix @ np.append((points[0] + points[1]) / 2, 1.0)
    mouth = matrix @ np.append((points[3] + points[4]) / 2, 1.0)
    head = (CHIN_BELOW_EYES + CROWN_ABOVE_EYES) * float(np.linalg.norm(mouth - eyes))
    warnings = []
    if enlargement > MAX_ENLARGEMENT:
        warnings.append(
            f"The face is enlarged {enlargement:.1f}x to fill the {preset.description}; upscale the image "
            "first (x2 or x4) for a sharper print."
        )
    corners = np.array(
        [[0, 0], [preset.width, 0], [0, preset.height], [preset.width, preset.height]], dtype=np.float64
    )
    inverse = cv2.invertAffineTransform(matrix)
    reached = corners @ inverse[:, :2].T + inverse[:, 2]
    height, width = image.shape[:2]
    if reached.min() < -0.5 or (reached[:, 0] > width - 0.5).any() or (reached[:, 1] > height - 0.5).any():
        warnings.append(
            "The picture does not fill the whole frame; the gap is filled with a plain background."
        )
    return Framed(
        image=framed,
        preset=preset,
        matrix=matrix,
        eye_line=1 - float(eyes[1]) / preset.height,
        head_height=head / preset.height,
        enlargement=enlargement,
        warnings=warnings,
    )
