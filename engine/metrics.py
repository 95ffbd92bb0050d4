"""The paper's evaluation metrics (METHOD.md section 8): CSIM, masked-CLIP style and aesthetic.

The metric functions are pure: embeddings in, numbers out.

- CSIM: mean pairwise cosine between the ArcFace embeddings of the generated faces and those of
  the source photos (every generated face against every source, averaged).
- Style: mean pairwise cosine between the CLIP image embeddings of the generated images and of
  the reference images, with the face region (face-parsing classes 1-13, METHOD.md section 3) of
  both filled with flat mid grey (`MASK_FILL`) before embedding.
- Aesthetic: LAION's improved aesthetic predictor, an MLP head applied to the L2-normalised CLIP
  ViT-L/14 image embedding (``openai/clip-vit-large-patch14``, the projected ``image_embeds``).

`load_clip` and `load_aesthetic_head` load the two models; the head is the asset ``laion_aesthetic``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import UserError

if TYPE_CHECKING:
    import torch

    from engine.assets import Progress

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""The CLIP the LAION aesthetic head was trained on, also used for the style metric."""
CLIP_FOLDER = "clip-vit-large-patch14"
"""A CLIP folder of this name in the asset cache is used in place of the hub download (offline, demo)."""
AESTHETIC_ASSET = "laion_aesthetic"
MASK_FILL = (128, 128, 128)
"""Colour painted over faces before the style embedding."""
AESTHETIC_LAYERS = (0, 2, 4, 6, 7)
"""Indices of the linear layers in the head's ``layers`` sequence; 1, 3 and 5 are dropouts."""
AESTHETIC_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}


class MetricsModelError(UserError):
    """A model of the evaluation cannot be loaded; the message says which and what to do."""


def pairwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of every row of ``a [N, D]`` with every row of ``b [M, D]``: ``[N, M]`` float64."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("Cosine similarity needs at least one embedding on each side.")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def csim(generated_embeddings: np.ndarray, source_embeddings: np.ndarray) -> float:
    """Identity similarity: mean cosine over all (generated face, source face) pairs of ArcFace embeddings."""
    return float(pairwise_cosine(generated_embeddings, source_embeddings).mean())


def style_similarity(gen_embeds: np.ndarray, ref_embeds: np.ndarray) -> float:
    """Style similarity: mean cosine over all (generated, reference) pairs of face-masked CLIP embeddings."""
    return float(pairwise_cosine(gen_embeds, ref_embeds).mean())


def mask_out(image: np.ndarray, mask: np.ndarray | None, fill: Sequence[int] = MASK_FILL) -> np.ndarray:
    """A copy of an RGB ``uint8`` image with the pixels where ``mask`` is true set to ``fill``."""
    out = np.array(image, dtype=np.uint8, copy=True)
    if mask is not None:
        out[np.asarray(mask, dtype=bool)] = np.asarray(fill, dtype=np.uint8)
    return out


def aesthetic_score(embeds: np.ndarray, head: torch.nn.Module) -> np.ndarray:
    """LAION aesthetic scores ``[N]`` (about 1-10) of CLIP image embeddings ``[N, D]``, normalised here."""
    import torch

    vectors = np.atleast_2d(np.asarray(embeds, np.float32))
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    parameter = next(head.parameters())
    with torch.inference_mode():
        scores = head.eval()["layers"](torch.from_numpy(vectors).to(parameter.device, parameter.dtype))
    return scores.float().cpu().numpy().reshape(-1).astype(np.float64)


def build_aesthetic_head(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The improved-aesthetic-predictor MLP with the weights of ``state_dict`` (keys ``layers.N.weight/bias``).

    Widths come from the weights (768-1024-128-64-16-1 in the published file). The module is a
    ``ModuleDict`` holding the ``layers`` sequence so the published key names load unchanged.
    """
    from torch import nn

    if not isinstance(state_dict, dict):
        raise ValueError(f"the file holds a {type(state_dict).__name__}, not a state dict")
    modules: list[nn.Module] = []
    for index in range(max(AESTHETIC_LAYERS) + 1):
        if index in AESTHETIC_DROPOUTS:
            modules.append(nn.Dropout(AESTHETIC_DROPOUTS[index]))
            continue
        weight = state_dict.get(f"layers.{index}.weight")
        if weight is None or weight.ndim != 2:
            raise ValueError(f"the weights lack the linear layer layers.{index}")
        modules.append(nn.Linear(weight.shape[1], weight.shape[0]))
    head = nn.ModuleDict({"layers": nn.Sequential(*modules)})
    head.load_state_dict(state_dict, strict=True)
    return head.requires_grad_(False).eval()


def load_aesthetic_head(
    path: Path | None = None, *, download: bool = True, progress: Progress | None = None
) -> torch.nn.Module:
    """The LAION aesthetic head from ``path``, or from the asset cache (downloaded on first use); on the CPU."""
    import pickle

    import torch

    from engine.assets import REGISTRY, asset_path

    path = (
        Path(path) if path is not None else asset_path(AESTHETIC_ASSET, download=download, progress=progress)
    )
    try:
        return build_aesthetic_head(torch.load(str(path), map_location="cpu", weights_only=True))
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as error:
        raise MetricsModelError(
            f"The aesthetic predictor {path} cannot be loaded ({error}); replace it with a fresh download "
            f"of {REGISTRY[AESTHETIC_ASSET].filename}."
        ) from error


@dataclass
class Clip:
    """A CLIP image tower with its preprocessing."""

    model: Any
    """``transformers.CLIPVisionModelWithProjection``, in eval mode."""
    processor: Any
    """``transformers.CLIPImageProcessor``."""
    source: str
    device: torch.device
    dtype: torch.dtype

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)


def clip_source(source: str | Path | None = None) -> str:
    """``source`` if given, else a ``clip-vit-large-patch14`` folder in the asset cache, else the hub id."""
    if source is not None:
        return str(source)
    from engine.assets import assets_dir

    local = assets_dir() / CLIP_FOLDER
    return str(local) if (local / "config.json").is_file() else DEFAULT_CLIP


def load_clip(
    source: str | Path | None = None, *, device: str | torch.device | None = None, dtype: str | None = None
) -> Clip:
    """Load a CLIP image tower (default CLIP ViT-L/14) from a hub id or folder; safetensors weights only."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from engine.assets import assets_dir, offline
    from engine.devices import pick_device, pick_dtype

    name = clip_source(source)
    torch_device = pick_device(str(device) if device is not None else None)
    torch_dtype = pick_dtype(torch_device, dtype)
    options = {"local_files_only": offline() or Path(name).expanduser().is_dir()}
    try:
        processor = CLIPImageProcessor.from_pretrained(name, **options)
        model = CLIPVisionModelWithProjection.from_pretrained(
            name, use_safetensors=True, dtype=torch_dtype, **options
        )
    except OSError as error:
        raise MetricsModelError(
            f"The CLIP image model {name} cannot be loaded ({error}). Connect to the internet once so it is "
            f"downloaded into the Hugging Face cache, or save a copy of {DEFAULT_CLIP} (config, preprocessor "
            f"config and .safetensors weights) in {assets_dir() / CLIP_FOLDER}."
        ) from error
    model = model.to(torch_device).eval().requires_grad_(False)
    return Clip(model, processor, name, torch_device, torch_dtype)


def clip_embeddings(clip: Clip, images: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Projected CLIP image embeddings ``[N, D]`` (float32, not normalised) of RGB ``uint8`` images."""
    import torch

    chunks = [np.zeros((0, clip.dim), np.float32)]
    for start in range(0, len(images), batch_size):
        chunk = [np.ascontiguousarray(image) for image in images[start : start + batch_size]]
        batch = clip.processor(images=chunk, return_tensors="pt")
        pixels = batch["pixel_values"].to(clip.device, clip.dtype)
        with torch.inference_mode():
            chunks.append(clip.model(pixel_values=pixels).image_embeds.float().cpu().numpy())
    return np.concatenate(chunks)
