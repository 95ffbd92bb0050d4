"""Generated images on disk and in the manifest: output records, AUTOMATIC1111's ``parameters`` text.

Each image is ``outputs/<id>.png`` with AUTOMATIC1111's ``parameters`` text chunk (prompt,
``Negative prompt:`` line, then ``key: value`` pairs) and one entry in ``manifest["outputs"]``: the
JSON form of its `OutputRecord`. Both are written together by `add_output`, or neither.

Given the run's `engine.export.ExportNames`, the text is what AUTOMATIC1111 needs to make the image
again with the exported files: their words for the placeholder tokens, the ``<lora:NAME:te:unet>``
tag and the checkpoint's ``Model hash``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.store import Project, atomic_write_bytes, file_sha256

if TYPE_CHECKING:
    from engine.export import ExportNames

OUTPUTS = "outputs"
"""Folder of the images inside a project, and the manifest key of their records."""
PROMPT_KEY, NEGATIVE_KEY = "MagiCapture prompt", "MagiCapture negative prompt"
"""Pairs of the ``parameters`` text holding the prompts with their placeholder tokens, when the
text's own prompts carry the exported words instead."""
SAMPLER_LABELS = {"euler_a": "Euler a", "dpmpp_2m_karras": "DPM++ 2M Karras", "ddim": "DDIM"}
"""AUTOMATIC1111's names of the samplers, for the ``parameters`` text."""


@dataclass
class OutputRecord:
    """One generated (or post-processed) image; its JSON form is the manifest entry."""

    id: str
    file: str
    """Path of the PNG relative to the project folder."""
    seed: int
    params: dict[str, Any]
    run: str | None
    """Training run the image comes from."""
    identity: float | None
    """ArcFace cosine of its largest face to the mean source embedding; None without a face or recogniser."""
    created: str
    parent: str | None = None
    """Id of the output this one was post-processed from."""
    raw: str | None = None
    """File of the unprocessed image (before restoration and upscaling), for comparisons."""
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> OutputRecord:
        names = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: item for key, item in value.items() if key in names})


def new_output_id(seed: int) -> str:
    """A fresh output id: UTC time, seed and a random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{seed}-{secrets.token_hex(3)}"


def output_records(project: Project) -> list[OutputRecord]:
    """All outputs of a project, in manifest order (oldest first)."""
    return [OutputRecord.from_json(entry) for entry in project.manifest().get(OUTPUTS, [])]


def get_output(project: Project, output_id: str) -> OutputRecord | None:
    """The record of ``output_id``, or None."""
    return next((record for record in output_records(project) if record.id == output_id), None)


def sorted_outputs(project: Project) -> list[OutputRecord]:
    """All outputs of a project, best identity score first; unscored ones last, newest first among equals.

    Outputs made within one second (a post-processed copy and its original) keep their manifest
    order, later entries first.
    """
    records = output_records(project)[::-1]
    records.sort(key=lambda r: r.created, reverse=True)
    return sorted(records, key=lambda r: -math.inf if r.identity is None else r.identity, reverse=True)


# The parameters text -----------------------------------------------------------------------------


def model_name(source: str) -> str:
    """Short model name for the ``Model:`` field: the checkpoint or folder name without extension."""
    return Path(str(source).rstrip("/\\")).stem or str(source)


def model_hash(source: str) -> str | None:
    """AUTOMATIC1111's ``Model hash`` of a checkpoint file: the first 10 hex digits of its sha256.

    None for a diffusers folder or hub id: AUTOMATIC1111 hashes the one file it loads, and no file
    here is that file. Hashes are kept per file, size and modification time for the process.
    """
    path = Path(source)
    if not path.is_file():
        return None
    stat = path.stat()
    return _short_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _short_sha256(path: str, size: int, modified_ns: int) -> str:
    return file_sha256(Path(path))[:10]


def format_parameters(
    params: dict[str, Any], extras: dict[str, Any] | None = None, names: ExportNames | None = None
) -> str:
    """AUTOMATIC1111's ``parameters`` text: prompt, ``Negative prompt:`` line, then ``key: value`` pairs.

    With ``names`` (the run's exported files) the prompts carry their words and the LoRA tag.
    """
    prompt, negative = params["prompt"], params["negative_prompt"]
    if names is not None:
        prompt = names.a1111_prompt(prompt, params["unet_lora_scale"], params["text_lora_scale"])
        negative = names.with_words(negative)
    checkpoint = model_hash(params["base_model"]) if params.get("base_model") else None
    pairs = {
        "Steps": params["steps"],
        "Sampler": SAMPLER_LABELS[params["sampler"]],
        "CFG scale": params["guidance_scale"],
        "Seed": params["seed"],
        "Size": f"{params['width']}x{params['height']}",
        **({"Model hash": checkpoint} if checkpoint else {}),
        "Model": params["model"],
        "Lora UNet scale": params["unet_lora_scale"],
        "Lora text encoder scale": params["text_lora_scale"],
        **(extras or {}),
    }
    if names is not None:  # the prompts as MagiCapture reads them back (`magicapture projects repair`)
        pairs |= {PROMPT_KEY: params["prompt"], NEGATIVE_KEY: params["negative_prompt"]}
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(a1111_pairs(pairs))
    return "\n".join(lines)


def a1111_pairs(pairs: dict[str, Any]) -> str:
    """``key: value`` pairs joined by commas; a value with a comma, colon or newline is JSON-quoted (A1111's rule)."""
    items = []
    for key, value in pairs.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if any(c in text for c in ",:\n"):
            text = json.dumps(text, ensure_ascii=False)
        items.append(f"{key}: {text}")
    return ", ".join(items)


def read_parameters(path: Path) -> str | None:
    """The ``parameters`` text chunk of a PNG, or None."""
    from PIL import Image

    with Image.open(path) as picture:
        return picture.info.get("parameters")


# Saving ------------------------------------------------------------------------------------------


def encode_image(
    image: np.ndarray, suffix: str, *, parameters: str | None = None, dpi: int | None = None
) -> bytes:
    """An RGB ``uint8`` image as PNG (``parameters`` text chunk, pHYs) or JPEG (JFIF dpi, comment) bytes."""
    import io

    from PIL import Image, PngImagePlugin

    options: dict[str, Any] = {"dpi": (dpi, dpi)} if dpi else {}
    if suffix.lower() == ".png":
        info = PngImagePlugin.PngInfo()
        if parameters:
            info.add_text("parameters", parameters)
        options.update(format="PNG", pnginfo=info)
    elif suffix.lower() in (".jpg", ".jpeg"):
        options.update(format="JPEG", quality=95, subsampling=0)
        if parameters:
            options["comment"] = parameters.encode("utf-8")
    else:
        raise ValueError(f"Images are saved as .png or .jpg, not {suffix!r}.")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, **options)
    return buffer.getvalue()


def save_image(
    path: Path, image: np.ndarray, *, parameters: str | None = None, dpi: int | None = None
) -> Path:
    """Write `encode_image`'s bytes atomically; the format follows the suffix of ``path``."""
    return atomic_write_bytes(
        Path(path), encode_image(image, Path(path).suffix, parameters=parameters, dpi=dpi)
    )


def add_output(
    project: Project, image: np.ndarray, record: OutputRecord, parameters: str, dpi: int | None = None
) -> OutputRecord:
    """Save ``image`` at ``record.file`` and append ``record`` to the manifest (or neither, on failure)."""
    path = save_image(project.path(record.file), image, parameters=parameters, dpi=dpi)
    try:
        project.update(lambda manifest: manifest.setdefault(OUTPUTS, []).append(record.to_json()))
    except BaseException:
        path.unlink(missing_ok=True)  # no image without its manifest entry (e.g. the disk filled up)
        raise
    return record
