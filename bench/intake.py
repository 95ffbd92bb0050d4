"""Benchmark 4: photo intake per image (decode, detect, parse, embed) on the test photos.

For each photo: the whole `engine.intake.add_photo` call (into a fresh project each time, so the
duplicate check never refuses it), compared with the face-model calls it makes (detect, parse,
embed, called directly on the decoded photo); the ratio is what the intake's own work (checks,
crop, PNG and manifest writes) adds. The stage times are given too. The face models are the demo
kit's: Haar detection (the demo SCRFD is a marked stand-in), stand-in BiSeNet and ArcFace in the
real formats with random weights; the entry names them.

Then ``magicapture prepare``'s own per-photo work once the face kit is loaded (`prepare`): the
command's `engine.cli.commands.add_photos` on each photo file (reading it, the checks that need no
model, `add_photo`), beside the kit's load time, against the goal of at most 1 s a photo. A 12 MP
phone-sized JPEG of the astronaut is added to the test photos there.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.settings import Sizes
    from bench.workbench import Workbench
    from engine.faces import FaceKit

PREPARE_GOAL_SECONDS = 1.0
"""``magicapture prepare``: at most this many seconds a photo once the face kit is loaded."""
PHONE_SIZE = (4032, 3024)


def stage_seconds(data: bytes, name: str, kit: FaceKit) -> dict[str, Any]:
    """Seconds of decode, detect, parse and embed on one photo, each called directly."""
    import numpy as np
    from PIL import Image

    from engine.intake import decode_image

    stages: dict[str, Any] = {}
    began = time.perf_counter()
    try:
        pixels, _ = decode_image(data, name)
    except Exception as refusal:  # the intake's refusal of a photo it cannot use
        stages["decode_refused"] = str(refusal)
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    stages["decode"] = time.perf_counter() - began
    began = time.perf_counter()
    faces = kit.detector.detect(pixels)
    stages["detect"] = time.perf_counter() - began
    if not faces:
        stages["faces"] = 0
        return stages
    face = max(faces, key=lambda f: f.area)
    stages["faces"] = len(faces)
    began = time.perf_counter()
    kit.parser.parse(pixels, face)
    stages["parse"] = time.perf_counter() - began
    if kit.scorer is not None:
        began = time.perf_counter()
        kit.scorer.embed(pixels, face)
        stages["embed"] = time.perf_counter() - began
    return stages


def phone_photo(data: bytes) -> bytes:
    """``data`` enlarged into a `PHONE_SIZE` JPEG (a phone camera's 12 MP), centred on a grey canvas."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    width, height = PHONE_SIZE
    canvas = Image.new("RGB", PHONE_SIZE, (128, 128, 128))
    canvas.paste(image.resize((height, height), Image.Resampling.LANCZOS), ((width - height) // 2, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def prepare_seconds(folder: Path, photos: dict[str, bytes], kit: FaceKit, runs: int) -> dict[str, Any]:
    """Per photo file, the median seconds and the printed outcome of ``magicapture prepare``'s
    `add_photos` with ``kit`` already loaded, each run into a fresh project (the first run a warm-up)."""
    from engine.cli.commands import add_photos
    from engine.store import ProjectStore

    store = ProjectStore(folder / "prepare")
    found: dict[str, Any] = {}
    for number, (name, data) in enumerate(photos.items()):
        path = folder / name
        path.write_bytes(data)
        seconds = []
        for index in range(runs + 1):
            project = store.create(f"photo-{number}-run-{index}")
            with contextlib.redirect_stdout(io.StringIO()) as said:
                began = time.perf_counter()
                add_photos(project, [path], "source", lambda: kit)
                elapsed = time.perf_counter() - began
            if index:
                seconds.append(elapsed)
        per_photo = statistics.median(seconds)
        found[name] = {
            "seconds": round(per_photo, 4),
            "outcome": said.getvalue().strip(),
            "size": len(data),
            "meets_goal": per_photo <= PREPARE_GOAL_SECONDS,
        }
    return found


def run(bench: Workbench, sizes: Sizes, command: str) -> dict[str, Any]:
    """Benchmark entry: per photo, median seconds of `add_photo` and of its stages, then `prepare`'s."""
    from bench.machine import load_average
    from bench.workbench import test_photos
    from engine.faces import load_face_kit
    from engine.intake import Accepted, add_photo
    from engine.store import ProjectStore

    began = time.perf_counter()
    kit = load_face_kit()
    kit_seconds = time.perf_counter() - began
    store = ProjectStore(bench.home / "intake")
    photos: dict[str, Any] = {}
    for name, data in test_photos().items():
        totals, stage_runs, outcome = [], [], ""
        for index in range(sizes.intake_runs + 1):
            project = store.create(f"{name}-{index}")
            began = time.perf_counter()
            result = add_photo(project, data, name, "source", kit)
            elapsed = time.perf_counter() - began
            outcome = "accepted" if isinstance(result, Accepted) else f"refused: {result.reason}"
            stage_runs.append(stage_seconds(data, name, kit))
            if index:  # the first run is a warm-up (model sessions, caches)
                totals.append(elapsed)
        stages = {
            key: round(statistics.median(run[key] for run in stage_runs[1:]), 4)
            for key in ("decode", "detect", "parse", "embed")
            if key in stage_runs[-1]
        }
        models = sum(stages.get(key, 0.0) for key in ("detect", "parse", "embed"))
        total = statistics.median(totals)
        entry: dict[str, Any] = {
            "add_photo_seconds": round(total, 4),
            "outcome": outcome,
            "stage_seconds": stages,
            "faces_found": stage_runs[-1]["faces"],
            "model_calls_seconds": round(models, 4),
            "ratio": round(total / models, 3) if outcome == "accepted" and models > 0 else None,
        }
        if "decode_refused" in stage_runs[-1]:
            entry["refusal"] = stage_runs[-1]["decode_refused"]
        photos[name] = entry
    accepted = [entry for entry in photos.values() if entry["ratio"] is not None]
    files = {**test_photos(), "astronaut-12mp.jpg": phone_photo(test_photos()["astronaut.png"])}
    prepared = prepare_seconds(bench.home, files, kit, sizes.intake_runs)
    return {
        "what": "engine.intake.add_photo per image: decode, checks, detect, crop, parse, embed, store",
        "baseline": "the face-model calls alone (detect + parse + embed) on the same decoded photo",
        "ratio": accepted[0]["ratio"] if accepted else None,
        "photos": photos,
        "face_models": {
            "detector": kit.detector.name,
            "parser": kit.parser.name,
            "recogniser": kit.scorer.name if kit.scorer is not None else None,
            "fallbacks": list(kit.fallbacks),
            "note": "demo kit: Haar cascades detect (the demo SCRFD file is a stand-in); BiSeNet and ArcFace are "
            "random-weight stand-ins in the real formats, smaller than the real models",
        },
        "prepare": {
            "what": "magicapture prepare per photo file once the face kit is loaded: read, the checks "
            "that need no model, add_photo (engine.cli.commands.add_photos)",
            "goal": f"<= {PREPARE_GOAL_SECONDS:.0f} s per photo",
            "meets_goal": all(entry["meets_goal"] for entry in prepared.values()),
            "kit_load_seconds": round(kit_seconds, 3),
            "load_average": load_average(),
            "photos": prepared,
        },
        "runs": sizes.intake_runs,
        "command": command,
    }
