"""Tiny-model kit: random-weight models in the real formats, for tests and ``--demo``.

Everything the app loads has a tiny stand-in here, written in the same file format under the same
file name, so the real loading code runs offline and without a GPU. Outputs are noise-like: the kit
exercises the pipeline, it does not make portraits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.demo.sd import TINY_RESOLUTION, TinySD, build_tiny_decoder, build_tiny_sd
from engine.demo.sdxl import build_tiny_sdxl
from engine.store import atomic_write_text

KIT_VERSION = "3"


@dataclass(frozen=True)
class DemoKit:
    folder: Path
    sd: TinySD
    sdxl: TinySD
    """The tiny SDXL (`engine.demo.sdxl`): a diffusers folder and one file in the original SDXL layout."""
    tiny_decoder: Path
    """A tiny TAESD folder, for ``identity_decoder="tiny"``."""
    assets: Path
    """An asset cache holding the tiny stand-ins under the real file names."""
    resolution: int = TINY_RESOLUTION


def build_demo_kit(folder: Path) -> DemoKit:
    """Build (or reuse, when complete) the whole kit under ``folder``.

    Processes that start at once (two studios, parallel test workers) build it once: the others
    wait on a lock beside the folder and then reuse it, so none reads a file another is writing.
    """
    from filelock import FileLock

    from engine.demo.faces import build_face_assets
    from engine.demo.restore import build_restore_assets
    from engine.demo.scoring import build_scoring_assets

    folder = Path(folder)
    done = folder / "COMPLETE"
    sd = TinySD(folder / "sd", folder / "sd-tiny.safetensors")
    sdxl = TinySD(folder / "sdxl", folder / "sdxl-tiny.safetensors")
    tiny_decoder = folder / "taesd"
    assets = folder / "assets"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.with_name(f".{folder.name}.lock"))):
        if done.is_file() and done.read_text() == KIT_VERSION:
            return DemoKit(folder, sd, sdxl, tiny_decoder, assets)
        sd = build_tiny_sd(folder)
        sdxl = build_tiny_sdxl(folder)
        build_tiny_decoder(folder)
        build_face_assets(assets)
        build_restore_assets(assets)
        build_scoring_assets(assets)
        atomic_write_text(done, KIT_VERSION)
    return DemoKit(folder, sd, sdxl, tiny_decoder, assets)


def default_kit_folder() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("magicapture-studio", appauthor=False) / f"demo-kit-v{KIT_VERSION}"


def use_demo_kit(kit: DemoKit) -> None:
    """Point the asset registry at the kit, keep this process offline and run torch on one thread.

    The tiny models' operations are too small to split across threads; with two threads on a CPU
    whose cores are busy with other work, OpenMP's threads wait on each other, and a demo training
    that takes seconds on one thread took minutes.
    """
    import torch

    os.environ["MAGICAPTURE_ASSETS"] = str(kit.assets)
    os.environ["MAGICAPTURE_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
