"""Tiny stand-ins of the evaluation models: a CLIP image tower and the LAION aesthetic head.

The CLIP is a `CLIPVisionModelWithProjection` with a tiny config plus its `CLIPImageProcessor`,
saved with ``save_pretrained`` (safetensors), so `engine.metrics.load_clip` reads it like the real
``openai/clip-vit-large-patch14``. The head has the published layout (``layers.0`` ... ``layers.7``)
with small widths, saved as a plain state dict under the real file name.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from engine.store import atomic_path

TINY_CLIP_DIM = 32
"""Projection width of the tiny CLIP, hence the input width of the tiny aesthetic head."""
TINY_CLIP_IMAGE = 32
TINY_HEAD_WIDTHS = (TINY_CLIP_DIM, 16, 8, 8, 4, 1)
"""Widths of the five linear layers' inputs and the output (published: 768, 1024, 128, 64, 16, 1)."""


@dataclass(frozen=True)
class TinyScoring:
    clip: Path
    """Folder with config.json, model.safetensors and preprocessor_config.json."""
    aesthetic: Path
    """The head's state dict (``.pth``)."""


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Save a random tiny CLIP image tower and its image processor into ``folder``."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_CLIP_IMAGE,
        patch_size=8,
        projection_dim=TINY_CLIP_DIM,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    side = {"height": TINY_CLIP_IMAGE, "width": TINY_CLIP_IMAGE}
    CLIPImageProcessor(size={"shortest_edge": TINY_CLIP_IMAGE}, crop_size=side).save_pretrained(folder)
    return folder


def build_tiny_aesthetic_head(path: Path, seed: int = 0) -> Path:
    """Save a random head in the published key layout (``layers.{0,2,4,6,7}.weight/bias``) to ``path``."""
    import torch

    from engine.metrics import AESTHETIC_LAYERS

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (fan_in, fan_out) in zip(AESTHETIC_LAYERS, pairwise(TINY_HEAD_WIDTHS), strict=True):
        state[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5
        state[f"layers.{index}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)
    return Path(path)


def build_scoring_assets(assets: Path) -> TinyScoring:
    """Write both stand-ins into an asset cache folder, under the names `engine.metrics` looks for."""
    from engine.assets import REGISTRY
    from engine.metrics import AESTHETIC_ASSET, CLIP_FOLDER

    assets = Path(assets)
    clip = build_tiny_clip(assets / CLIP_FOLDER)
    head = build_tiny_aesthetic_head(assets / REGISTRY[AESTHETIC_ASSET].filename)
    return TinyScoring(clip, head)
