"""A trained artefact loaded into a base model: the placeholder embeddings into tokenizer copies and
each text encoder's table (SDXL: both), the LoRA into the UNet and the text encoders as one diffusers
adapter (fused into the weights at the scales in use), all undone afterwards; the one kept base model."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.generate.settings import GenerationError
from engine.model_cache import ModelCache
from engine.outputs import model_name

if TYPE_CHECKING:
    from engine.artefact import Artefact
    from engine.models import BaseModel

ADAPTER = "magicapture"
"""Adapter name of the project LoRA inside diffusers/peft."""
_INSTALLING = "Loading the trained weights into the base model…"


@dataclass
class _Rows:
    """A text encoder's embedding table before `install`: its size and the rows it overwrote."""

    table_size: int
    overwritten: dict[int, Any]


@dataclass
class _Installed:
    """What `install` changed in a base model, to undo it."""

    tables: dict[str, _Rows]
    """Text encoder (`BaseModel` name) -> its table before the tokens' rows went in."""
    components: tuple[str, ...]
    """The LoRA components of the base's family: the UNet and its text encoders."""
    fused: tuple[float, float] | None = None
    """UNet and text-encoder scales the LoRA is fused into the weights at; None while unfused."""


@dataclass
class _Kept:
    """The kept base model and the artefact loaded into it, if any."""

    base: BaseModel
    artefact: tuple[str, int, int] | None = None
    """Path, mtime and size of the loaded artefact file."""
    installed: _Installed | None = None
    view: BaseModel | None = None

    def release_artefact(self) -> None:
        if self.installed is not None:
            _uninstall(self.base, self.installed)
        self.artefact = self.installed = self.view = None


_BASES: ModelCache[tuple[str, str, str], _Kept] = ModelCache(capacity=1)
"""The one kept base model, by source, device and dtype."""


def _artefact_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _tokenizer_of(encoder: str) -> str:
    """The `BaseModel` tokenizer that feeds a text encoder (``text_encoder_2`` -> ``tokenizer_2``)."""
    return encoder.replace("text_encoder", "tokenizer")


def install(base: BaseModel, artefact: Artefact) -> tuple[BaseModel, _Installed]:
    """Load the artefact into ``base``: returns a view whose tokenizer copies hold the tokens."""
    from engine.models import make_pipeline

    family = base.family
    if artefact.family.name != family.name:
        raise GenerationError(
            f"{artefact.path} was trained on an {artefact.family.label} model, but {base.source} is "
            f"{family.label}; use the base model it was trained on."
        )
    encoder_rows = artefact.encoder_embeddings()
    if missing := artefact.missing_encoders():
        raise GenerationError(
            f"{artefact.path} has no token embeddings for {family.label}'s {', '.join(missing)}; it may be "
            "damaged or from an older version. Train the project again."
        )
    tokenizers, tables = {}, {}
    try:
        for encoder in family.text_encoders:
            tokenizer = copy.deepcopy(getattr(base, _tokenizer_of(encoder)))
            tokenizers[_tokenizer_of(encoder)] = tokenizer
            tables[encoder] = _install_rows(base, encoder, tokenizer, encoder_rows[encoder])
        installed = _Installed(tables, ("unet", *family.text_encoders))
        view = dataclasses.replace(base, **tokenizers)
        lora = artefact.diffusers_state_dict()
        if lora:
            with _quiet("transformers.integrations.peft"):
                make_pipeline(view).load_lora_weights(lora, adapter_name=ADAPTER)
    except BaseException:
        _uninstall(base, _Installed(tables, ("unet", *family.text_encoders)))
        raise
    return view, installed


def _install_rows(base: BaseModel, encoder: str, tokenizer: Any, rows: dict[str, Any]) -> _Rows:
    """Add the tokens to ``tokenizer`` and their rows to the text encoder ``encoder`` of ``base``."""
    import torch

    text_encoder = getattr(base, encoder)
    embeddings = text_encoder.get_input_embeddings()
    tokens = list(rows)
    stacked = torch.stack([rows[token] for token in tokens])
    if stacked.shape[1] != embeddings.embedding_dim:
        raise GenerationError(
            f"The artefact was trained on a base with {stacked.shape[1]}-wide token embeddings in its "
            f"{encoder}, but {base.source} has {embeddings.embedding_dim}; use the base model it was trained on."
        )
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    table_size = embeddings.num_embeddings
    if len(tokenizer) > table_size:
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    saved = _Rows(table_size, {i: table[i].detach().clone() for i in ids if i < table_size})
    with torch.no_grad():
        table[ids] = stacked.to(table)
    return saved


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger below errors (transformers reports the frozen base weights as "missing" from a LoRA)."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _uninstall(base: BaseModel, installed: _Installed) -> None:
    """Undo `install`: remove the LoRA layers, the added token rows and restore overwritten rows."""
    import torch

    from engine.models import make_pipeline

    pipe = make_pipeline(base)
    if installed.fused is not None:
        pipe.unfuse_lora(components=list(installed.components))
        installed.fused = None
    adapters = {name for names in pipe.get_list_adapters().values() for name in names}
    if adapters == {ADAPTER}:
        pipe.unload_lora_weights()  # removes the LoRA layers themselves
    elif ADAPTER in adapters:
        pipe.delete_adapters(ADAPTER)  # the base holds adapters of its own: keep those
    for encoder, saved in installed.tables.items():
        text_encoder = getattr(base, encoder)
        if text_encoder.get_input_embeddings().num_embeddings != saved.table_size:
            text_encoder.resize_token_embeddings(saved.table_size, mean_resizing=False)
        table = text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            for index, row in saved.overwritten.items():
                table[index] = row


def _kept(source: str, on_status: Callable[[str], None] | None = None) -> _Kept:
    """The kept base model loaded from ``source`` (loaded on first use, said to ``on_status`` with the
    loader's notes); call with ``_BASES.lock`` held."""
    from engine.devices import pick_device, pick_dtype
    from engine.models import load_base

    device = pick_device()
    key = (str(source), str(device), str(pick_dtype(device)))
    say = on_status or (lambda message: None)
    loading = _BASES.peek(key) is None
    if loading:
        say(f"Loading the base model {model_name(source)}…")
    kept = _BASES.get(key, lambda: _Kept(load_base(source)))
    for note in kept.base.notes if loading else ():
        say(note)  # what the loader chose, e.g. SDXL's VAE under fp16
    return kept


@contextlib.contextmanager
def plain_base(source: str) -> Iterator[BaseModel]:
    """The kept base model loaded from ``source``, with no artefact in it while the context is open."""
    with _BASES.lock:
        kept = _kept(source)
        kept.release_artefact()
        yield kept.base


def fuse(pipe: Any, installed: _Installed, unet_scale: float, text_scale: float) -> None:
    """Fuse the project LoRA into the weights at these scales, so that sampling costs what the bare model does.

    The fusion stays while the scales stay (the same seed then gives the same image again); other
    scales unfuse it first.
    """
    scales = (unet_scale, text_scale)
    if not pipe.get_list_adapters() or installed.fused == scales:
        return
    components = list(installed.components)
    if installed.fused is not None:
        pipe.unfuse_lora(components=components)
    weights = {name: unet_scale if name == "unet" else text_scale for name in components}
    pipe.set_adapters(ADAPTER, adapter_weights=weights)
    pipe.fuse_lora(components=components, adapter_names=[ADAPTER])
    installed.fused = scales


@contextlib.contextmanager
def loaded(
    artefact: Artefact, base: BaseModel | None = None, on_status: Callable[[str], None] | None = None
) -> Iterator[tuple[BaseModel, _Installed]]:
    """The base model with ``artefact`` loaded, as a `BaseModel` view whose tokenizer knows the tokens.

    Without ``base``, the artefact's own base model is loaded and kept for later calls; a given
    ``base`` is changed only while the context is open. ``on_status`` hears of each slow stage
    (loading the base model, loading the trained weights into it) as it starts.
    """
    say = on_status or (lambda message: None)
    if base is not None:
        say(_INSTALLING)
        view, installed = install(base, artefact)
        try:
            yield view, installed
        finally:
            _uninstall(base, installed)
        return
    source = artefact.metadata.get("base_model")
    if not source:
        raise GenerationError(
            f"{artefact.path} does not record its base model; pass the base model explicitly."
        )
    key = _artefact_key(Path(artefact.path))
    with _BASES.lock:
        kept = _kept(str(source), say)
        if kept.artefact != key:
            kept.release_artefact()
            say(_INSTALLING)
            kept.view, kept.installed = install(kept.base, artefact)
            kept.artefact = key
        yield kept.view, kept.installed
