"""What every benchmark works on: a base model, the demo face kit and a project with photos.

Model sizes: ``tiny`` (the demo kit's tiny SD 1.x, 64 px), ``sd15`` (SD 1.5's configs from
``assets/sd15`` with random weights, 512 px), ``tiny-sdxl`` (the demo kit's tiny SDXL: SDXL's
classes, two text encoders and added time ids with small widths, at `SDXL_RESOLUTION`), and two
sizes of SDXL 1.0 base's configs from ``assets/sdxl`` with random weights (written in fp16):
``sdxl-512`` at `SDXL_CPU_RESOLUTION`, the SDXL-shaped model on a CPU (in fp32 it holds about
14 GB before its first step and peaks near 20 GB at 512 px, with a step of about 26 s on 2 cores:
512 px is the largest size this 24 GB, 2-core machine runs, 1024 px being 4x the activations and
the time), and ``sdxl`` at 1024 px for the GPU check (`bench.gpu_check --sdxl`). The random
models are written once as diffusers folders in the cache, so every process (the memory benchmark runs one per configuration) loads it
with the app's own loader in about a second instead of initialising 1.1 B parameters again.

The face models are always the demo kit's stand-ins (Haar detection, random-weight BiSeNet and
ArcFace in the real formats): no real weights can be downloaded here. The project holds
scikit-image's astronaut as the source photo and as the reference photo, added through the
app's intake.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.store import atomic_write_text

MODELS = ("tiny", "sd15", "tiny-sdxl", "sdxl-512", "sdxl")
SDXL_RESOLUTION = 256
SDXL_CPU_RESOLUTION = 512
RESOLUTIONS = {
    "tiny": 64,
    "sd15": 512,
    "tiny-sdxl": SDXL_RESOLUTION,
    "sdxl-512": SDXL_CPU_RESOLUTION,
    "sdxl": 1024,
}
SDXL_MODELS = ("tiny-sdxl", "sdxl-512", "sdxl")
"""Sizes of the SDXL family: their results go in the results file under `RESULT_KEYS`."""
RESULT_KEYS = {"tiny-sdxl": "sdxl", "sdxl-512": "sdxl_shaped", "sdxl": "sdxl_shaped"}
"""Where each SDXL size's run is kept in the results file: the tiny SDXL's under ``"sdxl"``, an
SDXL-shaped model's (on a CPU at 512 px or on a GPU at 1024 px) under ``"sdxl_shaped"``."""
SD15_VERSION = "1"
PROJECT = "bench"


@dataclass(frozen=True)
class Workbench:
    """The inputs of one benchmark run; plain paths so a worker process can rebuild it."""

    model: str
    base: Path
    """Diffusers folder of the base model."""
    assets: Path
    """The demo kit's asset folder (face model stand-ins)."""
    tiny_decoder: Path
    """TAESD-shaped folder for ``identity_decoder="tiny"`` (the kit's for tiny, TAESD's layout with random weights for sd15)."""
    home: Path
    """Data root (``MAGICAPTURE_HOME``) holding the benchmark project."""

    @property
    def resolution(self) -> int:
        return RESOLUTIONS[self.model]

    def activate(self) -> None:
        """Point this process (and its children) at the kit's assets and the benchmark data root."""
        os.environ["MAGICAPTURE_ASSETS"] = str(self.assets)
        os.environ["MAGICAPTURE_OFFLINE"] = "1"
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["MAGICAPTURE_HOME"] = str(self.home)

    def project(self):
        from engine.store import ProjectStore

        return ProjectStore(self.home).open(PROJECT)

    def to_args(self) -> list[str]:
        """Command-line arguments that rebuild this workbench in a worker process."""
        values = {
            "--model": self.model,
            "--base": self.base,
            "--assets": self.assets,
            "--tiny-decoder": self.tiny_decoder,
            "--home": self.home,
        }
        return [str(item) for pair in values.items() for item in pair]


def prepare(model: str, scratch: Path) -> Workbench:
    """Build (or reuse) the models in the user cache and a fresh project with photos under ``scratch``.

    The demo kit is the studio's own (`engine.demo.default_kit_folder`), so a studio launched by
    the benchmark finds it built; set ``XDG_CACHE_HOME`` to move the cache (Linux).
    """
    from platformdirs import user_cache_path

    from engine.demo import build_demo_kit, default_kit_folder

    if model not in MODELS:
        raise ValueError(f"Unknown model size {model!r}; choose one of {', '.join(MODELS)}.")
    kit = build_demo_kit(default_kit_folder())
    if model == "tiny":
        base, tiny_decoder = kit.sd.folder, kit.tiny_decoder
    elif model == "tiny-sdxl":  # the kit's tiny TAESD stands in for TAESD-XL
        base, tiny_decoder = kit.sdxl.folder, kit.tiny_decoder
    else:
        cache = user_cache_path("magicapture-studio", appauthor=False)
        shaped = "sdxl" if model in RESULT_KEYS else model  # one random SDXL for both sizes
        build = random_sdxl if shaped == "sdxl" else random_sd15
        base = build(cache / f"bench-{shaped}-random-v{SD15_VERSION}")
        tiny_decoder = random_taesd(cache / f"bench-taesd-random-v{SD15_VERSION}")
    bench = Workbench(
        model=model,
        base=Path(base),
        assets=kit.assets,
        tiny_decoder=Path(tiny_decoder),
        home=Path(scratch) / "home",
    )
    bench.activate()
    add_photos(bench.home)
    return bench


def random_taesd(folder: Path) -> Path:
    """TAESD's architecture (`AutoencoderTiny`'s defaults) with random weights, as a diffusers folder."""
    import torch
    from diffusers import AutoencoderTiny

    done = folder / "COMPLETE"
    if not done.is_file():
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(folder)
        atomic_write_text(done, SD15_VERSION)
    return folder


def random_sd15(folder: Path) -> Path:
    """SD 1.5's UNet, VAE and text encoder from their configs with random weights, as a diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models import SD15_CONFIG

    done = folder / "COMPLETE"
    if done.is_file() and done.read_text() == SD15_VERSION:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG / "unet")).save_pretrained(
        folder / "unet"
    )
    AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG / "vae")).save_pretrained(folder / "vae")
    text_config = CLIPTextConfig.from_pretrained(SD15_CONFIG / "text_encoder")
    CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")
    for part in ("tokenizer", "scheduler"):
        shutil.copytree(SD15_CONFIG / part, folder / part)
    shutil.copy(SD15_CONFIG / "model_index.json", folder / "model_index.json")
    atomic_write_text(done, SD15_VERSION)
    return folder


def random_sdxl(folder: Path) -> Path:
    """SDXL 1.0 base's UNet, VAE and both text encoders from ``assets/sdxl`` with random weights, in fp16.

    Both tokenizers are SD 1.5's vocabulary (``assets/sd15/tokenizer``), the second padding with
    ``!`` as OpenCLIP does (`engine.families.sdxl`).
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from engine.families.sdxl import SDXL_CONFIG
    from engine.models import SD15_CONFIG

    done = folder / "COMPLETE"
    if done.is_file() and done.read_text() == SD15_VERSION:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    torch.manual_seed(0)
    for name, kind in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        kind.from_config(kind.load_config(SDXL_CONFIG / name)).half().save_pretrained(folder / name)
    for name, kind in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
        kind(CLIPTextConfig.from_pretrained(SDXL_CONFIG / name)).half().save_pretrained(folder / name)
    CLIPTokenizer.from_pretrained(SD15_CONFIG / "tokenizer").save_pretrained(folder / "tokenizer")
    CLIPTokenizer.from_pretrained(SD15_CONFIG / "tokenizer", pad_token="!").save_pretrained(
        folder / "tokenizer_2"
    )
    shutil.copytree(SDXL_CONFIG / "scheduler", folder / "scheduler")
    shutil.copy(SDXL_CONFIG / "model_index.json", folder / "model_index.json")
    atomic_write_text(done, SD15_VERSION)
    return folder


def test_photos() -> dict[str, bytes]:
    """The test photos as encoded files: insightface's Tom Hanks (112 px PNG) and scikit-image's astronaut (PNG)."""
    import io

    import insightface
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    tom = Path(insightface.__file__).parent / "data" / "images" / "Tom_Hanks_54745.png"
    return {"Tom_Hanks_54745.png": tom.read_bytes(), "astronaut.png": buffer.getvalue()}


def add_photos(home: Path) -> None:
    """Create the benchmark project under the data root ``home``: the astronaut as source and as reference photo."""
    from engine.faces import load_face_kit
    from engine.intake import Accepted, add_photo
    from engine.store import ProjectStore

    store = ProjectStore(home)
    if PROJECT in store.list():
        store.delete(PROJECT)
    project = store.create(PROJECT)
    kit = load_face_kit()
    photo = test_photos()["astronaut.png"]
    for role in ("source", "reference"):
        result = add_photo(project, photo, "astronaut.png", role, kit)
        if not isinstance(result, Accepted):
            raise RuntimeError(f"The benchmark photo was refused as {role} photo: {result.message}")
