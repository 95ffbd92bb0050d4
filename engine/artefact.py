"""The trained artefact: one ``.safetensors`` file with the LoRA, the two embeddings and metadata.

Keys follow diffusers' LoRA format (what ``StableDiffusionLoraLoaderMixin.save_lora_weights`` writes
for peft adapters): ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` and ``text_encoder.<module>...``,
plus ``embeddings.<token>`` for the placeholder tokens. An SDXL artefact also holds the second
text encoder's (OpenCLIP bigG) LoRA as ``text_encoder_2.<module>...`` and its rows as
``embeddings_2.<token>``. The file's metadata holds ``magicapture``
(JSON: base model, tokens, preset...) and diffusers' ``lora_adapter_metadata`` (the LoRA ranks and
alphas). diffusers' ``load_lora_weights`` refuses a file with non-LoRA keys, so the LoRA is handed
to it as `Artefact.diffusers_state_dict` (the same weights, alpha/rank folded in); `engine.generate`
loads it that way and `engine.export` writes it for other tools.

`save_artefact` records the file's sha256 beside it (``<file>.sha256``) and `load_artefact` checks
it, so a damaged artefact is refused before it is used; an artefact without one (written before
checksums were recorded) loads unchecked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import UserError
from engine.store import atomic_path, atomic_write_text, file_sha256

if TYPE_CHECKING:
    import torch

    from engine.families import ModelFamily

METADATA_KEY = "magicapture"
LORA_METADATA_KEY = "lora_adapter_metadata"
"""diffusers' key for the LoraConfig arguments (rank, alpha, targets) of each model."""
PREFIXES = {
    "unet": "unet.",
    "text_encoder": "text_encoder.",
    "text_encoder_2": "text_encoder_2.",
    "embeddings": "embeddings.",
    "embeddings_2": "embeddings_2.",
}
_FIELDS = {
    "unet": "unet_lora",
    "text_encoder": "text_lora",
    "text_encoder_2": "text_lora_2",
    "embeddings": "embeddings",
    "embeddings_2": "embeddings_2",
}
"""The `Artefact` field of each key prefix."""
CHECKSUM_SUFFIX = ".sha256"
TEXT_MODEL = "text_model."
"""Prefix of the text encoder's modules in diffusers' naming (peft keys may lack it)."""


class ArtefactError(UserError):
    """A file is not a readable MagiCapture artefact; the message names it."""


@dataclass
class Artefact:
    """A loaded artefact; LoRA keys are given without their ``unet.``/``text_encoder.`` prefix."""

    unet_lora: dict[str, torch.Tensor]
    text_lora: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor]
    """Token -> embedding row ``[hidden]`` of the (first) text encoder."""
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    text_lora_2: dict[str, torch.Tensor] = field(default_factory=dict)
    """The second text encoder's LoRA (SDXL's bigG); empty for SD 1.x."""
    embeddings_2: dict[str, torch.Tensor] = field(default_factory=dict)
    """Token -> row of the second text encoder (SDXL's bigG); empty for SD 1.x."""

    def encoder_loras(self) -> dict[str, dict[str, torch.Tensor]]:
        """Text encoder (`BaseModel` name) -> its LoRA, for the encoders that have one."""
        loras = {"text_encoder": self.text_lora, "text_encoder_2": self.text_lora_2}
        return {name: lora for name, lora in loras.items() if lora}

    def encoder_embeddings(self) -> dict[str, dict[str, torch.Tensor]]:
        """Text encoder (`BaseModel` name) -> token -> row: the first, and the second when it has rows."""
        rows = {"text_encoder": self.embeddings}
        return rows | ({"text_encoder_2": self.embeddings_2} if self.embeddings_2 else {})

    def missing_encoders(self) -> list[str]:
        """The family's text encoders that have no token rows here (a damaged or older file)."""
        rows = self.encoder_embeddings()
        return [name for name in self.family.text_encoders if name not in rows]

    @property
    def family(self) -> ModelFamily:
        """The model family it was trained on (SD 1.x for artefacts written before families)."""
        from engine.families import DEFAULT_FAMILY, UnsupportedModel, family_named

        try:
            return family_named(str(self.metadata.get("family", DEFAULT_FAMILY.name)))
        except UnsupportedModel as error:
            raise ArtefactError(f"{self.path}: {error}") from error

    def diffusers_state_dict(self) -> dict[str, torch.Tensor]:
        """The LoRA in diffusers' naming (``unet.``, ``text_encoder.``, SDXL's ``text_encoder_2.``),
        alpha/rank folded into ``lora_B`` (what any loader applies as is)."""
        state = {}
        for part, weights in (("unet", self.unet_lora), *self.encoder_loras().items()):
            scale = self._lora_scale(part, weights)
            for key, value in weights.items():
                name = key if part == "unet" or key.startswith(TEXT_MODEL) else TEXT_MODEL + key
                state[f"{part}.{name}"] = (value * scale if ".lora_B." in key else value).contiguous()
        return state

    def _lora_scale(self, part: str, weights: dict[str, torch.Tensor]) -> float:
        config = self.metadata.get("lora", {}).get(part) or {}
        ranks = {value.shape[0] for key, value in weights.items() if ".lora_A." in key}
        rank = config.get("r", next(iter(ranks), 1))
        return float(config.get("lora_alpha", rank)) / float(rank)

    def lora_metadata(self) -> dict[str, Any]:
        """diffusers' adapter metadata: ``<model>.<LoraConfig argument>`` -> value."""
        return {
            f"{name}.{key}": value
            for name, config in self.metadata.get("lora", {}).items()
            for key, value in config.items()
        }

    def placeholder_tokens(self) -> dict[str, str]:
        """``{"identity": token, "style": token}``, checked against the embeddings."""
        tokens = self.metadata.get("tokens") or {}
        if set(tokens) != {"identity", "style"} or set(tokens.values()) != set(self.embeddings):
            raise ArtefactError(
                f"{self.path} does not name its identity and style tokens consistently with its "
                "embeddings; it may come from another app or be damaged."
            )
        return dict(tokens)


def save_artefact(
    path: Path,
    unet_lora: dict[str, torch.Tensor],
    text_lora: dict[str, torch.Tensor],
    embeddings: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    *,
    text_lora_2: dict[str, torch.Tensor] | None = None,
    embeddings_2: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the artefact atomically; ``text_lora_2`` and ``embeddings_2``: SDXL's second text encoder.

    ``metadata["lora"]`` may map ``"unet"`` / ``"text_encoder"`` / ``"text_encoder_2"`` to their
    LoraConfig arguments (``r``, ``lora_alpha``, ``target_modules``...); they are stored where
    diffusers reads them.
    """
    from safetensors.torch import save_file

    artefact = Artefact(
        unet_lora, text_lora, embeddings, metadata, None, text_lora_2 or {}, embeddings_2 or {}
    )
    tensors = {}
    for name, prefix in PREFIXES.items():
        for key, value in getattr(artefact, _FIELDS[name]).items():
            tensors[prefix + key] = value.detach().to("cpu").contiguous()
    header = {"format": "pt", METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str)}
    adapters = artefact.lora_metadata()
    if adapters:
        header[LORA_METADATA_KEY] = json.dumps(adapters, sort_keys=True)
    path, sidecar = Path(path), checksum_path(path)
    # Until the new checksum is written the file is unchecked, never checked against the old one.
    sidecar.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
        digest = file_sha256(tmp)
    atomic_write_text(sidecar, f"{digest}  {path.name}\n")
    return path


def checksum_path(path: Path) -> Path:
    """Where the sha256 of the artefact ``path`` is recorded (``sha256sum`` format)."""
    return Path(path).with_name(Path(path).name + CHECKSUM_SUFFIX)


def verify_artefact(path: Path) -> None:
    """Raise `ArtefactError` if ``path`` does not match its recorded sha256 (none recorded: nothing to check)."""
    try:
        recorded = checksum_path(path).read_text("utf-8", errors="replace").split()[:1]
    except FileNotFoundError:
        return
    if recorded != [file_sha256(path)]:
        raise ArtefactError(
            f"{path} is damaged: it no longer matches the checksum recorded when it was written. Choose "
            "one of the run's preview checkpoints as its artefact, or train the project again."
        )


def load_artefact(path: Path) -> Artefact:
    """Read an artefact written by `save_artefact`, after checking its recorded sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    path = Path(path)
    parts: dict[str, dict[str, Any]] = {name: {} for name in PREFIXES}
    try:
        verify_artefact(path)
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                name = next((n for n, p in PREFIXES.items() if key.startswith(p)), None)
                if name is None:
                    raise ArtefactError(
                        f"{path.name} has an unexpected tensor {key!r}; it is not a MagiCapture artefact."
                    )
                parts[name][key[len(PREFIXES[name]) :]] = handle.get_tensor(key)
    except FileNotFoundError as error:
        raise ArtefactError(f"There is no artefact at {path}.") from error
    except (SafetensorError, OSError) as error:
        raise ArtefactError(f"{path} is not a readable .safetensors file ({error}).") from error
    if METADATA_KEY not in header:
        raise ArtefactError(f"{path.name} has no MagiCapture metadata; it is not an artefact of this app.")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ArtefactError(f"The metadata of {path.name} is damaged ({error}).") from error
    return Artefact(
        parts["unet"],
        parts["text_encoder"],
        parts["embeddings"],
        metadata,
        path,
        parts["text_encoder_2"],
        parts["embeddings_2"],
    )


def artefact_family(path: Path) -> ModelFamily:
    """The model family an artefact was trained on, from its header's metadata alone (no tensors
    read, no torch imported: the studio asks it when a run is chosen)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            header = handle.metadata() or {}
        metadata = json.loads(header.get(METADATA_KEY, "{}"))
    except FileNotFoundError as error:
        raise ArtefactError(f"There is no artefact at {path}.") from error
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise ArtefactError(f"{path} is not a readable artefact ({error}).") from error
    return Artefact({}, {}, {}, metadata, Path(path)).family
