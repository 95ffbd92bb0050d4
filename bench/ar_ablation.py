"""Toy ablation of Attention Refocusing on the tiny SD 1.x (CPU, a few minutes).

Trains three arms on the same synthetic project, once per seed: without the AR loss (weight 0),
with it as METHOD.md specifies (weight 2.5, each map's min and max detached) and with it with the
min and max kept in the graph (``ar_detach_range=False``); everything else is equal (the identity
loss is off in all three). Then, on fixed samples of every kind at fixed timesteps and noise, it
measures each placeholder token's AR-layer attention against the token's target region (source
``<sks>`` -> face, reference ``<style1>`` -> outside the face, composed: both) and prints JSON:

- ``with_ar`` / ``without_ar``: the token's attention outside its region as AR reads it, the
  mean min-max rescaled map outside the region (lower: attention refocused into the region);
- ``outside_attention``: the token's raw attention probability outside its region, per pixel;
- ``share``: the share of the token's raw attention mass outside its region (blind to scale);
- ``mean_attention``: the token's mean attention probability, which shows whether AR moved
  attention or shrank it everywhere (the detached min-max makes the loss blind to scale, so its
  gradient lowers every value; only reconstruction resists).

Each measure is averaged over the seeds (``seeds`` holds each seed's values).

    python -m bench.ar_ablation [--phase1-steps 20] [--phase2-steps 200] [--resolution 256] [--seeds 0 1 2] [--lr-scale 1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

TIMESTEPS = (100, 300, 500, 700)
ARMS = (("without_ar", 0.0, True), ("with_ar", 2.5, True), ("with_ar_range_kept", 2.5, False))
"""Label, AR weight and ``ar_detach_range`` of each training."""


def measure(base, project, config) -> dict[str, float]:
    """Attention statistics of both tokens over fixed evaluation samples (all kinds, four timesteps)."""
    import torch.nn.functional as F

    from engine.attention import CaptureProcessor, outside_mass
    from engine.data import Sample, TrainingData, load_images

    store = next(p.store for p in base.unet.attn_processors.values() if isinstance(p, CaptureProcessor))
    data = TrainingData(load_images(project, config.resolution), config, base.tokenizer)
    data.build_cache(base.vae, base.unet.device, base.unet.dtype)
    samples = [Sample("source", i, 0, 0) for i in data.by_role["source"]]
    samples += [
        Sample(kind, i, 0, 0) for kind in ("reference", "composed") for i in data.by_role["reference"]
    ]
    generator = torch.Generator().manual_seed(1234)
    shares, means, normalised, absolute = [], [], [], []
    with torch.no_grad():
        batch = data.batch(samples, base.vae.config.scaling_factor, (), generator)
        states = base.text_encoder(batch.input_ids)[0]
        for t in TIMESTEPS:
            noise = torch.randn(batch.latents.shape, generator=generator)
            timesteps = torch.full((len(samples),), t)
            store.start()
            base.unet(base.noise_scheduler.add_noise(batch.latents, noise, timesteps), timesteps, states)
            store.stop()
            maps = store.token_maps(batch.ar_positions, batch.ar_rows)
            shares.append(outside_mass(maps, batch.ar_targets))
            means.append(maps.mean(dim=(1, 2, 3)))
            up = F.interpolate(maps, size=batch.ar_targets.shape[-2:], mode="bilinear", align_corners=False)
            low, high = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
            scaled = ((up - low) / (high - low).clamp_min(1e-8)).mean(dim=1)
            outside = 1 - batch.ar_targets
            normalised.append((scaled * outside).sum(dim=(-2, -1)) / outside.sum(dim=(-2, -1)))
            absolute.append((up.mean(dim=1) * outside).sum(dim=(-2, -1)) / outside.sum(dim=(-2, -1)))
    measures = (("share", shares), ("mean", means), ("normalised", normalised), ("absolute", absolute))
    return {name: float(torch.cat(values).mean()) for name, values in measures}


def run(args: argparse.Namespace) -> dict:
    from engine.config import preset
    from engine.demo.portraits import make_project
    from engine.demo.sd import build_tiny_sd
    from engine.models import load_base
    from engine.training import train

    released = preset("released")
    per_seed: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tiny = build_tiny_sd(Path(folder) / "sd")
        for seed in args.seeds:
            per_seed[seed] = {}
            for label, weight, detach in ARMS:
                project = make_project(Path(folder) / f"{label}-{seed}", seed=seed)
                config = preset(
                    "released", base_model=str(tiny.folder), resolution=args.resolution, seed=seed,
                    phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps, ar_weight=weight,
                    identity_weight=0.0, ar_detach_range=detach,
                    phase2_unet_lr=released.phase2_unet_lr * args.lr_scale,
                    phase2_text_lr=released.phase2_text_lr * args.lr_scale,
                    phase2_embedding_lr=released.phase2_embedding_lr * args.lr_scale,
                    preview_every=0, checkpoint_every=100_000, latent_cache_variants=2, device="cpu",
                    vram_profile="cpu",
                )  # fmt: skip
                base = load_base(tiny.folder)
                train(project, config, base=base)
                per_seed[seed][label] = measure(base, project, config)

    def mean(name: str) -> dict[str, float]:
        """A measure per arm, averaged over the seeds."""
        return {
            label: sum(runs[label][name] for runs in per_seed.values()) / len(per_seed)
            for label, _, _ in ARMS
        }

    normalised = mean("normalised")
    return {
        "metric": "mean min-max rescaled attention of <sks>/<style1> (AR layers) outside the target region; lower is better",
        "with_ar": normalised["with_ar"],
        "without_ar": normalised["without_ar"],
        "lowered_by_ar": normalised["with_ar"] < normalised["without_ar"],
        "lowered_in_every_seed": all(
            r["with_ar"]["normalised"] < r["without_ar"]["normalised"] for r in per_seed.values()
        ),
        "normalised_outside": normalised,
        "outside_attention": mean("absolute"),
        "share": mean("share"),
        "mean_attention": mean("mean"),
        "seeds": {str(seed): runs for seed, runs in per_seed.items()},
        "phase1_steps": args.phase1_steps,
        "phase2_steps": args.phase2_steps,
        "resolution": args.resolution,
        "lr_scale": args.lr_scale,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase1-steps", type=int, default=20)
    parser.add_argument("--phase2-steps", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="Seeds to train each arm with."
    )
    parser.add_argument(
        "--lr-scale", type=float, default=1.0, help="Multiplier of the released phase-2 learning rates."
    )
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
