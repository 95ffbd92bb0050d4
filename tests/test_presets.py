from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.faces import Face
from engine.outputs import save_image
from engine.presets import PRESETS, PresetError, apply_preset, get_preset, mm_to_px, presets_for

RED = (255, 0, 0)


def portrait(eyes: list[tuple[float, float]], size: tuple[int, int] = (600, 800)) -> tuple[np.ndarray, Face]:
    """A grey picture with red dots on the two eyes, and the face whose landmarks sit on them."""
    width, height = size
    image = np.full((height, width, 3), 90, np.uint8)
    left, right = np.array(eyes[0], float), np.array(eyes[1], float)
    across = right - left
    down = np.array([-across[1], across[0]])
    points = [
        left,
        right,
        (left + right) / 2 + 0.6 * down,
        left + 1.1 * down + 0.1 * across,
        right + 1.1 * down - 0.1 * across,
    ]
    for x, y in eyes:
        cv2.circle(image, (round(x), round(y)), 6, RED, -1)
    face = Face(
        (left[0] - 60, left[1] - 80, right[0] + 60, right[1] + 160), np.array(points, np.float32), 0.99
    )
    return image, face


def red_dots(image: np.ndarray) -> list[np.ndarray]:
    """Centres of the red dots, left to right."""
    red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
    count, _, _, centres = cv2.connectedComponentsWithStats(red.astype(np.uint8))
    return sorted((centres[i] for i in range(1, count)), key=lambda c: c[0])


def test_passport_sizes_are_exact_at_600_dpi():
    assert mm_to_px(35, 600) == 827 and mm_to_px(45, 600) == 1063
    eu, us = get_preset("passport-eu"), get_preset("passport-us")
    assert (eu.width, eu.height, eu.dpi) == (827, 1063, 600)
    assert (us.width, us.height, us.dpi) == (1200, 1200, 600)
    assert {name: (p.width, p.height) for name, p in PRESETS.items() if name.startswith("headshot")} == {
        "headshot-1024": (1024, 1024),
        "headshot-2048": (2048, 2048),
    }
    with pytest.raises(PresetError, match="passport-eu"):
        get_preset("visa")


@pytest.mark.parametrize("name", ["passport-eu", "passport-us"])
def test_passport_puts_level_eyes_inside_the_band(name):
    preset = get_preset(name)
    image, face = portrait([(250, 300), (340, 318)])  # a tilted head
    framed = apply_preset(image, face, name)
    assert framed.image.shape == (preset.height, preset.width, 3)
    dots = red_dots(framed.image)
    assert len(dots) == 2
    (x1, y1), (x2, y2) = dots
    assert abs(y1 - y2) < 2.0  # levelled
    assert abs((x1 + x2) / 2 - preset.width / 2) < 2.0  # centred
    eye_line = 1 - (y1 + y2) / 2 / preset.height
    low, high = preset.eye_band
    assert low <= eye_line <= high
    assert eye_line == pytest.approx(framed.eye_line, abs=0.005)
    assert preset.head_range[0] <= framed.head_height <= preset.head_range[1]


def test_headshots_keep_the_tilt_and_put_the_eyes_on_their_line():
    image, face = portrait([(250, 300), (340, 318)])
    framed = apply_preset(image, face, "headshot-1024")
    (x1, y1), (x2, y2) = red_dots(framed.image)
    assert y2 - y1 > 5  # not rotated
    assert 1 - (y1 + y2) / 2 / 1024 == pytest.approx(0.62, abs=0.005)


def test_frame_past_the_picture_is_padded_with_the_plain_background():
    image, face = portrait([(40, 60), (110, 60)], size=(200, 400))  # face at the top-left corner
    framed = apply_preset(image, face, "passport-us")
    assert np.all(framed.image[0, 0] == 255) and np.all(framed.image[5, :40] == 255)
    assert any("plain background" in w for w in framed.warnings)
    assert any("upscale" in w for w in framed.warnings)  # a 200 px picture enlarged for print


def test_a_large_picture_is_reduced_without_moving_the_eyes():
    image, face = portrait([(1000, 1200), (1400, 1200)], size=(2400, 3200))
    framed = apply_preset(image, face, "passport-eu")
    assert framed.enlargement < 0.75 and not framed.warnings
    (x1, y1), (x2, y2) = red_dots(framed.image)
    assert 1 - (y1 + y2) / 2 / framed.preset.height == pytest.approx(framed.eye_line, abs=0.005)


def test_print_resolution_is_written_into_png_and_jpeg(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    png = save_image(tmp_path / "a.png", image, parameters="hello", dpi=600)
    jpeg = save_image(tmp_path / "a.jpg", image, dpi=600)
    with Image.open(png) as picture:
        assert picture.info["dpi"] == pytest.approx((600, 600), abs=0.01)
        assert picture.info["parameters"] == "hello"
    with Image.open(jpeg) as picture:
        assert picture.info["dpi"] == (600, 600)


def test_sdxl_outputs_are_offered_its_portrait_buckets_first():
    """SDXL trained on buckets of about 1024 x 1024 pixels, sides in multiples of 64."""
    sdxl, sd1 = presets_for(1024), presets_for(512)
    own = [name for name, preset in sdxl.items() if preset.native == 1024]
    assert own == ["portrait-832x1216", "portrait-896x1152"] == list(sdxl)[:2]
    for name in own:
        preset = sdxl[name]
        assert preset.width % 64 == 0 and preset.height % 64 == 0 and preset.height > preset.width
        assert abs(preset.width * preset.height / 1024**2 - 1) < 0.05
    assert list(sd1) == ["passport-eu", "passport-us", "headshot-1024", "headshot-2048"] == list(sdxl)[2:]


@pytest.mark.parametrize("name", ["portrait-832x1216", "portrait-896x1152"])
def test_an_sdxl_portrait_frames_a_1024_output_without_enlarging_it(name):
    preset = get_preset(name)
    image, face = portrait([(450, 430), (574, 430)], size=(1024, 1024))
    framed = apply_preset(image, face, name)
    assert framed.image.shape == (preset.height, preset.width, 3)
    (x1, y1), (x2, y2) = red_dots(framed.image)
    assert 1 - (y1 + y2) / 2 / preset.height == pytest.approx(preset.eye_line, abs=0.005)
    assert abs((x1 + x2) / 2 - preset.width / 2) < 2.0
    assert framed.head_height == pytest.approx(preset.head_height, abs=0.005)
    assert framed.enlargement <= 1.0 and not any("upscale" in w for w in framed.warnings)
