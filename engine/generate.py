"""Sampling portraits from a trained artefact.

`generate` loads the artefact of a training run (`engine.runs.resolve_artefact`) onto the base
model it was trained on: the two placeholder embeddings go into a copy of the tokenizer and into the text encoder's table, the LoRA
into the UNet and the text encoder through diffusers (one adapter, scaled per component with
``set_adapters`` and fused into the weights while those scales are in use). The prompt is the
training wording (the first source template plus " in the style of <style>") followed by the
user's extra words. Image ``i`` of a batch uses seed
``seed + i`` on a CPU generator, so an image is reproduced by its seed alone, on any device.

Each image is saved as an output (`engine.outputs`: PNG with AUTOMATIC1111's ``parameters`` text,
manifest entry) with its identity score (`engine.identity`).

The loaded base model is kept (one at a time, in a `engine.model_cache.ModelCache`) so that
repeated generations do not reload it; a base passed in by the caller is restored to its original
state after each call.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.events import Event, Finished, PhaseStarted, Status, StepDone
from engine.identity import identity_score, shared_face_kit, source_embedding
from engine.model_cache import ModelCache
from engine.outputs import OUTPUTS, OutputRecord, add_output, format_parameters, model_name, new_output_id
from engine.runs import resolve_artefact
from engine.store import Project, now

if TYPE_CHECKING:
    from engine.artefact import Artefact
    from engine.faces import FaceKit
    from engine.models import BaseModel

ADAPTER = "magicapture"
"""Adapter name of the project LoRA inside diffusers/peft."""
LORA_COMPONENTS = ["unet", "text_encoder"]
DEFAULT_NEGATIVE_PROMPT = (
    "blurry, lowres, out of focus, deformed face, asymmetric eyes, distorted features, bad anatomy, "
    "extra limbs, watermark, text, signature, jpeg artifacts, oversaturated"
)
"""Portrait-oriented negative prompt used unless the user gives one."""


class GenerationError(Exception):
    """Generation cannot run as asked; the message says what to change."""


def _field(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class GenerationSettings:
    """What to sample; the defaults are the released inference settings (METHOD.md section 7)."""

    prompt_extra: str = _field(
        "",
        "Words added after the training wording, e.g. 'wearing a navy suit'. Text that contains a "
        "placeholder token (<sks>, <style1>...) is used as the whole prompt instead.",
    )
    negative_prompt: str = _field(DEFAULT_NEGATIVE_PROMPT, "What the image should not show.")
    seed: int = _field(0, "Seed of the first image; image i of the batch uses seed + i.")
    count: int = _field(1, "Number of images (batch count).")
    sampler: str = _field("euler_a", "euler_a (Euler ancestral), dpmpp_2m_karras (DPM++ 2M Karras) or ddim.")
    steps: int = _field(50, "Denoising steps.")
    guidance_scale: float = _field(7.0, "Classifier-free guidance (CFG) scale.")
    unet_lora_scale: float = _field(0.6, "Strength of the LoRA in the UNet (0 turns it off).")
    text_lora_scale: float = _field(0.9, "Strength of the LoRA in the text encoder (0 turns it off).")
    width: int | None = _field(
        None, "Image width in pixels (a multiple of 8); None: the base model's native size."
    )
    height: int | None = _field(
        None, "Image height in pixels (a multiple of 8); None: the base model's native size."
    )

    def __post_init__(self) -> None:
        from engine.models import SAMPLERS

        if self.sampler not in SAMPLERS:
            raise GenerationError(f"Unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}.")
        if self.count < 1 or self.steps < 1:
            raise GenerationError(f"count and steps must be at least 1 (got {self.count} and {self.steps}).")
        if self.seed < 0 or self.seed + self.count > 2**63:
            raise GenerationError(f"The seed must be a non-negative 64-bit integer (got {self.seed}).")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (value < 64 or value % 8):
                raise GenerationError(f"{name} must be a multiple of 8 of at least 64 pixels (got {value}).")


# Artefacts and the loaded model -----------------------------------------------------------------


@dataclass
class _Installed:
    """What `_install` changed in a base model, to undo it."""

    table_size: int
    overwritten: dict[int, Any]
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


def _install(base: BaseModel, artefact: Artefact) -> tuple[BaseModel, _Installed]:
    """Load the artefact into ``base``: returns a view with a tokenizer copy holding the tokens."""
    import torch

    from engine.models import make_pipeline

    tokenizer = copy.deepcopy(base.tokenizer)
    tokens = list(artefact.embeddings)
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    text_encoder = base.text_encoder
    table_size = text_encoder.get_input_embeddings().num_embeddings
    rows = torch.stack([artefact.embeddings[token] for token in tokens])
    if rows.shape[1] != text_encoder.get_input_embeddings().embedding_dim:
        raise GenerationError(
            f"{artefact.path} was trained on a base with {rows.shape[1]}-wide token embeddings, but "
            f"{base.source} has {text_encoder.get_input_embeddings().embedding_dim}; use the base model it was trained on."
        )
    if len(tokenizer) > table_size:
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    installed = _Installed(table_size, {i: table[i].detach().clone() for i in ids if i < table_size})
    with torch.no_grad():
        table[ids] = rows.to(table)
    view = dataclasses.replace(base, tokenizer=tokenizer)
    lora = artefact.diffusers_state_dict()
    try:
        if lora:
            with _quiet("transformers.integrations.peft"):
                make_pipeline(view).load_lora_weights(lora, adapter_name=ADAPTER)
    except BaseException:
        _uninstall(base, installed)
        raise
    return view, installed


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
    """Undo `_install`: remove the LoRA layers, the added token rows and restore overwritten rows."""
    import torch

    from engine.models import make_pipeline

    pipe = make_pipeline(base)
    if installed.fused is not None:
        pipe.unfuse_lora(components=LORA_COMPONENTS)
        installed.fused = None
    adapters = {name for names in pipe.get_list_adapters().values() for name in names}
    if adapters == {ADAPTER}:
        pipe.unload_lora_weights()  # removes the LoRA layers themselves
    elif ADAPTER in adapters:
        pipe.delete_adapters(ADAPTER)  # the base holds adapters of its own: keep those
    text_encoder = base.text_encoder
    if text_encoder.get_input_embeddings().num_embeddings != installed.table_size:
        text_encoder.resize_token_embeddings(installed.table_size, mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for index, row in installed.overwritten.items():
            table[index] = row


def _kept(source: str) -> _Kept:
    """The kept base model loaded from ``source`` (loaded on first use); call with ``_BASES.lock`` held."""
    from engine.devices import pick_device, pick_dtype
    from engine.models import load_base

    device = pick_device()
    key = (str(source), str(device), str(pick_dtype(device)))
    return _BASES.get(key, lambda: _Kept(load_base(source)))


@contextlib.contextmanager
def plain_base(source: str) -> Iterator[BaseModel]:
    """The kept base model loaded from ``source``, with no artefact in it while the context is open."""
    with _BASES.lock:
        kept = _kept(source)
        kept.release_artefact()
        yield kept.base


def _fuse(pipe: Any, installed: _Installed, unet_scale: float, text_scale: float) -> None:
    """Fuse the project LoRA into the weights at these scales, so that sampling costs what the bare model does.

    The fusion stays while the scales stay (the same seed then gives the same image again); other
    scales unfuse it first.
    """
    scales = (unet_scale, text_scale)
    if not pipe.get_list_adapters() or installed.fused == scales:
        return
    if installed.fused is not None:
        pipe.unfuse_lora(components=LORA_COMPONENTS)
    pipe.set_adapters(ADAPTER, adapter_weights={"unet": unet_scale, "text_encoder": text_scale})
    pipe.fuse_lora(components=LORA_COMPONENTS, adapter_names=[ADAPTER])
    installed.fused = scales


@contextlib.contextmanager
def loaded(artefact: Artefact, base: BaseModel | None = None) -> Iterator[tuple[BaseModel, _Installed]]:
    """The base model with ``artefact`` loaded, as a `BaseModel` view whose tokenizer knows the tokens.

    Without ``base``, the artefact's own base model is loaded and kept for later calls; a given
    ``base`` is changed only while the context is open.
    """
    if base is not None:
        view, installed = _install(base, artefact)
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
        kept = _kept(str(source))
        if kept.artefact != key:
            kept.release_artefact()
            kept.view, kept.installed = _install(kept.base, artefact)
            kept.artefact = key
        yield kept.view, kept.installed


# Prompts -----------------------------------------------------------------------------------------


def compose_prompt(tokens: dict[str, str], extra: str = "") -> str:
    """The training wording with ``extra`` words after a comma; ``extra`` with a placeholder token is the whole prompt."""
    from engine.data import composed_prompt

    extra = " ".join(extra.split())
    if any(token in extra for token in tokens.values()):
        return extra
    prompt = composed_prompt(tokens["identity"], tokens["style"])
    return f"{prompt}, {extra}" if extra else prompt


def fit_prompt(tokenizer: Any, text: str, what: str = "prompt") -> tuple[str, str | None]:
    """``text`` cut at a word boundary to CLIP's 77 tokens (75 plus start and end), and a warning if cut."""
    limit = tokenizer.model_max_length - 2

    def length(words: list[str]) -> int:
        return len(tokenizer(" ".join(words), add_special_tokens=False).input_ids)

    words = text.split()
    total = length(words)
    if total <= limit:
        return text, None
    low, high = 0, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if length(words[:middle]) <= limit else (low, middle - 1)
    kept = " ".join(words[:low]).rstrip(" ,;")
    return kept, (
        f"The {what} is {total} CLIP tokens and the text encoder reads only {limit}; it was cut to: {kept!r}."
    )


# Sampling ----------------------------------------------------------------------------------------


def sample_image(
    pipe: Any,
    prompt: str,
    settings: GenerationSettings,
    seed: int,
    progress: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
) -> np.ndarray | None:
    """One image as RGB ``uint8``, or None if cancelled before the last step; ``progress`` gets each step done."""
    import torch

    def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if progress is not None:
            progress(step + 1)
        if cancel is not None and cancel.is_set():
            pipeline._interrupt = True
        return tensors

    result = pipe(
        prompt=prompt,
        negative_prompt=settings.negative_prompt or None,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        width=settings.width,
        height=settings.height,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        callback_on_step_end=on_step,
    )
    if cancel is not None and cancel.is_set():
        return None
    return (np.clip(result.images[0], 0.0, 1.0) * 255).round().astype(np.uint8)


def generate(
    project: Project,
    run: str | Path | None = None,
    settings: GenerationSettings | None = None,
    *,
    base: BaseModel | None = None,
    face_kit: FaceKit | None = None,
    commercial: bool = False,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[OutputRecord]:
    """Sample ``settings.count`` images from a run's artefact (or the latest finished run) and record them.

    ``base`` defaults to the base model recorded in the artefact (loaded once and kept); ``face_kit``
    (for identity scores) to `engine.identity.shared_face_kit` (``commercial`` picks the commercially usable models).
    Progress comes as `PhaseStarted` and `StepDone` events (phase 0: the whole batch, one step per
    denoising step); when ``cancel`` is set the batch stops and the images finished so far are returned.
    """
    from engine.artefact import load_artefact
    from engine.models import make_pipeline

    settings = settings or GenerationSettings()
    emit = on_event or (lambda event: None)
    started = time.monotonic()
    path, run_id = resolve_artefact(project, run)
    artefact = load_artefact(path)
    tokens = artefact.placeholder_tokens()
    face_kit = face_kit or shared_face_kit(commercial)
    reference = source_embedding(project, face_kit)
    source = base.source if base is not None else str(artefact.metadata.get("base_model"))
    emit(Status(message=f"Loading {model_name(source)} with run {run_id or path.name}…"))
    records: list[OutputRecord] = []
    with loaded(artefact, base) as (model, installed):
        pipe = make_pipeline(model, settings.sampler)
        pipe.set_progress_bar_config(disable=True)
        _fuse(pipe, installed, settings.unet_lora_scale, settings.text_lora_scale)
        prompt, prompt_warning = fit_prompt(model.tokenizer, compose_prompt(tokens, settings.prompt_extra))
        negative, negative_warning = fit_prompt(model.tokenizer, settings.negative_prompt, "negative prompt")
        warnings = [w for w in (prompt_warning, negative_warning) if w]
        for warning in warnings:
            emit(Status(message=warning))
        sampled = dataclasses.replace(settings, negative_prompt=negative)
        total = settings.count * settings.steps
        emit(PhaseStarted(phase=0, steps=total, description=f"Generating {settings.count} image(s)"))
        sampling = time.monotonic()
        for index in range(settings.count):
            seed = settings.seed + index

            def progress(step: int, index: int = index) -> None:
                done = index * settings.steps + step
                elapsed = max(time.monotonic() - sampling, 1e-9)
                emit(StepDone(
                    phase=0, step=done, phase_steps=total, global_step=done, total_steps=total,
                    losses={}, lr=0.0, it_per_s=done / elapsed, eta_s=elapsed / done * (total - done),
                ))  # fmt: skip

            image = sample_image(pipe, prompt, sampled, seed, progress, cancel)
            if image is None:
                emit(Status(message=f"Cancelled after {len(records)} of {settings.count} images."))
                break
            params = {
                "prompt": prompt, "prompt_extra": settings.prompt_extra, "negative_prompt": negative,
                "seed": seed, "sampler": settings.sampler, "steps": settings.steps,
                "guidance_scale": settings.guidance_scale, "unet_lora_scale": settings.unet_lora_scale,
                "text_lora_scale": settings.text_lora_scale, "width": int(image.shape[1]), "height": int(image.shape[0]),
                "base_model": model.source, "model": model_name(model.source), "artefact": _relative(project, path),
            }  # fmt: skip
            output_id = new_output_id(seed)
            record = OutputRecord(
                id=output_id, file=f"{OUTPUTS}/{output_id}.png", seed=seed, params=params, run=run_id,
                identity=identity_score(face_kit, image, reference), created=now(), warnings=list(warnings),
            )  # fmt: skip
            extras = {"MagiCapture run": run_id} if run_id else {}
            records.append(add_output(project, image, record, format_parameters(params, extras)))
    emit(Finished(artefact=str(path), seconds=round(time.monotonic() - started, 2)))
    return records


def _relative(project: Project, path: Path) -> str:
    with contextlib.suppress(ValueError):
        return Path(path).resolve().relative_to(project.root.resolve()).as_posix()
    return str(path)
