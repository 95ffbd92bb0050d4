"""Training data: the project's accepted photos, prompt templates, augmentation and the latent cache.

Three kinds of sample (METHOD.md section 4):

- ``source``: a source photo under a source template, reconstructed inside the face mask M_s;
  AR target of the identity token: M_s.
- ``reference``: a reference photo under a reference template, reconstructed with M_r = 1 - face;
  AR target of the style token: M_r.
- ``composed`` (phase 2): a reference photo under a composed template, reconstructed with M_r;
  AR targets: identity token -> 1 - M_r (the reference's face), style token -> M_r. Its face is
  left to the identity loss, against the source identity.

Templates, images and augmented views are drawn per step. Each image is VAE-encoded once per
view (``latent_cache_variants`` views: horizontal flip for a ``flip_probability`` share of them,
colour jitter on all), and the latent is re-sampled from the cached distribution every step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.photos import photo_records

if TYPE_CHECKING:
    from engine.config import TrainingConfig
    from engine.faces import Face
    from engine.store import Project

SOURCE_TEMPLATES = (
    "a photo of a {} person",
    "the photo of a {} person",
    "a good photo of the {} person",
    "a close-up photo of the {} person",
    "a cropped photo of a {} person",
    "a bright photo of the {} person",
    "a clean photo of a {} person",
    "a nice photo of the {} person",
    "a portrait photo of a {} person",
    "a photo of one {} person",
)
"""Source prompts; ``{}`` is the identity token."""
REFERENCE_TEMPLATES = (
    "a painting of a person in the style of {}",
    "a picture of a person in the style of {}",
    "a rendering of a person in the style of {}",
    "an artwork of a person in the style of {}",
    "a portrait of a person in the style of {}",
    "an image of a person in the style of {}",
    "a photo of a person in the style of {}",
)
"""Reference prompts; ``{}`` is the style token."""
COMPOSED_SUFFIX = " in the style of {}"
KINDS = ("source", "reference", "composed")
LATENT_SCALE = 8
"""Pixels per latent in SD 1.x."""
FLIP_ORDER = [1, 0, 2, 4, 3]
"""Landmark order after a horizontal flip (the two eyes and the two mouth corners swap)."""


class DataError(UserError):
    """The project's photos cannot make a training set; the message says what to add or fix."""


def composed_prompt(identity_token: str, style_token: str, template: str = SOURCE_TEMPLATES[0]) -> str:
    """A source template with " in the style of <style>" (what previews and generation use)."""
    return template.format(identity_token) + COMPOSED_SUFFIX.format(style_token)


@dataclass
class TrainImage:
    """One accepted photo at training resolution."""

    id: str
    role: str
    pixels: torch.Tensor
    """``[3, R, R]`` in [-1, 1]."""
    face: torch.Tensor
    """``[1, R, R]`` in {0, 1}: the face region (M_s; M_r = 1 - face)."""
    landmarks: torch.Tensor
    """``[5, 2]`` pixels."""
    bbox: torch.Tensor
    """``[4]`` x1, y1, x2, y2 pixels."""
    embedding: torch.Tensor | None
    """ArcFace embedding of the photo (sources)."""


def load_images(project: Project, resolution: int) -> list[TrainImage]:
    """Accepted source and reference photos of ``project``, resized to ``resolution``."""
    from PIL import Image

    images = []
    for record in photo_records(project):
        if not record.accepted or record.role not in ("source", "reference"):
            continue
        try:
            if record.crop is None or record.mask is None:
                raise ValueError("its crop or mask is not recorded")
            with Image.open(project.path(record.crop)) as crop:
                size = crop.size
                rgb = crop.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
            with Image.open(project.path(record.mask)) as mask:
                face = mask.convert("L").resize((resolution, resolution), Image.Resampling.NEAREST)
            embedding = (
                np.load(project.path(record.embedding), allow_pickle=False) if record.embedding else None
            )
        except (OSError, ValueError) as error:
            raise DataError(
                f"Photo {record.id!r} of project {project.name!r} cannot be read ({error}); remove it and add it again."
            ) from error
        scale = resolution / size[0]
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        images.append(
            TrainImage(
                id=record.id,
                role=record.role,
                pixels=pixels,
                face=torch.from_numpy((np.asarray(face) >= 128).astype(np.float32))[None],
                landmarks=torch.tensor(record.landmarks, dtype=torch.float32).view(5, 2) * scale,
                bbox=torch.tensor(record.bbox, dtype=torch.float32).view(4) * scale,
                embedding=None
                if embedding is None
                else torch.from_numpy(np.asarray(embedding, np.float32).ravel()),
            )
        )
    for role, advice in (("source", "photos of the person"), ("reference", "photos showing the style")):
        if not any(image.role == role for image in images):
            raise DataError(
                f"Project {project.name!r} has no accepted {role} photos; add 4-6 {advice} first."
            )
    return images


def source_identity(images: list[TrainImage]) -> torch.Tensor:
    """The identity target: `engine.identity.unit_mean` of the source embeddings, as a float32 tensor.

    The mean rather than one paired photo: composed pairs are random, so a single source photo says
    nothing about the face being generated, while the mean gives every sample the same, steadier target.
    """
    from engine.identity import unit_mean

    mean = unit_mean(
        [
            image.embedding.numpy()
            for image in images
            if image.role == "source" and image.embedding is not None
        ]
    )
    if mean is None:
        raise DataError(
            "No source photo has a face embedding; re-add the source photos so they are analysed."
        )
    return torch.from_numpy(mean.astype(np.float32))


def source_framing(images: list[TrainImage]) -> Face | None:
    """The mean face box and landmarks of the source crops: where a generated portrait has its face."""
    from engine.faces import Face

    sources = [image for image in images if image.role == "source"]
    if not sources:
        return None
    bbox = torch.stack([image.bbox for image in sources]).float().mean(0)
    landmarks = torch.stack([image.landmarks for image in sources]).float().mean(0)
    return Face(bbox=tuple(float(v) for v in bbox), landmarks=landmarks.numpy().astype("float32"), score=1.0)


def jitter(pixels: torch.Tensor, brightness: float, contrast: float, saturation: float) -> torch.Tensor:
    """Colour jitter of ``[3, H, W]`` in [-1, 1] by the given factors (1 = unchanged)."""
    x = (pixels + 1) / 2 * brightness
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = (x - gray.mean()) * contrast + gray.mean()
    gray = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    x = (x - gray) * saturation + gray
    return x.clamp(0, 1) * 2 - 1


def flip_points(landmarks: torch.Tensor, bbox: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmarks and box after a horizontal flip of an image ``width`` pixels wide."""
    flipped = landmarks[FLIP_ORDER].clone()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    box = torch.stack([width - bbox[2], bbox[1], width - bbox[0], bbox[3]])
    return flipped, box


def _cast(model, dtype: torch.dtype) -> None:
    """``model.to(dtype)`` without diffusers' warning, which it gives on every cast of a model to a dtype."""
    from diffusers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model.to(dtype)
    finally:
        logging.set_verbosity(verbosity)


@dataclass
class View:
    """One augmented version of an image, VAE-encoded."""

    flip: bool
    mean: torch.Tensor
    std: torch.Tensor
    face: torch.Tensor
    """``[1, h, w]`` face mask on the latent grid (nearest)."""
    landmarks: torch.Tensor
    bbox: torch.Tensor


@dataclass
class Sample:
    kind: str
    image: int
    template: int
    view: int
    """Index of the cached view; with ``latent_cache_variants=0`` the seed of the view made for it."""


@dataclass
class Batch:
    """Tensors of one micro-batch, on the training device."""

    kinds: list[str]
    latents: torch.Tensor
    """``[B, 4, h, w]`` scaled latents."""
    input_ids: torch.Tensor
    recon_masks: torch.Tensor
    """``[B, 1, h, w]`` reconstruction weights (binary mask, optionally floored)."""
    ar_rows: torch.Tensor
    """AR pairs: batch row, token position in the prompt, binary target ``[h, w]``."""
    ar_positions: torch.Tensor
    ar_targets: torch.Tensor
    identity_rows: torch.Tensor
    """Rows that take the identity loss, with the known landmarks and face boxes of their image."""
    landmarks: torch.Tensor
    boxes: torch.Tensor


class TrainingData:
    """Draws samples and turns them into batches; holds the prompt ids and the latent cache."""

    def __init__(self, images: list[TrainImage], config: TrainingConfig, tokenizer):
        self.images = images
        self.config = config
        self.by_role = {
            role: [i for i, image in enumerate(images) if image.role == role]
            for role in ("source", "reference")
        }
        identity, style = config.identity_token, config.style_token
        self.prompts = {
            "source": [t.format(identity) for t in SOURCE_TEMPLATES],
            "reference": [t.format(style) for t in REFERENCE_TEMPLATES],
            "composed": [composed_prompt(identity, style, t) for t in SOURCE_TEMPLATES],
        }
        self.token_ids = dict(
            zip((identity, style), tokenizer.convert_tokens_to_ids([identity, style]), strict=True)
        )
        self.input_ids = {
            kind: tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for kind, prompts in self.prompts.items()
        }
        self.views: list[list[View]] = []

    @torch.no_grad()
    def build_cache(
        self, vae, device: torch.device, dtype: torch.dtype, chunk: int = 4, *, upcast: bool = False
    ) -> None:
        """Encode ``latent_cache_variants`` augmented views of every image (deterministic in the seed).

        With ``latent_cache_variants=0`` nothing is cached: the VAE is kept and each sample's view
        is augmented and encoded when its batch is made (`draw` gives each sample its own view seed).
        ``upcast`` (`engine.models.vae_upcast`: SDXL's VAE in fp16, which overflows) encodes in fp32,
        the VAE cast to fp32 for each encode and back to ``dtype`` after.
        """
        count, config = self.config.latent_cache_variants, self.config
        self.encoder = (vae, device, dtype, upcast)
        flipped = [(v + 0.5) / count > 1 - config.flip_probability for v in range(count)]
        jobs = [
            self._augment(index, view, flipped[view])
            for index in range(len(self.images))
            for view in range(count)
        ]
        views = [
            view for start in range(0, len(jobs), chunk) for view in self._encode(jobs[start : start + chunk])
        ]
        self.views = [views[i * count : (i + 1) * count] for i in range(len(self.images))]

    def _augment(self, index: int, view: int, flip: bool | None = None) -> tuple:
        """Pixels, face mask, landmarks and box of view ``view`` of image ``index`` (flip drawn when None)."""
        config, image = self.config, self.images[index]
        rng = random.Random(f"{config.seed}/{index}/{view}")
        factors = [1 + rng.uniform(-config.color_jitter, config.color_jitter) for _ in range(3)]
        if flip is None:
            flip = rng.random() < config.flip_probability
        pixels, face, landmarks, bbox = (
            jitter(image.pixels, *factors),
            image.face,
            image.landmarks,
            image.bbox,
        )
        if flip:
            pixels, face = pixels.flip(-1), face.flip(-1)
            landmarks, bbox = flip_points(landmarks, bbox, pixels.shape[-1])
        return flip, pixels, face, landmarks, bbox

    @torch.no_grad()
    def _encode(self, jobs: list[tuple]) -> list[View]:
        """VAE-encode augmented views (one VAE call)."""
        vae, device, dtype, upcast = self.encoder
        pixels = torch.stack([job[1] for job in jobs]).to(device, torch.float32 if upcast else dtype)
        if upcast:
            _cast(vae, torch.float32)
        try:
            dist = vae.encode(pixels).latent_dist
        finally:
            if upcast:
                _cast(vae, dtype)
        views = []
        for job, mean, std in zip(jobs, dist.mean.float(), dist.std.float(), strict=True):
            flip, _, face, landmarks, bbox = job
            face = F.interpolate(face[None], size=mean.shape[-2:], mode="nearest")[0].to(device)
            views.append(View(flip, mean, std, face, landmarks, bbox))
        return views

    def view(self, sample: Sample) -> View:
        """The sample's view: from the cache, or (``latent_cache_variants=0``) augmented and encoded now."""
        if self.config.latent_cache_variants:
            return self.views[sample.image][sample.view]
        return self._encode([self._augment(sample.image, sample.view)])[0]

    def draw(self, rng: random.Random, phase: int) -> Sample:
        """One sample: kind (1:1 in phase 1, ``task_mix`` in phase 2), image, template and view."""
        weights = [1.0, 1.0, 0.0] if phase == 1 else list(self.config.task_mix)
        kind = rng.choices(KINDS, weights=weights)[0]
        image = rng.choice(self.by_role["source" if kind == "source" else "reference"])
        template = rng.randrange(len(self.prompts[kind]))
        count = self.config.latent_cache_variants
        view = rng.randrange(count) if count else rng.getrandbits(32)
        return Sample(kind, image, template, view)

    def batch(
        self,
        samples: list[Sample],
        scaling_factor: float,
        identity_kinds: tuple[str, ...],
        generator: torch.Generator,
    ) -> Batch:
        """Tensors for ``samples``; latents are drawn from the cached distributions with ``generator``."""
        identity_id, style_id = self.token_ids.values()
        views = [self.view(s) for s in samples]
        mean = torch.stack([v.mean for v in views])
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        latents = (mean + torch.stack([v.std for v in views]) * noise) * scaling_factor
        input_ids = torch.stack([self.input_ids[s.kind][s.template] for s in samples])
        faces = torch.stack([v.face for v in views])
        targets = torch.where(
            torch.tensor([s.kind == "source" for s in samples]).view(-1, 1, 1, 1).to(faces.device),
            faces,
            1 - faces,
        )
        rows, positions, ar_targets = [], [], []
        for row, (sample, face) in enumerate(zip(samples, faces, strict=True)):
            pairs = {
                "source": [(identity_id, face)],
                "reference": [(style_id, 1 - face)],
                "composed": [(identity_id, face), (style_id, 1 - face)],
            }[sample.kind]
            for token_id, target in pairs:
                rows.append(row)
                positions.append(int((input_ids[row] == token_id).nonzero()[0, 0]))
                ar_targets.append(target[0])
        identity_rows = [row for row, s in enumerate(samples) if s.kind in identity_kinds]
        return Batch(
            kinds=[s.kind for s in samples],
            latents=latents,
            input_ids=input_ids.to(latents.device),
            recon_masks=targets.clamp_min(self.config.mask_floor),
            ar_rows=torch.tensor(rows, dtype=torch.long),
            ar_positions=torch.tensor(positions, dtype=torch.long),
            ar_targets=torch.stack(ar_targets),
            identity_rows=torch.tensor(identity_rows, dtype=torch.long),
            landmarks=torch.stack([views[r].landmarks for r in identity_rows])
            if identity_rows
            else torch.zeros(0, 5, 2),
            boxes=torch.stack([views[r].bbox for r in identity_rows]) if identity_rows else torch.zeros(0, 4),
        )
