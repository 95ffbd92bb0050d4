"""The restoration and upscaling networks: loading them through spandrel (kept for reuse), running them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import UserError
from engine.model_cache import ModelCache

if TYPE_CHECKING:
    import torch
    from spandrel import ImageModelDescriptor

RESTORERS = {"gfpgan": "gfpgan_v1.4", "codeformer": "codeformer"}
"""Restorer name -> asset name."""
RESTORER_LABELS = {"gfpgan": "GFPGAN", "codeformer": "CodeFormer"}
UPSCALERS = {2: "realesrgan_x2plus", 4: "realesrgan_x4plus"}
"""Upscale factor -> asset name."""
TILE = 256
TILE_OVERLAP = 32
"""Upscaling tile side and the context added on each side, in input pixels."""
FIDELITY = 0.5
MODELS_KEPT = 2
"""Loaded models kept for the next image (an upscaler and a restorer)."""


class PostprocessError(UserError):
    """Post-processing cannot run as asked; the message says what to change."""


@functools.cache
def _registry() -> Any:
    """spandrel's registry plus the extra architectures (CodeFormer), without touching the global one."""
    from spandrel import MAIN_REGISTRY
    from spandrel_extra_arches import EXTRA_REGISTRY

    registry = MAIN_REGISTRY.copy()
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


_MODELS: ModelCache[tuple[str, int, str], ImageModelDescriptor] = ModelCache(capacity=MODELS_KEPT)


def load_model(path: Path, device: torch.device | str | None = None) -> ImageModelDescriptor:
    """A spandrel model from a weights file on ``device``, fp16 on CUDA where it supports it (kept for reuse)."""
    from pickle import UnpicklingError

    import torch
    from spandrel import ModelLoader, UnsupportedModelError

    from engine.devices import pick_device

    device = torch.device(device) if device is not None else pick_device()
    key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, str(device))

    def load() -> ImageModelDescriptor:
        try:
            model = ModelLoader(registry=_registry()).load_from_file(str(path))
        except (UnsupportedModelError, UnpicklingError, ValueError, RuntimeError, KeyError, OSError) as error:
            raise PostprocessError(
                f"{path} is not a restoration or upscaling model spandrel can load ({error})."
            ) from error
        dtype = torch.float16 if device.type == "cuda" and model.supports_half else torch.float32
        return model.to(device).to(dtype).eval()

    return _MODELS.get(key, load)


def _to_tensor(image: np.ndarray, model: Any) -> torch.Tensor:
    import torch

    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 255
    return tensor.to(model.device, model.dtype)


def _to_image(tensor: torch.Tensor) -> np.ndarray:
    pixels = tensor[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (pixels * 255).round().astype(np.uint8)


def upscale_image(
    image: np.ndarray, model: Any, *, tile: int = TILE, overlap: int = TILE_OVERLAP
) -> np.ndarray:
    """Upscale an RGB ``uint8`` image tile by tile; each tile sees ``overlap`` pixels of context per side."""
    import torch

    if model.scale < 2:
        raise PostprocessError(f"{model.architecture.name} does not upscale (scale {model.scale}).")
    scale, (height, width) = model.scale, image.shape[:2]
    pixels = _to_tensor(image, model)
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    with torch.inference_mode():
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                y0, x0 = max(top - overlap, 0), max(left - overlap, 0)
                y1, x1 = min(bottom + overlap, height), min(right + overlap, width)
                piece = model(pixels[..., y0:y1, x0:x1])
                rows = slice((top - y0) * scale, (bottom - y0) * scale)
                cols = slice((left - x0) * scale, (right - x0) * scale)
                out[top * scale : bottom * scale, left * scale : right * scale] = _to_image(
                    piece[..., rows, cols]
                )
    return out


def restore_crop(model: Any, crop: np.ndarray, *, fidelity: float = FIDELITY) -> np.ndarray:
    """Run GFPGAN or CodeFormer on an aligned 512 crop (the networks take and give [-1, 1])."""
    import torch

    kind = model.architecture.id
    pixels = _to_tensor(crop, model) * 2 - 1
    with torch.inference_mode():
        if kind == "CodeFormer":
            restored = model.model(pixels, weight=fidelity)[0]
        elif kind == "GFPGAN":
            restored = model.model(pixels, return_rgb=False, randomize_noise=False)[0]
        else:
            raise PostprocessError(
                f"{model.architecture.name} is not a face restorer (GFPGAN or CodeFormer)."
            )
    return _to_image((restored + 1) / 2)
