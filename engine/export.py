"""Exports for other tools: the LoRA (diffusers or kohya/AUTOMATIC1111), the embeddings, a zip of outputs.

Files go under ``<project>/exports/``, the LoRA and embeddings of a run in ``exports/<run>/``.

- diffusers: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` and ``text_encoder.text_model.<module>...``
  in one ``.safetensors`` that ``pipe.load_lora_weights`` reads.
- kohya: the same weights under the names AUTOMATIC1111, ComfyUI and kohya's scripts read
  (``lora_unet_<module>.lora_down.weight`` / ``lora_up.weight`` / ``.alpha`` and ``lora_te_<module>...``).
- embeddings: one AUTOMATIC1111 textual-inversion file per placeholder token, its file name (e.g.
  ``alice-sks``) the word to type in a prompt. Each text encoder's row is a ``[1, dim]`` tensor under
  the family's key: SD 1.x ``emb_params``; SDXL ``clip_l`` (768) and ``clip_g`` (1280) in one file,
  the layout AUTOMATIC1111 and ComfyUI read for SDXL embeddings.
- ``README.txt`` beside them: how to use the files present in diffusers, AUTOMATIC1111 and ComfyUI,
  with their words and the recommended strengths; rewritten by each export.

Every name comes from `export_names`, which the ``parameters`` text of generated images uses too, so
a pasted prompt names the exported files.

The LoRA scale alpha/rank of the artefact is folded into the ``lora_B`` (up) weights and every
alpha written equals the rank, so each loader, whatever it assumes about alpha, applies the trained
update.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import UserError
from engine.store import Project, atomic_path, atomic_write_text, safe_name

if TYPE_CHECKING:
    import torch

    from engine.artefact import Artefact
    from engine.families import ModelFamily

EXPORTS = "exports"
FORMATS = ("a1111", "diffusers")
USAGE_NOTE = "README.txt"
CONVERTER_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
"""The prefixes diffusers' kohya converter writes for each part (its text-encoder names are SDXL's)."""


class ExportError(UserError):
    """An export cannot be made; the message says why."""


@dataclass(frozen=True)
class ExportNames:
    """What a run's exports are called in other tools: each file's name without ``.safetensors``."""

    project: str
    """The project's folder name, the start of every exported file name."""
    tokens: dict[str, str]
    """Role (``identity``, ``style``) -> placeholder token."""
    has_lora: bool = True
    """False for a run that trained the embeddings only (no LoRA to export or name)."""

    @property
    def lora(self) -> str:
        """The AUTOMATIC1111/ComfyUI LoRA: NAME in ``<lora:NAME:...>`` (also its ``ss_output_name``)."""
        return f"{self.project}-lora"

    @property
    def diffusers_lora(self) -> str:
        return f"{self.project}-lora-diffusers"

    def word(self, role: str) -> str:
        """The embedding of ``role``: AUTOMATIC1111's prompt word is its file name."""
        return f"{self.project}-{safe_name(self.tokens[role].strip('<>'))}"

    def with_words(self, text: str, prefix: str = "") -> str:
        """``text`` with each placeholder token replaced by ``prefix`` + its exported word."""
        for role, token in self.tokens.items():
            text = text.replace(token, prefix + self.word(role))
        return text

    def lora_tag(self, unet_scale: float, text_scale: float) -> str:
        """AUTOMATIC1111's ``<lora:NAME:te:unet>`` (text-encoder multiplier first); empty without a LoRA."""
        return f"<lora:{self.lora}:{text_scale:g}:{unet_scale:g}>" if self.has_lora else ""

    def a1111_prompt(self, prompt: str, unet_scale: float, text_scale: float) -> str:
        """``prompt`` as AUTOMATIC1111 reads it with these exports: the words and the LoRA tag."""
        return " ".join(filter(None, (self.with_words(prompt), self.lora_tag(unet_scale, text_scale))))


def export_names(project: Project, artefact: Artefact) -> ExportNames:
    """The names `export_lora` and `export_embeddings` give a run's files in ``project``."""
    return ExportNames(
        project.root.name, artefact.placeholder_tokens(), bool(artefact.unet_lora or artefact.text_lora)
    )


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
    names = export_names(project, artefact)
    base = str(artefact.metadata.get("base_model", ""))
    unet_scale, text_scale = recommended_scales()
    words = ", ".join(f"{names.word(role)} ({role})" for role in names.tokens)
    metadata = {
        "format": "pt",
        "magicapture": json.dumps(
            {"run": run_name, "base_model": base, "tokens": artefact.metadata.get("tokens")}
        ),
        "magicapture.recommended_unet_scale": f"{unet_scale:g}",
        "magicapture.recommended_text_encoder_scale": f"{text_scale:g}",
        "modelspec.usage_hint": (
            f"UNet strength {unet_scale:g}, text encoder strength {text_scale:g}; prompt words {words}: "
            f"the embeddings exported beside this file. Base model: {model_name(base)}."
        ),
    }
    if format == "diffusers":
        path = _save_safetensors(folder / f"{names.diffusers_lora}.safetensors", state, metadata)
    else:
        ranks = sorted({int(v.shape[0]) for k, v in state.items() if ".lora_A." in k})
        metadata.update(
            ss_network_module="networks.lora",
            ss_network_dim=str(ranks[-1]),
            ss_network_alpha=str(ranks[-1]),
            ss_base_model_version=artefact.family.kohya_base_version,
            ss_sd_model_name=model_name(base),
            ss_output_name=names.lora,
        )
        kohya = kohya_state_dict(state, artefact.family)
        path = _save_safetensors(folder / f"{names.lora}.safetensors", kohya, metadata)
    _write_usage_note(folder, names, artefact)
    return path


def export_embeddings(project: Project, run: str | None = None) -> list[Path]:
    """Write each placeholder embedding as an AUTOMATIC1111 textual inversion (loads in diffusers too).

    The file name is the prompt word in AUTOMATIC1111: ``<project>-<token without brackets>``.
    """
    artefact, run_name, folder = _run_folder(project, run)
    names = export_names(project, artefact)
    family = artefact.family
    encoder_rows = artefact.encoder_embeddings()
    if missing := artefact.missing_encoders():
        raise ExportError(
            f"Run {run_name} has no token embeddings for {family.label}'s {', '.join(missing)}; its "
            "artefact may be damaged or from an older version. Train the project again."
        )
    paths = []
    for role in ("identity", "style"):
        token = names.tokens[role]
        tensors = {
            family.embedding_keys[name]: encoder_rows[name][token].reshape(1, -1)
            for name in family.text_encoders
        }
        metadata = {"format": "pt", "magicapture_token": token, "magicapture_role": role}
        paths.append(_save_safetensors(folder / f"{names.word(role)}.safetensors", tensors, metadata))
    _write_usage_note(folder, names, artefact)
    return paths


def recommended_scales() -> tuple[float, float]:
    """The UNet and text-encoder LoRA scales generation uses by default (`GenerationSettings`)."""
    from engine.generate.settings import GenerationSettings

    defaults = GenerationSettings()
    return defaults.unet_lora_scale, defaults.text_lora_scale


def usage_note(names: ExportNames, files: set[str], *, base_model: str, family: ModelFamily) -> str:
    """How to use the exported ``files`` (names with ``.safetensors``) in AUTOMATIC1111, ComfyUI and diffusers."""
    from engine.generate.prompts import compose_prompt
    from engine.generate.settings import DEFAULT_NEGATIVE_PROMPT
    from engine.outputs import model_name

    unet, text = recommended_scales()
    kohya, diffusers = f"{names.lora}.safetensors", f"{names.diffusers_lora}.safetensors"
    embeddings = {role: f"{names.word(role)}.safetensors" for role in names.tokens}
    kept = {role: file for role, file in embeddings.items() if file in files}
    prompt = compose_prompt(names.tokens)
    tag = names.lora_tag(unet, text) if kohya in files else ""
    described = {kohya: "the LoRA for AUTOMATIC1111 and ComfyUI", diffusers: "the LoRA for diffusers"}
    described |= {file: f"the {role} embedding: the word {names.word(role)}" for role, file in kept.items()}
    lines = [
        f"Exports of project {names.project}, trained on {model_name(base_model) or 'its base model'} "
        f"({family.label}): use them with that base model.",
        f"Recommended LoRA strengths: UNet {unet:g}, text encoder {text:g}.",
        "",
        "Files",
        *(f"  {file}  {what}" for file, what in described.items() if file in files),
    ]
    if len(kept) < len(embeddings):
        lines.append("  (export the embeddings too: the prompts below need their words)")
    if tag or kept:
        lines += ["", "AUTOMATIC1111 (and Forge)"]
        if tag:
            lines.append(
                f"  Put {kohya} in models/Lora; the tag's numbers are the text-encoder then the UNet strength."
            )
        if kept:
            lines.append("  Put the embeddings in embeddings/: a file's name is the word that calls it.")
        lines += [
            f"  Prompt: {' '.join(filter(None, (names.with_words(prompt), tag)))}",
            f"  Negative prompt: {DEFAULT_NEGATIVE_PROMPT}",
            "",
            "ComfyUI",
        ]
        if tag:
            lines.append(
                f"  Put {kohya} in models/loras. LoraLoader node: lora_name {kohya}, "
                f"strength_model {unet:g}, strength_clip {text:g}"
            )
        if kept:
            lines.append("  Put the embeddings in models/embeddings: embedding:NAME in a prompt calls one.")
        lines.append(f"  CLIP Text Encode prompt: {names.with_words(prompt, 'embedding:')}")
    if diffusers in files or kept:
        lines += ["", "diffusers (pipe: a pipeline of the base model, run from this folder)"]
        if diffusers in files:
            adapter = re.sub(r"\W", "_", names.project)  # peft refuses dots in adapter names
            lines += [
                f'  pipe.load_lora_weights("{diffusers}", adapter_name="{adapter}")',
                f'  pipe.set_adapters("{adapter}", adapter_weights={{"unet": {unet:g}, "text_encoder": {text:g}}})',
            ]
        lines += _textual_inversion_lines(names, kept, family)
        lines.append(f'  image = pipe("{names.with_words(prompt)}").images[0]')
        if len(family.text_encoders) == 1:
            lines.append("  Without token=..., load_textual_inversion calls an embedding emb_params.")
    return "\n".join(lines) + "\n"


def _textual_inversion_lines(names: ExportNames, files: dict[str, str], family: ModelFamily) -> list[str]:
    """diffusers' calls loading each embedding file (role -> file): whole for one text encoder, one
    tensor per encoder for a family with two (each into its encoder and tokenizer)."""
    if len(family.text_encoders) == 1:
        return [
            f'  pipe.load_textual_inversion("{file}", token="{names.word(role)}")'
            for role, file in files.items()
        ]
    lines = ["  from safetensors.torch import load_file"] if files else []
    for role, file in files.items():
        lines.append(f'  state = load_file("{file}")')
        for encoder in family.text_encoders:
            tokenizer = encoder.replace("text_encoder", "tokenizer")
            lines.append(
                f'  pipe.load_textual_inversion(state["{family.embedding_keys[encoder]}"], '
                f'token="{names.word(role)}", text_encoder=pipe.{encoder}, tokenizer=pipe.{tokenizer})'
            )
    return lines


def _write_usage_note(folder: Path, names: ExportNames, artefact: Artefact) -> Path:
    files = {path.name for path in folder.glob("*.safetensors")}
    base = str(artefact.metadata.get("base_model", ""))
    note = usage_note(names, files, base_model=base, family=artefact.family)
    return atomic_write_text(folder / USAGE_NOTE, note)


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
