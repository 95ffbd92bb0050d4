"""The device a run trains on (its memory, whether it spills) and the size class of the base model."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.preflight.table import GB, PreflightError

SD15_WIDTHS = [320, 640, 1280, 1280]
SDXL_WIDTHS = [320, 640, 1280]
SD15_FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"
"""The first convolution of the UNet in a single file of either family: its width tells the size."""


@dataclass(frozen=True)
class DeviceInfo:
    """The device a run trains on, as far as memory goes."""

    kind: str
    """"cpu", "cuda" or "mps"."""
    name: str
    total_bytes: int | None
    """Dedicated GPU memory, or the system memory for the CPU and Apple GPUs."""
    can_spill: bool
    """The driver pages into shared system memory when the GPU is full instead of failing (Windows)."""


def spill_possible() -> bool:
    """Whether the NVIDIA driver here can page GPU memory into system memory (Windows and WSL 2)."""
    return sys.platform == "win32" or "microsoft" in platform.release().lower()


def detect_device(preferred: str | None = None) -> DeviceInfo:
    """The device `engine.devices.pick_device` chooses, with its memory."""
    import psutil

    from engine.devices import pick_device

    device = pick_device(None if preferred in (None, "auto") else preferred)
    if device.type == "cuda":
        import torch

        properties = torch.cuda.get_device_properties(device)
        return DeviceInfo("cuda", properties.name, int(properties.total_memory), spill_possible())
    ram = int(psutil.virtual_memory().total)
    if device.type == "mps":
        return DeviceInfo("mps", "Apple GPU (memory shared with the system)", ram, True)
    return DeviceInfo("cpu", "CPU", ram, False)


def model_family(base_model: str) -> str:
    """The family name of ``base_model`` ("sd1", "sdxl"), read without loading it.

    What `engine.models.identify_base` reads (a folder's or a cached hub repo's UNet config, a
    single file's tensor names; a pickle file is taken as SD 1.x); for a hub id it does not know,
    the repo's UNet config alone, fetched when online. `engine.devices.UNKNOWN_FAMILY` when none can
    be read (a repo offline and not cached, a missing path) or the model is of no supported family
    (loading it then says why). Raises `PreflightError` for a file that is no readable model (a
    damaged header).
    """
    from engine.devices import UNKNOWN_FAMILY
    from engine.families import UnsupportedModel, detect_family
    from engine.models import ModelLoadError, identify_base

    try:
        found = identify_base(base_model, allow_pickle=True)  # a pickle file is only named, not opened
    except ModelLoadError as error:
        if Path(base_model).expanduser().is_file():
            raise PreflightError(str(error)) from error
        return UNKNOWN_FAMILY
    if found.family is not None:
        return found.family.name
    try:
        return detect_family(base_model, unet_config=_hub_unet_config(base_model)).name
    except (OSError, ValueError, UnsupportedModel):
        return UNKNOWN_FAMILY


def _hub_unet_config(repo: str) -> dict:
    from huggingface_hub import hf_hub_download

    from engine.assets import offline

    try:
        found = hf_hub_download(repo, "unet/config.json", local_files_only=offline())
    except Exception as error:  # offline, unknown repo, no network: the family cannot be read
        raise OSError(f"No UNet config for {repo}: {error}") from error
    return json.loads(Path(found).read_text("utf-8"))


def model_size(base_model: str, family: str | None = None) -> str:
    """Size class of ``base_model`` (of ``family``, read when not given): "tiny" and "tiny-sdxl"
    for the demo kit's models, else "sd15" (every SD 1.x has SD 1.5's shapes) or "sdxl"; "unknown"
    for a model of unknown family.

    Raises `PreflightError` for a single file whose safetensors header is damaged or too large to read.
    """
    from engine.devices import UNKNOWN_FAMILY
    from engine.models import ModelLoadError, safetensors_header

    family = family or model_family(base_model)
    if family == UNKNOWN_FAMILY:
        return UNKNOWN_FAMILY
    full, tiny = ("sdxl", "tiny-sdxl") if family == "sdxl" else ("sd15", "tiny")
    widths = SDXL_WIDTHS if family == "sdxl" else SD15_WIDTHS
    path = Path(base_model).expanduser()
    try:
        if path.is_dir():
            config = json.loads((path / "unet" / "config.json").read_text("utf-8"))
            return full if list(config["block_out_channels"]) == widths else tiny
        if path.suffix == ".safetensors" and path.is_file():
            header = safetensors_header(path)
            return full if header[SD15_FIRST_CONV]["shape"][0] == widths[0] else tiny
    except ModelLoadError as error:
        raise PreflightError(str(error)) from error
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return full


def auto_profile(device: DeviceInfo, family: str = "sd1") -> str:
    """The profile ``vram_profile="auto"`` picks for ``family`` on ``device`` (as `engine.devices.detect_profile`)."""
    from engine.devices import fitting_profile

    if device.kind == "cpu":
        return "cpu"
    if device.kind != "cuda" or device.total_bytes is None:
        return fitting_profile(8, family).name
    return fitting_profile(device.total_bytes / GB, family).name
