"""Phase-2 step time of the two identity-branch speed options, on the tiny SD 1.x (CPU).

Runs the same phase-2 training four times: reusing the reconstruction pass for the identity
estimate or not (``identity_reuse_pass``: without it every identity sample gets a second UNet
row at its own timestep, as in the released script), and decoding only the latent window around
the face or the whole latent (``identity_face_window``). Prints the median seconds per step and
the decoded share of the latent as JSON. The tiny model's costs are not SD 1.5's at 512 px;
rerun with ``--base`` on a real checkpoint and a GPU for numbers that transfer.

    python bench/train_speed.py [--steps 12] [--resolution 256] [--base PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def run(args: argparse.Namespace) -> dict:
    import torch
    from fixtures_training import make_project, tiny_face_kit

    from engine.config import preset
    from engine.data import load_images
    from engine.demo.sd import build_tiny_sd
    from engine.events import StepDone
    from engine.losses import face_windows
    from engine.models import load_base
    from engine.train import train

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        base_model = args.base or str(build_tiny_sd(Path(folder) / "sd").folder)
        for reuse in (True, False):
            for window in (True, False):
                label = f"reuse_pass={reuse},face_window={window}"
                project = make_project(Path(folder) / label.replace(",", "-").replace("=", "_"), face_scale=0.5)
                config = preset(
                    "released", base_model=base_model, resolution=args.resolution, phase1_steps=0,
                    phase2_steps=args.steps, identity_reuse_pass=reuse, identity_face_window=window,
                    preview_every=0, checkpoint_every=100_000, latent_cache_variants=2, vram_profile="auto",
                )
                stamps = []
                train(project, config, base=load_base(base_model), face_kit=tiny_face_kit(),
                      on_event=lambda e, s=stamps: s.append(time.perf_counter()) if isinstance(e, StepDone) else None)
                results[label] = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:], strict=False))
        boxes = torch.stack([image.bbox for image in load_images(project, args.resolution)])
        side, _ = face_windows(boxes, (args.resolution // 8,) * 2, 8, config.identity_window_margin)
    return {
        "seconds_per_phase2_step": results,
        "decoded_share_of_latent_with_window": (side / (args.resolution // 8)) ** 2,
        "steps": args.steps,
        "resolution": args.resolution,
        "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--base", default=None, help="An SD 1.x base instead of the tiny model.")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
