"""The device a run trains on (its memory, whether it spills) and the size class of the base model."""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.preflight.table import GB, PreflightError

SD15_WIDTHS = [320, 640, 1280, 1280]
SD15_FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"


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


def model_size(base_model: str) -> str:
    """Size class of ``base_model``: "tiny" for the demo kit's model, else "sd15" (every SD 1.x has SD 1.5's shapes).

    Raises `PreflightError` for a single file whose safetensors header is damaged or too large to read.
    """
    from engine.models import ModelLoadError, safetensors_header

    path = Path(base_model).expanduser()
    try:
        if path.is_dir():
            config = json.loads((path / "unet" / "config.json").read_text("utf-8"))
            return "sd15" if list(config["block_out_channels"]) == SD15_WIDTHS else "tiny"
        if path.suffix == ".safetensors" and path.is_file():
            header = safetensors_header(path)
            return "sd15" if header[SD15_FIRST_CONV]["shape"][0] == SD15_WIDTHS[0] else "tiny"
    except ModelLoadError as error:
        raise PreflightError(str(error)) from error
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "sd15"


def auto_profile(device: DeviceInfo) -> str:
    """The profile ``vram_profile="auto"`` picks on ``device`` (as `engine.devices.detect_profile`)."""
    from engine.devices import PROFILES

    if device.kind == "cpu":
        return "cpu"
    if device.kind != "cuda" or device.total_bytes is None:
        return "8gb"
    fitting = [p for p in PROFILES.values() if p.vram_gb <= device.total_bytes / GB + 0.5]
    return max(fitting, key=lambda p: p.vram_gb).name if fitting else "6gb"
