"""Sampling portraits from a trained artefact, with their parameters in the PNG and in the manifest.

`generate` loads the artefact of a training run onto the base model it was trained on: the two
placeholder embeddings go into a copy of the tokenizer and into the text encoder's table, the LoRA
into the UNet and the text encoder through diffusers (one adapter, scaled per component with
``set_adapters`` and fused into the weights while those scales are in use). The prompt is the
training wording (the first source template plus " in the style of <style>") followed by the
user's extra words. Image ``i`` of a batch uses seed
``seed + i`` on a CPU generator, so an image is reproduced by its seed alone, on any device.

Each image is written to ``outputs/<id>.png`` with AUTOMATIC1111's ``parameters`` text chunk and
recorded in ``manifest["outputs"]`` with its identity score: the cosine between the ArcFace
embedding of its largest face and the mean embedding of the project's source photos.

The loaded base model is kept (one at a time) so that repeated generations do not reload it; a
base passed in by the caller is restored to its original state after each call.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.events import Event, Finished, PhaseStarted, Status, StepDone
from engine.store import Project, atomic_write_bytes, now

if TYPE_CHECKING:
    from engine.artefact import Artefact
    from engine.faces import Face, FaceKit
    from engine.models import BaseModel

OUTPUTS = "outputs"
ADAPTER = "magicapture"
"""Adapter name of the project LoRA inside diffusers/peft."""
LORA_COMPONENTS = ["unet", "text_encoder"]
DEFAULT_NEGATIVE_PROMPT = (
    "blurry, lowres, out of focus, deformed face, asymmetric eyes, distorted features, bad anatomy, "
    "extra limbs, watermark, text, signature, jpeg artifacts, oversaturated"
)
"""Portrait-oriented negative prompt used unless the user gives one."""
SAMPLER_LABELS = {"euler_a": "Euler a", "dpmpp_2m_karras": "DPM++ 2M Karras", "ddim": "DDIM"}
"""AUTOMATIC1111's names of the samplers, for the ``parameters`` text."""


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


# Artefacts and the loaded model -----------------------------------------------------------------


def resolve_artefact(project: Project, run: str | Path | None) -> tuple[Path, str | None]:
    """The artefact file and run id of ``run``: a run id, an artefact path, or None for the latest finished run."""
    trainings = project.manifest().get("trainings", [])
    finished = [t for t in trainings if t.get("artefact") and project.path(t["artefact"]).is_file()]
    if run is None:
        if not finished:
            raise GenerationError(f"Project {project.name!r} has no finished training yet; train it first.")
        latest = max(reversed(finished), key=lambda t: str(t.get("updated") or t.get("started") or ""))
        return project.path(latest["artefact"]), str(latest["id"])
    entry = next((t for t in finished if str(t.get("id")) == str(run)), None)
    if entry is not None:
        return project.path(entry["artefact"]), str(entry["id"])
    path = Path(run).expanduser()
    if path.is_file():
        inside = project.root.resolve() in path.resolve().parents
        return path, path.parent.name if inside and path.parent.parent.name == "trainings" else None
    known = ", ".join(str(t.get("id")) for t in finished) or "none"
    raise GenerationError(
        f"Project {project.name!r} has no finished training run {str(run)!r} (finished runs: {known}), "
        "and no artefact file has that path."
    )


def placeholder_tokens(artefact: Artefact) -> dict[str, str]:
    """``{"identity": token, "style": token}`` of an artefact, checked against its embeddings."""
    tokens = artefact.metadata.get("tokens") or {}
    if set(tokens) != {"identity", "style"} or set(tokens.values()) != set(artefact.embeddings):
        raise GenerationError(
            f"{artefact.path} does not name its identity and style tokens consistently with its "
            "embeddings; it may come from another app or be damaged."
        )
    return dict(tokens)


@dataclass
class _Installed:
    """What `_install` changed in a base model, to undo it."""

    table_size: int
    overwritten: dict[int, Any]
    fused: tuple[float, float] | None = None
    """UNet and text-encoder scales the LoRA is fused into the weights at; None while unfused."""


_CACHE: dict[str, Any] = {}
"""The one kept base model: ``base``, ``key`` (source, device, dtype), ``artefact`` key and ``installed``."""
_CACHE_LOCK = threading.RLock()


def _artefact_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _install(base: BaseModel, artefact: Artefact) -> tuple[BaseModel, _Installed]:
    """Load the artefact into ``base``: returns a view with a tokenizer copy holding the tokens."""
    import torch

    from engine.export import diffusers_state_dict
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
    lora = diffusers_state_dict(artefact)
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


def _release_artefact() -> None:
    with _CACHE_LOCK:
        if _CACHE.get("installed") is not None:
            _uninstall(_CACHE["base"], _CACHE["installed"])
        _CACHE.update(artefact=None, installed=None, view=None)


def cached_base(source: str) -> BaseModel:
    """The kept base model loaded from ``source`` with no artefact in it (loaded on first use)."""
    from engine.devices import pick_device, pick_dtype
    from engine.models import load_base

    device = pick_device()
    key = (str(source), str(device), str(pick_dtype(device)))
    with _CACHE_LOCK:
        if _CACHE.get("key") != key:
            release_cache()
            _CACHE.update(base=load_base(source), key=key)
        _release_artefact()
        return _CACHE["base"]


def release_cache() -> None:
    """Forget the kept base model (frees its memory once nothing else holds it)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


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
    with _CACHE_LOCK:
        if _CACHE.get("artefact") != key or _CACHE.get("key", (None,))[0] != str(source):
            kept = cached_base(str(source))
            view, installed = _install(kept, artefact)
            _CACHE.update(artefact=key, installed=installed, view=view)
        yield _CACHE["view"], _CACHE["installed"]


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


def format_parameters(params: dict[str, Any], extras: dict[str, Any] | None = None) -> str:
    """AUTOMATIC1111's ``parameters`` text: prompt, ``Negative prompt:`` line, then ``key: value`` pairs."""
    pairs = {
        "Steps": params["steps"],
        "Sampler": SAMPLER_LABELS[params["sampler"]],
        "CFG scale": params["guidance_scale"],
        "Seed": params["seed"],
        "Size": f"{params['width']}x{params['height']}",
        "Model": params["model"],
        "Lora UNet scale": params["unet_lora_scale"],
        "Lora text encoder scale": params["text_lora_scale"],
        **(extras or {}),
    }
    lines = [params["prompt"]]
    if params["negative_prompt"]:
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    lines.append(a1111_pairs(pairs))
    return "\n".join(lines)


def a1111_pairs(pairs: dict[str, Any]) -> str:
    """``key: value`` pairs joined by commas; a value with a comma, colon or newline is JSON-quoted (A1111's rule)."""
    import json

    items = []
    for key, value in pairs.items():
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if any(c in text for c in ",:\n"):
            text = json.dumps(text, ensure_ascii=False)
        items.append(f"{key}: {text}")
    return ", ".join(items)


def model_name(source: str) -> str:
    """Short model name for the ``Model:`` field: the checkpoint or folder name without extension."""
    return Path(str(source).rstrip("/\\")).stem or str(source)


# Identity ----------------------------------------------------------------------------------------


_FACE_KITS: dict[tuple[bool, str], FaceKit] = {}


def shared_face_kit(commercial: bool = False) -> FaceKit:
    """The face models for scoring and paste-back, loaded once per asset folder (pass a kit to use another)."""
    from engine.assets import assets_dir

    key = (commercial, str(assets_dir()))
    if key not in _FACE_KITS:
        from engine.faces import load_face_kit

        _FACE_KITS[key] = load_face_kit(commercial=commercial)
    return _FACE_KITS[key]


def source_embedding(project: Project, kit: FaceKit) -> np.ndarray | None:
    """Unit mean of the source photos' identity embeddings made by ``kit``'s recogniser, or None."""
    if kit.scorer is None:
        return None
    vectors = []
    for entry in project.manifest().get("images", []):
        if entry.get("role") != "source" or not entry.get("embedding"):
            continue
        if entry.get("embedding_model") not in (None, kit.scorer.name):
            continue
        path = project.path(entry["embedding"])
        if path.is_file():
            vectors.append(np.load(path, allow_pickle=False).astype(np.float64).ravel())
    if not vectors or len({v.size for v in vectors}) != 1:
        return None
    mean = np.mean(vectors, axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else None


def identity_score(
    kit: FaceKit, image: np.ndarray, reference: np.ndarray | None, face: Face | None = None
) -> float | None:
    """ArcFace cosine of the largest face in ``image`` to ``reference``; None without face or reference.

    A given ``face`` is scored where it lies, without detection.
    """
    from engine.faces.identity import cosine

    if kit.scorer is None or reference is None:
        return None
    if face is None:
        faces = kit.detector.detect(image)
        if not faces:
            return None
        face = faces[0]
    embedding = kit.scorer.embed(image, face)
    if embedding.size != reference.size:
        return None
    return round(cosine(embedding, reference), 4)


def sorted_outputs(project: Project) -> list[OutputRecord]:
    """All outputs of a project, best identity score first; unscored ones last, newest first among equals.

    Outputs made within one second (a post-processed copy and its original) keep their manifest
    order, later entries first.
    """
    entries = project.manifest().get("outputs", [])
    records = [OutputRecord.from_json(entry) for entry in reversed(entries)]
    records.sort(key=lambda r: r.created, reverse=True)
    return sorted(records, key=lambda r: -math.inf if r.identity is None else r.identity, reverse=True)


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


def new_output_id(seed: int) -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{seed}-{secrets.token_hex(3)}"


def add_output(
    project: Project, image: np.ndarray, record: OutputRecord, parameters: str, dpi: int | None = None
) -> OutputRecord:
    """Save ``image`` at ``record.file`` and append ``record`` to the manifest (or neither, on failure)."""
    path = save_image(project.path(record.file), image, parameters=parameters, dpi=dpi)
    try:
        project.update(lambda manifest: manifest.setdefault("outputs", []).append(record.to_json()))
    except BaseException:
        path.unlink(missing_ok=True)  # no image without its manifest entry (e.g. the disk filled up)
        raise
    return record


def read_parameters(path: Path) -> str | None:
    """The ``parameters`` text chunk of a PNG, or None."""
    from PIL import Image

    with Image.open(path) as picture:
        return picture.info.get("parameters")


# Sampling ----------------------------------------------------------------------------------------


def _sample(
    pipe: Any,
    prompt: str,
    settings: GenerationSettings,
    seed: int,
    progress: Callable[[int], None],
    cancel: threading.Event | None,
) -> np.ndarray | None:
    """One image as RGB ``uint8``, or None if cancelled before the last step."""
    import torch

    def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
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
    (for identity scores) to `shared_face_kit` (``commercial`` picks the commercially usable models).
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
    tokens = placeholder_tokens(artefact)
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

            image = _sample(pipe, prompt, sampled, seed, progress, cancel)
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


def make_references(
    project: Project,
    prompt: str,
    count: int,
    *,
    base_model: str,
    kit: FaceKit,
    seed: int = 0,
    steps: int = 30,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Any]:
    """Paint ``count`` style references from ``prompt`` with the plain base model and add them as reference photos.

    Returns `engine.intake.add_photo`'s result per image (a picture without a usable face is refused
    like any upload).
    """
    from engine.intake import add_photo
    from engine.models import make_pipeline

    emit = on_event or (lambda event: None)
    if not prompt.strip():
        raise GenerationError("Describe the style first, e.g. 'studio headshot, soft light, grey backdrop'.")
    emit(Status(message=f"Loading {model_name(base_model)}…"))
    results = []
    with _CACHE_LOCK:
        pipe = make_pipeline(cached_base(base_model))
        pipe.set_progress_bar_config(disable=True)
        settings = GenerationSettings(seed=seed, count=count, steps=steps)
        for index in range(count):
            emit(Status(message=f"Painting style reference {index + 1} of {count}…"))
            image = _sample(
                pipe,
                f"a portrait of a person, {prompt.strip()}",
                settings,
                seed + index,
                lambda step: None,
                cancel,
            )
            if image is None:
                break
            data = encode_image(image, ".png")
            results.append(add_photo(project, data, f"style-{seed + index}.png", "reference", kit))
    return results
