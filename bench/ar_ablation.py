"""Toy ablation of Attention Refocusing on the tiny SD 1.x (CPU: the defaults take about 15 minutes on 2 cores).

Trains four arms on the same synthetic project, once per seed, with the real trainer (both phases,
the released preset; the identity loss off in all arms): without the AR loss (weight 0), with it as
METHOD.md specifies (``ar_loss="rescaled"``, each map's min and max detached), with the min and max
kept in the graph (``ar_detach_range=False``) and with the share of the token's attention mass
outside its region as the loss (``ar_loss="outside_share"``). Every AR arm uses the same weight,
``--ar-weight`` (default: the config's ``ar_weight``, a field both forms share).

The base the arms fine-tune is the tiny model made able to denoise: its random VAE is calibrated
(`calibrate_vae`) and its UNet pretrained on the drawn portraits (`pretrain_base`). A random base
cannot denoise at all (its loss stays near 1 whatever the attention does), so it could not show
whether an AR form hurts reconstruction.

Two toys (``--toy``):

- ``plain``: the drawn project as a run sees it. Nothing in it makes the tokens necessary: the
  face is only ever reconstructed under ``<sks>`` prompts and the background under ``<style1>``
  ones, so the model can draw both without reading the tokens.
- ``twins``: every photo has a twin, the same photo with the colours of its token's region swapped
  (RGB -> BGR inside the face for a source, outside it for a reference), trained with the same
  prompt without the token (`TwinData`; each batch is a sample and its twin). The base knows both
  colourings and cannot tell them apart, so the token is the only cue to the region's colours.
  ``token_selects`` measures whether the model learned to use it; at the default sizes it has not
  (about 0 in every arm: the noisy latents show the colours at the trained timesteps, so the token
  adds little to the loss). See the README's Benchmarks for the figures.

Then, on fixed samples of every kind at fixed timesteps and held-out noise, it measures each
placeholder token's AR-layer attention against the token's target region (source ``<sks>`` ->
face, reference ``<style1>`` -> outside the face, composed: both) and the reconstruction:

- ``share``: the share of the token's raw attention mass outside its region (blind to scale;
  lower: attention moved into the region);
- ``mean_attention``: the token's mean attention probability (it falls when AR shrinks the
  attention everywhere instead of moving it: the collapse);
- ``normalised_outside``: the mean min-max rescaled map outside the region (what
  ``ar_loss="rescaled"`` penalises);
- ``outside_attention``: the token's raw attention probability outside its region, per pixel;
- ``reconstruction``: the masked reconstruction loss (MSE of the noise prediction inside each
  sample's mask, the training loss) of the token samples;
- ``token_gain``: the same samples' reconstruction with the token taken out of the prompt, minus
  ``reconstruction`` (above 0: the prediction uses the token);
- ``reconstruction_twin`` (twins): the twins' reconstruction;
- ``token_selects`` (twins): at timesteps 900 and 990, where the noisy latents show the region
  least, how far putting the token in moves the one-step estimate of the region from the twin's
  content to the photo's (1: the token selects the variant; 0: ignored).

Each measure is averaged over the seeds (``seeds`` holds each seed's values). Training is
deterministic on the CPU, so runs of different seeds or toys merge into the result of one run
that had them all (``--merge``).

    python -m bench.ar_ablation [--toy both|plain|twins] [--phase1-steps 20] [--phase2-steps 200]
        [--resolution 128] [--seeds 0 1 2] [--lr-scale 1] [--ar-weight 2.5] [--pretrain-steps 150]
    python -m bench.ar_ablation --toy twins --only-seeds 2 > twins-2.json  # one part of a run
    python -m bench.ar_ablation --merge plain.json twins-0-1.json twins-2.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from engine.data import COMPOSED_SUFFIX, REFERENCE_TEMPLATES, SOURCE_TEMPLATES, TrainingData

TIMESTEPS = (100, 300, 500, 700)
HIGH_TIMESTEPS = (900, 990)
"""Where ``token_selects`` is measured: the noisy latents show the region's colours least."""
ARMS = (
    ("without_ar", False, True, "rescaled"),
    ("with_ar", True, True, "rescaled"),
    ("with_ar_range_kept", True, False, "rescaled"),
    ("with_ar_outside_share", True, True, "outside_share"),
)
"""Label, AR on, ``ar_detach_range`` and ``ar_loss`` of each training."""
TOYS = ("plain", "twins")
MEASURES = {
    "share": "share",
    "mean_attention": "mean",
    "normalised_outside": "normalised",
    "outside_attention": "absolute",
    "reconstruction": "reconstruction",
    "token_gain": "token_gain",
    "reconstruction_twin": "reconstruction_twin",
    "token_selects": "selects",
}
"""Output key of each measure, and its key in a seed's values."""
COMPOSED_TEMPLATES = [template + COMPOSED_SUFFIX.format("") for template in SOURCE_TEMPLATES]
FILLERS = ("", "man", "woman", "young", "old", "smiling", "tall")
"""Words the pretraining's captions put where a token goes (or none), so that the base takes a
word there in its stride and knows nothing of the placeholder tokens."""


def default_arm() -> str:
    """The arm that trains as the config's defaults do."""
    from engine.config import TrainingConfig

    defaults = TrainingConfig()
    for label, on, detach, form in ARMS:
        if on and form == defaults.ar_loss and (form != "rescaled" or detach == defaults.ar_detach_range):
            return label
    raise ValueError(f"No arm trains with ar_loss={defaults.ar_loss!r}.")


def swap_region(pixels: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``pixels [3, R, R]`` with the channel order reversed (RGB -> BGR) where ``region [1, R, R]`` is 1."""
    return torch.where(region.bool(), pixels.flip(0), pixels)


def token_region(image) -> torch.Tensor:
    """The region of the image's token: the face of a source, the rest of a reference."""
    return image.face if image.role == "source" else 1 - image.face


def plain_ids(data: TrainingData, tokenizer, config) -> dict[str, torch.Tensor]:
    """Each kind's prompt ids with the token of the kind's region taken out (source: ``<sks>``; else ``<style1>``)."""
    ids = {}
    for kind, prompts in data.prompts.items():
        token = config.identity_token if kind == "source" else config.style_token
        texts = [" ".join(prompt.replace(token, " ").split()) for prompt in prompts]
        ids[kind] = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
    return ids


class TwinData(TrainingData):
    """The project's photos and their twins: the token's region recoloured, prompted without the token.

    A twin is the photo with its colours swapped (`swap_region`) inside the region its token is
    refocused on. `draw` returns each sample and then its twin (``train_batch_size=2``: every
    batch is a pair), so the pair's prompts differ only in the token and their targets only inside
    the region. A twin sample takes no AR pair (its prompt has no token).
    """

    def __init__(self, images: list, config, tokenizer):
        self.count = len(images)
        twins = [
            dataclasses.replace(image, role="twin", pixels=swap_region(image.pixels, token_region(image)))
            for image in images
        ]
        super().__init__([*images, *twins], config, tokenizer)
        self.plain_ids = plain_ids(self, tokenizer, config)
        self.pending = None

    def twin(self, sample):
        return dataclasses.replace(sample, image=sample.image + self.count)

    def draw(self, rng, phase: int):
        if self.pending is not None:
            sample, self.pending = self.pending, None
            return sample
        sample = super().draw(rng, phase)
        self.pending = self.twin(sample)
        return sample

    def batch(self, samples, scaling_factor, identity_kinds, generator):
        batch = super().batch(samples, scaling_factor, identity_kinds, generator)
        twin = torch.tensor([sample.image >= self.count for sample in samples])
        plain = torch.stack([self.plain_ids[s.kind][s.template] for s in samples])
        batch.input_ids = torch.where(
            twin.view(-1, 1).to(batch.input_ids.device), plain.to(batch.input_ids), batch.input_ids
        )
        keep = ~twin[batch.ar_rows]
        batch.ar_rows, batch.ar_positions = batch.ar_rows[keep], batch.ar_positions[keep]
        batch.ar_targets = batch.ar_targets[keep]
        return batch


def calibrate_vae(tiny, folder: Path, resolution: int) -> float:
    """Make the random tiny VAE's latents carry the image, as a trained VAE's do; returns the scaling factor.

    Its posterior std is random (about 1, against a mean of std 0.25), so a sampled latent is mostly
    the VAE's own noise, drawn afresh each step: nothing could learn it. Its logvar output is set to
    -20 (std 5e-5; a trained VAE's posterior is tight too) and its ``scaling_factor`` so that the
    drawn portraits' latents have unit variance (SD's 0.18215 is calibrated the same way for its
    VAE); otherwise the diffusion noise swamps the latents at every timestep.
    """
    from engine.data import load_images
    from engine.demo.portraits import make_project
    from engine.models import load_base

    vae = load_base(tiny.folder).vae
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0
        vae.quant_conv.bias[channels:] = -20
        images = load_images(make_project(folder / "calibration", seed=0), resolution)
        latents = vae.encode(torch.stack([image.pixels for image in images])).latent_dist.mean
    scale = float(1 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(Path(tiny.folder) / "vae")
    return scale


def pretrain_base(tiny, folder: Path, args: argparse.Namespace) -> list[float]:
    """Train the whole tiny UNet into a base that denoises the drawn portraits.

    Its data: the seeds' portraits and their twins (`swap_region`), captioned with a template of
    their role with a neutral word or none where a token goes (`FILLERS`), so the base knows both
    colourings, cannot tell them apart, and takes a new word in a prompt in its stride. Noise MSE,
    AdamW at ``--pretrain-lr``, batch 8, timesteps U[0, 1000). Writes the UNet back to
    ``tiny.folder``; returns its loss on held-out noise at the evaluation timesteps.
    """
    from engine.data import load_images
    from engine.demo.portraits import make_project
    from engine.models import load_base

    base = load_base(tiny.folder)
    images = [
        image
        for seed in args.seeds
        for image in load_images(make_project(folder / f"pretrain-{seed}", seed=seed), args.resolution)
    ]
    pixels = [image.pixels for image in images]
    pixels += [swap_region(image.pixels, token_region(image)) for image in images]
    roles = [image.role for image in images] * 2
    templates = {"source": SOURCE_TEMPLATES, "reference": [*REFERENCE_TEMPLATES, *COMPOSED_TEMPLATES]}
    tokenizer = base.tokenizer
    with torch.no_grad():
        latents = base.vae.encode(torch.stack(pixels)).latent_dist.mean * base.family.latent_scale(base.vae)
        states = {
            role: base.text_encoder(
                tokenizer(
                    [" ".join(t.format(word).split()) for t in role_templates for word in FILLERS],
                    padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt",
                ).input_ids
            )[0]
            for role, role_templates in templates.items()
        }  # fmt: skip
    unet, scheduler = base.unet.requires_grad_(True).train(), base.noise_scheduler
    optimiser = torch.optim.AdamW(unet.parameters(), lr=args.pretrain_lr)
    generator = torch.Generator().manual_seed(0)

    def captions(rows: list[int]) -> torch.Tensor:
        """A random caption's states per row."""
        banks = [states[roles[row]] for row in rows]
        return torch.stack(
            [bank[int(torch.randint(0, len(bank), (), generator=generator))] for bank in banks]
        )

    for _ in range(args.pretrain_steps):
        rows = torch.randint(0, len(latents), (8,), generator=generator)
        noise = torch.randn((8, *latents.shape[1:]), generator=generator)
        timesteps = torch.randint(0, 1000, (8,), generator=generator)
        noisy = scheduler.add_noise(latents[rows], noise, timesteps)
        loss = (unet(noisy, timesteps, captions(rows.tolist())).sample - noise).pow(2).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    unet.eval()
    losses, generator = [], torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for t in TIMESTEPS:
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.full((len(latents),), t)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = unet(noisy, timesteps, captions(list(range(len(latents))))).sample
            losses.append(float((prediction - noise).pow(2).mean()))
    unet.save_pretrained(Path(tiny.folder) / "unet")
    return losses


def measure(base, data: TrainingData, config, twins: bool) -> dict[str, float]:
    """Attention and reconstruction statistics over fixed evaluation samples (all kinds, fixed timesteps)."""
    import torch.nn.functional as F

    from engine.attention import CaptureProcessor, outside_mass
    from engine.data import Sample
    from engine.losses import masked_reconstruction

    store = next(p.store for p in base.unet.attn_processors.values() if isinstance(p, CaptureProcessor))
    samples = [Sample("source", i, 0, 0) for i in data.by_role["source"]]
    samples += [
        Sample(kind, i, 0, 0) for kind in ("reference", "composed") for i in data.by_role["reference"]
    ]
    count = len(samples)
    if twins:
        samples += [data.twin(sample) for sample in samples]
    without = plain_ids(data, base.tokenizer, config)
    generator = torch.Generator().manual_seed(1234)
    values: dict[str, list[torch.Tensor]] = {key: [] for key in MEASURES.values()}
    for module in (base.unet, base.text_encoder):
        module.eval()
    with torch.no_grad():
        batch = data.batch(samples, base.family.latent_scale(base.vae), (), generator)
        states = base.text_encoder(batch.input_ids)[0]
        ids = torch.stack([without[s.kind][s.template] for s in samples[:count]])
        states_without = base.text_encoder(ids.to(batch.input_ids))[0]
        masks = batch.recon_masks
        for t in (*TIMESTEPS, *(HIGH_TIMESTEPS if twins else ())):
            noise = torch.randn(batch.latents.shape, generator=generator)
            timesteps = torch.full((len(samples),), t)
            noisy = base.noise_scheduler.add_noise(batch.latents, noise, timesteps)
            store.start()
            eps = base.unet(noisy, timesteps, states).sample
            store.stop()
            eps_without = base.unet(noisy[:count], timesteps[:count], states_without).sample
            if t in HIGH_TIMESTEPS:
                alpha = float(base.noise_scheduler.alphas_cumprod[t])
                shift = ((1 - alpha) / alpha) ** 0.5 * (eps_without - eps[:count])  # estimate with - without
                apart = batch.latents[:count] - batch.latents[count:]  # photo - twin
                region = masks[:count]
                values["selects"].append(
                    (region * shift * apart).sum(dim=(1, 2, 3)) / (region * apart.pow(2)).sum(dim=(1, 2, 3))
                )
                continue
            maps = store.token_maps(batch.ar_positions, batch.ar_rows)
            values["share"].append(outside_mass(maps, batch.ar_targets))
            values["mean"].append(maps.mean(dim=(1, 2, 3)))
            up = F.interpolate(maps, size=batch.ar_targets.shape[-2:], mode="bilinear", align_corners=False)
            low, high = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
            scaled = ((up - low) / (high - low).clamp_min(1e-8)).mean(dim=1)
            outside = 1 - batch.ar_targets
            area = outside.sum(dim=(-2, -1))
            values["normalised"].append((scaled * outside).sum(dim=(-2, -1)) / area)
            values["absolute"].append((up.mean(dim=1) * outside).sum(dim=(-2, -1)) / area)
            recon = masked_reconstruction(eps.float(), noise, masks)
            values["reconstruction"].append(recon[:count])
            recon_without = masked_reconstruction(eps_without.float(), noise[:count], masks[:count])
            values["token_gain"].append(recon_without - recon[:count])
            if twins:
                values["reconstruction_twin"].append(recon[count:])
    return {key: float(torch.cat(parts).mean()) for key, parts in values.items() if parts}


def train_arm(project, config, base, toy: str) -> TrainingData:
    """Both phases of the real trainer on ``project`` (``toy``'s data); returns the data it trained on."""
    from engine.training import Trainer, make_accelerator, resolve_options

    options = resolve_options(config)
    accelerator = make_accelerator(options, config.gradient_accumulation_steps)
    trainer = Trainer(project, "ablation", config, options, accelerator, lambda event: None, None)
    trainer.setup(base, None)
    if toy == "twins":
        trainer.data = TwinData(trainer.data.images, config, base.tokenizer)
        trainer.data.build_cache(base.vae, trainer.device, options.weight_dtype)
    trainer.total_steps = config.phase1_steps + config.phase2_steps
    for phase, steps in ((1, config.phase1_steps), (2, config.phase2_steps)):
        if steps:
            trainer.setup_phase(phase, None)
            trainer.run_phase(phase, 0, steps)
    return trainer.data


def summarise(toy: str, per_seed: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Each measure per arm averaged over the seeds, and each seed's values."""
    result: dict[str, Any] = {"toy": toy}
    first = next(iter(per_seed.values()))[ARMS[0][0]]
    for key, name in MEASURES.items():
        if name in first:
            result[key] = {
                label: sum(runs[label][name] for runs in per_seed.values()) / len(per_seed)
                for label, *_ in ARMS
            }
    result["seeds"] = per_seed
    return result


def run_toy(toy: str, args: argparse.Namespace, tiny, folder: Path) -> dict[str, Any]:
    """Every arm of ``toy`` once per seed."""
    from engine.config import preset
    from engine.demo.portraits import make_project
    from engine.models import load_base

    released = preset("released")
    per_seed: dict[str, dict[str, dict[str, float]]] = {}
    for seed in args.only_seeds or args.seeds:
        per_seed[str(seed)] = {}
        for label, on, detach, form in ARMS:
            project = make_project(folder / f"{toy}-{label}-{seed}", seed=seed)
            config = preset(
                "released", base_model=str(tiny.folder), resolution=args.resolution, seed=seed,
                phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps,
                ar_weight=args.ar_weight if on else 0.0, ar_detach_range=detach, ar_loss=form,
                identity_weight=0.0, train_batch_size=2 if toy == "twins" else 1,
                phase1_lr=released.phase1_lr * args.lr_scale,
                phase2_unet_lr=released.phase2_unet_lr * args.lr_scale,
                phase2_text_lr=released.phase2_text_lr * args.lr_scale,
                phase2_embedding_lr=released.phase2_embedding_lr * args.lr_scale,
                preview_every=0, checkpoint_every=100_000, latent_cache_variants=2, device="cpu",
                vram_profile="cpu",
            )  # fmt: skip
            base = load_base(tiny.folder)
            data = train_arm(project, config, base, toy)
            per_seed[str(seed)][label] = measure(base, data, config, toy == "twins")
    return summarise(toy, per_seed)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from engine.demo.sd import build_tiny_sd

    toys = TOYS if args.toy == "both" else (args.toy,)
    with tempfile.TemporaryDirectory() as folder:
        tiny = build_tiny_sd(Path(folder) / "sd")
        scale = calibrate_vae(tiny, Path(folder), args.resolution)
        pretrained = pretrain_base(tiny, Path(folder), args) if args.pretrain_steps else None
        results = {toy: run_toy(toy, args, tiny, Path(folder)) for toy in toys}
    return {
        "metric": "share of <sks>/<style1>'s attention mass (AR layers) outside the target region; lower is better",
        "default_arm": default_arm(),
        "arms": {
            label: {"ar_weight": args.ar_weight if on else 0.0, "ar_detach_range": detach, "ar_loss": form}
            for label, on, detach, form in ARMS
        },
        "toys": results,
        "phase1_steps": args.phase1_steps,
        "phase2_steps": args.phase2_steps,
        "resolution": args.resolution,
        "pretrain_seeds": list(args.seeds),
        "lr_scale": args.lr_scale,
        "ar_weight": args.ar_weight,
        "latent_scale": scale,
        "pretrain_steps": args.pretrain_steps,
        "pretrain_lr": args.pretrain_lr,
        "pretrained_loss": pretrained,
    }


SETTINGS = (
    "phase1_steps",
    "phase2_steps",
    "resolution",
    "lr_scale",
    "ar_weight",
    "pretrain_steps",
    "pretrain_lr",
)
"""What runs must share to merge."""


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same settings over different seeds or toys (the pretraining sees every
    seed's photos, so each run must list all the merged seeds: ``--seeds`` of a run names what it
    pretrains on and ``--only-seeds`` what it trains)."""
    first = results[0]
    for other in results[1:]:
        different = [key for key in (*SETTINGS, "pretrain_seeds") if other[key] != first[key]]
        if different:
            raise ValueError(f"Runs with different settings do not merge: {different}.")
    seeds: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for result in results:
        for toy, values in result["toys"].items():
            seeds.setdefault(toy, {}).update(values["seeds"])
    merged = dict(first)
    merged["default_arm"] = default_arm()  # the arms set their AR form themselves: defaults do not train them
    merged["toys"] = {
        toy: summarise(toy, dict(sorted(per_seed.items(), key=lambda item: int(item[0]))))
        for toy, per_seed in seeds.items()
    }
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toy", choices=("both", *TOYS), default="both")
    parser.add_argument("--phase1-steps", type=int, default=20)
    parser.add_argument("--phase2-steps", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2],
        help="Seeds whose photos the base is pretrained on and (unless --only-seeds) each arm is trained with.",
    )  # fmt: skip
    parser.add_argument(
        "--only-seeds",
        type=int,
        nargs="+",
        help="Train the arms with these of --seeds only (to split a run).",
    )
    parser.add_argument(
        "--lr-scale", type=float, default=1.0, help="Multiplier of the released learning rates."
    )
    parser.add_argument(
        "--ar-weight", type=float, default=None, help="ar_weight of every AR arm (default: the config's)."
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=150, help="Steps of the base UNet's pretraining (0: random)."
    )
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (the tiny model gains little from more; on a busy CPU more are much slower).",
    )  # fmt: skip
    parser.add_argument("--merge", type=Path, nargs="+", help="Print the merge of these results and exit.")
    args = parser.parse_args(argv)
    if args.only_seeds and not set(args.only_seeds) <= set(args.seeds):
        parser.error("--only-seeds must be some of --seeds.")
    if args.ar_weight is None:
        from engine.config import TrainingConfig

        args.ar_weight = TrainingConfig().ar_weight
    return args


def main() -> None:
    args = parse_args()
    if args.merge:
        print(json.dumps(merge([json.loads(path.read_text("utf-8")) for path in args.merge]), indent=2))
        return
    torch.set_num_threads(args.threads)
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
