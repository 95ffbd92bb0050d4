"""Load a base model from a hub id, a diffusers folder or one checkpoint file, through its family.

`load_base` reads what the model is made of (a single file's tensor names, a diffusers
``unet/config.json``), asks `engine.families.detect_family`, loads the components through that
family and returns them with it as a `BaseModel`.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.devices import pick_device, pick_dtype
from engine.errors import UserError
from engine.families import FAMILIES, ModelFamily, UnsupportedModel, detect_family
from engine.families.sd1 import SD15_CONFIG as SD15_CONFIG  # where bench.workbench reads it

if TYPE_CHECKING:
    import torch

DEFAULT_BASES: dict[str, str] = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
"""Each family's default base model (by family name): a hub id, downloaded on first use."""
DEFAULT_BASE = DEFAULT_BASES["sd1"]
VAE_UPCAST_FAMILIES = frozenset({"sdxl"})
"""Families whose pipelines run the VAE in fp32 under fp16 when its config says ``force_upcast`` (SDXL's
VAE overflows in fp16; the fp16-fix VAE's config clears the flag). SD 1.x's ignore the flag, which
diffusers sets by default: SD 1.x's VAE is safe in fp16."""
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAMPLERS = ("euler_a", "dpmpp_2m_karras", "ddim")
ALLOW_PICKLE_ENV = "MAGICAPTURE_ALLOW_PICKLE"
"""Set to 1 by ``--allow-pickle`` or the studio's setting: the process-wide pickle opt-in."""
MAX_HEADER_BYTES = 100 * 2**20
"""Longest safetensors header read; an SD 1.x checkpoint's is well under 1 MB."""


class ModelLoadError(UserError):
    """The base model could not be loaded; the message says why and what to do."""


@dataclass
class BaseModel:
    """The parts of a base model that training and generation use, and its family."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    """DDPM training schedule (1000 steps, scaled-linear betas, epsilon prediction)."""
    source: str
    device: torch.device
    dtype: torch.dtype
    family: ModelFamily
    """What the engine asks about anything family-specific (`engine.families.ModelFamily`)."""
    tokenizer_2: Any = None
    """The second tokenizer of a two-encoder family (SDXL: OpenCLIP's padding); None for SD 1.x."""
    text_encoder_2: Any = None
    """The second text encoder of a two-encoder family (SDXL: OpenCLIP bigG); None for SD 1.x."""
    notes: tuple[str, ...] = ()
    """What the loader chose that the user should know, in sentences (SDXL in fp16: which VAE decodes)."""


@dataclass(frozen=True)
class BaseSource:
    """What a base-model source is, read without loading weights (`identify_base`)."""

    source: str
    kind: str
    """``single file``, ``pickle checkpoint``, ``diffusers folder`` or ``Hugging Face model id``."""
    family: ModelFamily | None
    """None for a hub id that is not in the Hugging Face cache: its family is read when it downloads."""
    cached: bool = True
    """False for a hub id that is downloaded on first use."""

    def describe(self) -> str:
        """One line naming the family and the kind, e.g. ``SDXL single file: portrait.safetensors``."""
        path = Path(self.source).expanduser()
        shown = path.name if self.kind in ("single file", "pickle checkpoint") else self.source
        if self.family is None:
            return f"Hugging Face model id: {shown} (downloaded on first use; its family is read then)."
        line = f"{self.family.label} {self.kind}: {shown}"
        if self.kind == "pickle checkpoint":
            return f"{line} (taken as {self.family.label}: a pickle file cannot be read without loading it)."
        return line + ("" if self.cached else " (downloaded on first use).")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor entries of a safetensors header, read no further than the header length it declares.

    Raises `ModelLoadError` on a damaged file, and on a header longer than the file or than
    `MAX_HEADER_BYTES`.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length <= 0 or 8 + length > size:
                raise ValueError("header length beyond the end of the file")
            if length > MAX_HEADER_BYTES:
                raise ModelLoadError(
                    f"{path} declares a {length / 2**20:.0f} MB header, more than the "
                    f"{MAX_HEADER_BYTES // 2**20} MB a model needs; it is damaged or not a .safetensors file."
                )
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__"]
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelLoadError(
            f"{path} is not a readable .safetensors file (corrupt or truncated: {error})."
        ) from error
    if 8 + length + max(ends, default=0) > size:
        raise ModelLoadError(f"{path} is truncated: the file ends before its last tensor. Download it again.")
    return {k: v for k, v in header.items() if k != "__metadata__"}


def identify_base(source: str | Path, *, allow_pickle: bool | None = None) -> BaseSource:
    """The kind and family of the base model ``source``, from what `load_base` reads before loading
    weights: a single file's safetensors header, a folder's or cached hub repo's ``unet/config.json``.

    Nothing is downloaded: a hub id that is not in the Hugging Face cache has its family only when
    it is a family's default (`DEFAULT_BASES`). Raises `ModelLoadError` for a source `load_base`
    would refuse: a missing path, a folder that is not a diffusers model, a damaged or unsupported
    file, a pickle file without the opt-in (``None`` reads it from ``$MAGICAPTURE_ALLOW_PICKLE``).
    """
    if allow_pickle is None:
        allow_pickle = os.environ.get(ALLOW_PICKLE_ENV, "") == "1"
    source = str(source)
    path = Path(source).expanduser()
    try:
        if path.is_file():
            kind = "pickle checkpoint" if path.suffix in PICKLE_SUFFIXES else "single file"
            return BaseSource(source, kind, _file_family(path, allow_pickle))
        if path.is_dir():
            config = path / "unet" / "config.json"
            if not config.is_file():
                raise ModelLoadError(
                    f"{path} is a folder but not a diffusers model folder (no unet/config.json)."
                )
            return BaseSource(
                source, "diffusers folder", detect_family(source, unet_config=_read_json(config))
            )
        if _looks_local(source, path):
            raise ModelLoadError(f"No model at {path}: the file or folder does not exist.")
        return _hub_source(source)
    except UnsupportedModel as error:
        raise ModelLoadError(str(error)) from error


def _cached_unet_config(repo: str) -> Path | None:
    """The hub repo's ``unet/config.json`` in the Hugging Face cache, or None when it is not there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo, "unet/config.json")
    except ValueError:  # not a valid repo id: load_base says so when it tries
        return None
    return Path(config) if isinstance(config, str) else None


def _hub_source(repo: str) -> BaseSource:
    """A hub id's family from its cached ``unet/config.json``, else from `DEFAULT_BASES`, else unknown."""
    config = _cached_unet_config(repo)
    if config is not None:
        return BaseSource(repo, "Hugging Face model id", detect_family(repo, unet_config=_read_json(config)))
    known = [name for name, default in DEFAULT_BASES.items() if default == repo]
    return BaseSource(repo, "Hugging Face model id", FAMILIES[known[0]] if known else None, cached=False)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path} is not a readable model config ({error}).") from error


def _looks_local(source: str, path: Path) -> bool:
    """Whether ``source`` names a file or folder rather than a hub id."""
    return (
        path.is_absolute()
        or source.startswith((".", "~"))
        or path.suffix in (".safetensors", *PICKLE_SUFFIXES)
    )


def load_base(
    source: str | Path = DEFAULT_BASE,
    *,
    device: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool | None = None,
    local_files_only: bool = False,
    config: str | Path | None = None,
) -> BaseModel:
    """Load the tokenizer(s), text encoder(s), VAE, UNet and DDPM schedule of a base model, with its family.

    ``source`` is a Hugging Face repo id, a local diffusers folder, or a single ``.safetensors``
    checkpoint. Pickle checkpoints (``.ckpt``/``.bin``...) are refused unless ``allow_pickle``,
    and then loaded with ``weights_only``; ``None`` reads the opt-in from ``$MAGICAPTURE_ALLOW_PICKLE``.
    A single file takes its component configs from ``config`` (a diffusers folder), by default the
    family's own (SD 1.5's files in ``assets/sd15``, SDXL's in ``assets/sdxl``). A model of a family
    that is not supported is refused by name.
    """
    if allow_pickle is None:
        allow_pickle = os.environ.get(ALLOW_PICKLE_ENV, "") == "1"
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    path = Path(str(source)).expanduser()
    looks_local = _looks_local(str(source), path)
    try:
        if path.is_file():
            family = _file_family(path, allow_pickle)
            parts = family.load_single_file(path, torch_dtype, Path(config) if config else None)
        elif path.is_dir():
            family, parts = _load_components(str(path), torch_dtype, allow_pickle, local_files_only=True)
        elif looks_local:
            raise ModelLoadError(f"No model at {path}: the file or folder does not exist.")
        else:
            family, parts = _load_hub(str(source), torch_dtype, allow_pickle, local_files_only)
    except UnsupportedModel as error:
        raise ModelLoadError(str(error)) from error
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ModelLoadError(
                f"Out of disk space while fetching {source}; free space in the Hugging Face cache."
            ) from error
        if (
            isinstance(error, FileNotFoundError)
            or "does not appear to have" in str(error)
            or "not found" in str(error).lower()
        ):
            raise ModelLoadError(f"{source} is not a diffusers model folder or repo: {error}") from error
        raise ModelLoadError(f"Could not load {source}: {error}") from error
    for name in (*family.text_encoders, "vae", "unet"):
        parts[name].to(torch_device).eval().requires_grad_(False)
    return BaseModel(**parts, source=str(source), device=torch_device, dtype=torch_dtype, family=family)


def vae_upcast(base: BaseModel) -> bool:
    """Whether ``base``'s VAE must encode and decode in fp32 although its weights are fp16, as its
    family's pipeline decodes it (`VAE_UPCAST_FAMILIES`); training encodes its latents so too."""
    import torch

    return (
        base.family.name in VAE_UPCAST_FAMILIES
        and base.vae.dtype == torch.float16
        and bool(base.vae.config.get("force_upcast", False))
    )


def load_tiny_decoder(source: str | Path, device: torch.device, dtype: torch.dtype) -> Any:
    """TAESD (`diffusers.AutoencoderTiny`) from a hub id or a diffusers folder, frozen, safetensors only.

    It decodes the base model's scaled latents directly (no division by the VAE's scaling factor)
    into images on the VAE's [-1, 1] scale, unclamped as the VAE's are.
    """
    from diffusers import AutoencoderTiny
    from diffusers.utils import logging

    from engine.assets import offline

    path = Path(str(source)).expanduser()
    local = path.is_dir()
    if not local and (path.is_absolute() or str(source).startswith((".", "~"))):
        raise ModelLoadError(f"No tiny decoder at {path}: the folder does not exist.")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # AutoencoderTiny warns about a config key it writes itself
    try:
        decoder = AutoencoderTiny.from_pretrained(
            str(path if local else source),
            torch_dtype=dtype,
            use_safetensors=True,
            local_files_only=local or offline(),
        )
    except OSError as error:
        raise ModelLoadError(
            f"Could not load the tiny decoder {source} ({error}). Set identity_decoder=vae to use the "
            "base model's VAE instead."
        ) from error
    finally:
        logging.set_verbosity(verbosity)
    return decoder.to(device).eval().requires_grad_(False)


def _load_hub(
    repo: str, dtype: torch.dtype, allow_pickle: bool, local_files_only: bool
) -> tuple[ModelFamily, dict[str, Any]]:
    """A hub repo's family and components; offline (``local_files_only`` or the offline switch) only
    from the Hugging Face cache, and a repo not there is refused without trying the network."""
    from engine.assets import offline

    local = local_files_only or offline()
    if local and _cached_unet_config(repo) is None:
        raise ModelLoadError(
            f"{repo} is not in the Hugging Face cache and downloads are off (offline); download it once "
            "while online, or give a diffusers folder or a .safetensors file."
        )
    return _load_components(repo, dtype, allow_pickle, local)


def _load_components(
    source: str, dtype: torch.dtype, allow_pickle: bool, local_files_only: bool
) -> tuple[ModelFamily, dict[str, Any]]:
    """The family of a diffusers folder or repo (from its UNet config) and its components."""
    from diffusers import UNet2DConditionModel

    unet_config = UNet2DConditionModel.load_config(
        source, subfolder="unet", local_files_only=local_files_only
    )
    family = detect_family(source, unet_config=unet_config)
    try:
        parts = family.load_components(
            source, dtype, allow_pickle=allow_pickle, local_files_only=local_files_only
        )
    except OSError as error:
        if not allow_pickle and "safetensors" in str(error).lower():
            raise ModelLoadError(
                f"{source} has no .safetensors weights. Pickle weights can run code when loaded; "
                "allow them explicitly (--allow-pickle, or the setting in the studio) if you trust the source."
            ) from error
        raise
    return family, parts


def _file_family(path: Path, allow_pickle: bool) -> ModelFamily:
    """The family of a checkpoint file: from its tensor names (safetensors), else the default (pickle)."""
    if path.suffix == ".safetensors":
        return detect_family(path.name, keys=list(safetensors_header(path)))
    if path.suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path.name}: unknown model file type; expected .safetensors (or .ckpt with --allow-pickle)."
        )
    if not allow_pickle:
        raise ModelLoadError(
            f"{path.name} is a pickle checkpoint, which can run code when loaded. Use a .safetensors "
            "file, or allow pickle explicitly (--allow-pickle, or the setting in the studio) if you "
            "trust the source; it is then loaded with weights_only."
        )
    return detect_family(path.name)


def make_pipeline(base: BaseModel, sampler: str = "euler_a") -> Any:
    """The family's pipeline (`StableDiffusionPipeline` for SD 1.x) over the base's modules with the chosen sampler.

    The samplers are the same for every family: each is built from the base's training schedule.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    config = base.noise_scheduler.config
    schedulers = {
        "euler_a": lambda: EulerAncestralDiscreteScheduler.from_config(config),
        "dpmpp_2m_karras": lambda: DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True),
        "ddim": lambda: DDIMScheduler.from_config(config, set_alpha_to_one=False, steps_offset=1),
    }
    if sampler not in schedulers:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}.")
    return base.family.pipeline(base, schedulers[sampler]())
