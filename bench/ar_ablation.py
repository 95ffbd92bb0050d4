"""Toy ablation of Attention Refocusing on the tiny SD 1.x (CPU, about a minute).

Trains twice on the same synthetic project and seed, once with the AR loss (weight 2.5) and once
without (weight 0); everything else, the identity loss off in both, is equal. Then, on fixed
samples of every kind at fixed timesteps and noise, it measures the share of each placeholder
token's AR-layer attention that falls outside the token's target region (source ``<sks>`` ->
face, reference ``<style1>`` -> outside the face, composed: both), and prints both as JSON.

    python bench/ar_ablation.py [--phase1-steps 20] [--phase2-steps 80] [--resolution 128] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
TIMESTEPS = (100, 300, 500, 700)


def outside_share(base, project, config) -> float:
    """Mean share of attention outside the target region over fixed evaluation samples."""
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
    shares = []
    with torch.no_grad():
        batch = data.batch(samples, base.vae.config.scaling_factor, (), generator)
        states = base.text_encoder(batch.input_ids)[0]
        for t in TIMESTEPS:
            noise = torch.randn(batch.latents.shape, generator=generator)
            timesteps = torch.full((len(samples),), t)
            noisy = base.noise_scheduler.add_noise(batch.latents, noise, timesteps)
            store.start()
            base.unet(noisy, timesteps, states)
            store.stop()
            maps = store.token_maps(batch.ar_positions, batch.ar_rows)
            shares.append(outside_mass(maps, batch.ar_targets))
    return float(torch.cat(shares).mean())


def run(args: argparse.Namespace) -> dict:
    from fixtures_training import make_project

    from engine.config import preset
    from engine.demo.sd import build_tiny_sd
    from engine.models import load_base
    from engine.train import train

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        tiny = build_tiny_sd(Path(folder) / "sd")
        for label, weight in (("with_ar", 2.5), ("without_ar", 0.0)):
            project = make_project(Path(folder) / label, seed=args.seed)
            config = preset(
                "released",
                base_model=str(tiny.folder),
                resolution=args.resolution,
                seed=args.seed,
                phase1_steps=args.phase1_steps,
                phase2_steps=args.phase2_steps,
                ar_weight=weight,
                identity_weight=0.0,
                preview_every=0,
                checkpoint_every=100_000,
                latent_cache_variants=2,
                device="cpu",
                vram_profile="cpu",
            )
            base = load_base(tiny.folder)
            losses = []
            train(
                project,
                config,
                base=base,
                on_event=lambda e, s=losses: s.append(e.losses) if hasattr(e, "losses") else None,
            )
            print(
                label,
                [round(l.get("attention", 0), 4) for l in losses[args.phase1_steps :]][::10],
                file=sys.stderr,
            )
            results[label] = outside_share(base, project, config)
    return {
        "metric": "share of <sks>/<style1> attention (AR layers) outside the target region; lower is better",
        **results,
        "lowered_by_ar": results["with_ar"] < results["without_ar"],
        "phase1_steps": args.phase1_steps,
        "phase2_steps": args.phase2_steps,
        "resolution": args.resolution,
        "seed": args.seed,
        "unet_lr": args.unet_lr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase1-steps", type=int, default=20)
    parser.add_argument("--phase2-steps", type=int, default=80)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet-lr", type=float, default=4e-4, help="Phase-2 UNet LoRA learning rate.")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
