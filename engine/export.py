"""Exports for other tools: the LoRA (diffusers or kohya/AUTOMATIC1111), the embeddings, a zip of outputs.

Files go under ``<project>/exports/``, the LoRA and embeddings of a run in ``exports/<run>/``.

- diffusers: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` and ``text_encoder.text_model.<module>...``
  in one ``.safetensors`` that ``pipe.load_lora_weights`` reads.
- kohya: the same weights under the names AUTOMATIC1111, ComfyUI and kohya's scripts read
  (``lora_unet_<module>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha`` and ``lora_te_<module>...``).
- embeddings: one AUTOMATIC1111 textual-inversion file per placeholder token (``emb_params``,
  ``[1, dim]``); its file name (e.g. ``alice-sks``) is the word to type in a prompt.

The LoRA scale alpha/rank of the artefact is folded into the ``lora_B`` (up) weights and every
alpha written equals the rank, so each loader, whatever it assumes about alpha, applies the trained
update.
"""

from __future__ import annotations

import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import UserError
from engine.store import Project, atomic_path, safe_name

if TYPE_CHECKING:
    import torch

    from engine.artefact import Artefact
    from engine.families import ModelFamily

EXPORTS = "exports"
FORMATS = ("a1111", "diffusers")
CONVERTER_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
"""The prefixes diffusers' kohya converter writes for each part (its text-encoder names are SDXL's)."""


class ExportError(UserError):
    """An export cannot be made; the message says why."""


def kohya_state_dict(
    diffusers_state: dict[str, torch.Tensor], family: ModelFamily
) -> dict[str, torch.Tensor]:
    """diffusers/peft LoRA names -> the family's kohya names (SD 1.x: ``lora_unet_...``, ``lora_te_...``).

    Every ``.alpha`` equals the rank.
    """
    import torch
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    state = {}
    for key, value in convert_state_dict_to_kohya(diffusers_state).items():
        part, prefix = next((p, s) for p, s in CONVERTER_PREFIXES.items() if key.startswith(s))
        key = family.kohya_prefixes[part] + key[len(prefix) :]
        state[key] = value.to(torch.float32) if key.endswith(".alpha") else value
    return state


def _run_folder(project: Project, run: str | None) -> tuple[Artefact, str, Path]:
    from engine.artefact import load_artefact
    from engine.runs import resolve_artefact

    path, run_id = resolve_artefact(project, run)
    artefact = load_artefact(path)
    name = safe_name(run_id or path.stem)
    return artefact, name, project.path(EXPORTS, name)


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def export_lora(project: Project, run: str | None = None, format: str = "a1111") -> Path:
    """Write the run's LoRA (the latest finished run by default) for AUTOMATIC1111/ComfyUI or diffusers."""
    from engine.outputs import model_name

    if format not in FORMATS:
        raise ExportError(f"Unknown LoRA format {format!r}; choose one of {', '.join(FORMATS)}.")
    artefact, run_name, folder = _run_folder(project, run)
    state = artefact.diffusers_state_dict()
    if not state:
        raise ExportError(
            f"Run {run_name} has no LoRA (it trained the token embeddings only); export its embeddings instead."
        )
    project_name = project.root.name
    base = str(artefact.metadata.get("base_model", ""))
    metadata = {
        "format": "pt",
        "magicapture": json.dumps(
            {"run": run_name, "base_model": base, "tokens": artefact.metadata.get("tokens")}
        ),
    }
    if format == "diffusers":
        return _save_safetensors(folder / f"{project_name}-lora-diffusers.safetensors", state, metadata)
    ranks = sorted({int(v.shape[0]) for k, v in state.items() if ".lora_A." in k})
    metadata.update(
        ss_network_module="networks.lora",
        ss_network_dim=str(ranks[-1]),
        ss_network_alpha=str(ranks[-1]),
        ss_base_model_version=artefact.family.kohya_base_version,
        ss_sd_model_name=model_name(base),
        ss_output_name=f"{project_name}-lora",
    )
    kohya = kohya_state_dict(state, artefact.family)
    return _save_safetensors(folder / f"{project_name}-lora.safetensors", kohya, metadata)


def export_embeddings(project: Project, run: str | None = None) -> list[Path]:
    """Write each placeholder embedding as an AUTOMATIC1111 textual inversion (loads in diffusers too).

    The file name is the prompt word in AUTOMATIC1111: ``<project>-<token without brackets>``.
    """
    artefact, _, folder = _run_folder(project, run)
    tokens = artefact.placeholder_tokens()
    paths = []
    for role in ("identity", "style"):
        token = tokens[role]
        word = f"{project.root.name}-{safe_name(token.strip('<>'))}"
        row = artefact.embeddings[token].reshape(1, -1)
        metadata = {"format": "pt", "magicapture_token": token, "magicapture_role": role}
        key = artefact.family.embedding_keys["text_encoder"]
        paths.append(_save_safetensors(folder / f"{word}.safetensors", {key: row}, metadata))
    return paths


def export_outputs_zip(project: Project, output_ids: list[str], *, image_format: str = "png") -> Path:
    """Zip the chosen outputs (PNG with their parameters chunk, or JPEG) with one ``params.json``."""
    import numpy as np
    from PIL import Image

    from engine.outputs import encode_image, output_records

    if image_format not in ("png", "jpeg"):
        raise ExportError(f"Images are zipped as png or jpeg, not {image_format!r}.")
    records = {record.id: record for record in output_records(project)}
    missing = [i for i in output_ids if i not in records or not project.path(records[i].file).is_file()]
    if missing:
        raise ExportError(
            f"Project {project.name!r} has no output image(s) {', '.join(missing)}; refresh the gallery."
        )
    if not output_ids:
        raise ExportError("Choose at least one image to zip.")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target = project.path(EXPORTS, f"{project.root.name}-portraits-{stamp}.zip")
    listing: list[dict[str, Any]] = []
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for output_id in dict.fromkeys(output_ids):
            record = records[output_id]
            source = project.path(record.file)
            if image_format == "png":
                name = f"{output_id}.png"
                archive.write(source, name, compress_type=zipfile.ZIP_STORED)
            else:
                name = f"{output_id}.jpg"
                with Image.open(source) as picture:
                    dpi = picture.info.get("dpi")
                    pixels = picture.convert("RGB")
                    parameters = picture.info.get("parameters")
                data = encode_image(
                    np.asarray(pixels), ".jpg", parameters=parameters, dpi=round(dpi[0]) if dpi else None
                )
                archive.writestr(name, data, compress_type=zipfile.ZIP_STORED)
            listing.append({"file": name, **record.to_json()})
        archive.writestr("params.json", json.dumps(listing, indent=2), compress_type=zipfile.ZIP_DEFLATED)
    return target
