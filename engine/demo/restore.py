"""Random-weight stand-ins of the face restorers and upscalers, in the layouts spandrel detects.

Each file has the real file name and the real layout (``{"params_ema": state_dict}`` in a ``.pth``),
so `engine.postprocess` loads it through spandrel exactly as it loads the published weights:

- ``RealESRGAN_x4plus.pth`` / ``RealESRGAN_x2plus.pth``: Real-ESRGAN's RRDBNet (``conv_first``,
  ``body.N.rdbK.convJ``, ``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``). spandrel reads
  the width and depth from the weights, so these are tiny (8 features, 1 block; the growth width 32
  is fixed). The x2 model sees a 2x pixel-unshuffled input (12 channels), like the real one. They
  upscale like nearest-neighbour plus a little texture from a random trunk.
- ``GFPGANv1.4.pth``: GFPGANv1Clean at its real size. spandrel builds it with fixed arguments (512
  px, channel multiplier 2), so it needs every tensor: 87 M parameters, stored as fp16 (~175 MB).
- ``codeformer.pth``: CodeFormer. spandrel reads the transformer width, depth and codebook size
  from the weights (kept tiny) but the VQGAN encoder and generator are fixed (~67 M parameters,
  ~150 MB as fp16).

The restorers paint noise; the kit exercises the loading, alignment and paste-back code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.store import atomic_path

if TYPE_CHECKING:
    import torch

GROWTH = 32
"""Channels added by each RRDB dense convolution; spandrel's RRDBNet fixes it at 32."""


@dataclass(frozen=True)
class RestoreAssets:
    gfpgan: Path
    codeformer: Path
    realesrgan_x2: Path
    realesrgan_x4: Path


def realesrgan_state_dict(
    scale: int, *, features: int = 8, blocks: int = 1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Real-ESRGAN RRDBNet tensors (x2 or x4) that upscale like nearest-neighbour plus texture.

    The first, upsampling and last convolutions carry the colour channels through unchanged
    (centre taps of 1); the RRDB trunk is random, so every output pixel also depends on its
    neighbourhood, as in the real network.
    """
    import torch

    if scale not in (2, 4):
        raise ValueError(f"Real-ESRGAN stand-ins exist for scales 2 and 4, not {scale}.")
    generator = torch.Generator().manual_seed(seed)
    unshuffle = 16 // scale**2  # x2 sees 2x2 pixel-unshuffled input: colour c at channel 4c

    def conv(cout: int, cin: int, *, carry: int = 0, stride: int = 1) -> dict[str, torch.Tensor]:
        weight = torch.randn(cout, cin, 3, 3, generator=generator) * (0.5 / (cin * 9) ** 0.5)
        if carry:
            weight.zero_()
            for channel in range(carry):
                weight[channel, channel * stride, 1, 1] = 1.0
        return {"weight": weight, "bias": torch.zeros(cout)}

    layers = {"conv_first": conv(features, 3 * unshuffle, carry=3, stride=unshuffle)}
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                cout = features if index == 5 else GROWTH
                layers[f"body.{block}.rdb{rdb}.conv{index}"] = conv(cout, features + (index - 1) * GROWTH)
    layers["conv_body"] = conv(features, features)
    for name in ("conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(features, features, carry=3)
    layers["conv_last"] = conv(3, features, carry=3)
    return {f"{name}.{kind}": tensor for name, parts in layers.items() for kind, tensor in parts.items()}


def gfpgan_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """GFPGAN v1.4 (GFPGANv1Clean) tensors with random weights, as fp16."""
    import torch
    from spandrel.architectures.GFPGAN import GFPGAN

    torch.manual_seed(seed)
    model = GFPGAN(
        out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
        num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True,
    )  # fmt: skip
    return {key: value.half() for key, value in model.state_dict().items()}


def codeformer_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """CodeFormer tensors with random weights and a tiny transformer (width 16, 1 layer, 16 codes), as fp16."""
    import torch
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    torch.manual_seed(seed)
    model = CodeFormer(
        dim_embd=16, n_head=8, n_layers=1, codebook_size=16, latent_size=256,
        connect_list=["32", "64", "128", "256"], fix_modules=["quantize", "generator"],
    )  # fmt: skip
    return {key: value.half() for key, value in model.state_dict().items()}


def _write_pth(path: Path, state: dict[str, torch.Tensor]) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save({"params_ema": state}, tmp)
    return path


def build_restore_assets(folder: Path) -> RestoreAssets:
    """Write the four stand-ins into an asset folder under the registry's file names."""
    from engine.assets import get_asset

    folder = Path(folder)

    def target(name: str) -> Path:
        return folder / get_asset(name).filename

    return RestoreAssets(
        gfpgan=_write_pth(target("gfpgan_v1.4"), gfpgan_state_dict()),
        codeformer=_write_pth(target("codeformer"), codeformer_state_dict()),
        realesrgan_x2=_write_pth(target("realesrgan_x2plus"), realesrgan_state_dict(2)),
        realesrgan_x4=_write_pth(target("realesrgan_x4plus"), realesrgan_state_dict(4, seed=1)),
    )
