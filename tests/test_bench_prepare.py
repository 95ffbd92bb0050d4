"""The bench's ``magicapture prepare`` figures: per photo once the face kit is loaded, and their table rows.

No timing is asserted: the benchmark measures, it does not pass or fail on speed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fixtures_faces import astronaut, encode
from PIL import Image

from bench.intake import PHONE_SIZE, phone_photo, prepare_seconds
from bench.table import intake_rows
from engine.faces import FaceKit


def test_prepare_is_timed_per_photo_with_a_loaded_kit(tmp_path: Path, demo_kit: FaceKit) -> None:
    photos = {
        "tiny.png": encode(np.zeros((1, 1, 3), np.uint8), "PNG"),
        "astronaut.png": encode(astronaut(), "PNG"),
    }
    found = prepare_seconds(tmp_path, photos, demo_kit, runs=1)
    assert set(found) == set(photos)
    assert found["tiny.png"]["outcome"].startswith("refused tiny.png: too_small - ")
    assert found["astronaut.png"]["outcome"] == "accepted astronaut.png"
    assert all(entry["seconds"] > 0 and isinstance(entry["meets_goal"], bool) for entry in found.values())

    entry = {
        "photos": {},
        "prepare": {"goal": "<= 1 s per photo", "kit_load_seconds": 0.5, "photos": found},
    }
    rows = intake_rows(entry)
    assert [row[0] for row in rows] == [
        "`magicapture prepare` per photo: tiny.png",
        "`magicapture prepare` per photo: astronaut.png",
    ]
    goal = "met" if found["astronaut.png"]["meets_goal"] else "not met"
    assert rows[1][3] == f"<= 1 s per photo ({goal})"
    assert "accepted astronaut.png" in rows[1][4] and "face kit loaded once before: 500 ms" in rows[1][4]
    assert "refused tiny.png: too_small;" in rows[0][4]


def test_the_phone_photo_is_a_12_megapixel_jpeg() -> None:
    with Image.open(io.BytesIO(phone_photo(encode(astronaut(), "PNG")))) as image:
        assert image.format == "JPEG" and image.size == PHONE_SIZE
