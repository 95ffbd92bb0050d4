"""Two-phase MagiCapture training under accelerate: checkpoints, resume, cancel, events.

`train` runs phase 1 (the two placeholder embeddings, masked reconstruction) and phase 2 (LoRA on
the UNet and text encoder plus the two embeddings; masked reconstruction, composed prompts,
identity loss and Attention Refocusing), writing everything under ``trainings/<run>/`` of the
project: ``events.jsonl``, ``previews/``, ``checkpoints/step-N/`` and ``final.safetensors``.

Each preview is scored for identity (ArcFace cosine to the source photos, as generation scores its
outputs; a preview in which the detector finds no face is scored at the mean face position of the
source crops, as the identity loss falls back to the known face box) and its weights are kept in
``checkpoints/preview-N/``, which checkpoint rotation never deletes: `best_preview` finds the most
faithful one, `use_preview` makes it the run's artefact.

One step, top to bottom (`Trainer.losses`): draw samples; noise their cached latents at random
timesteps; one pass of text encoder and UNet (with the identity branch's extra rows when it cannot
reuse the reconstruction pass); masked reconstruction; AR from the captured maps; identity from the
one-step x0 estimate decoded around the face (by the VAE, or by TAESD with ``identity_decoder="tiny"``).
"""

from __future__ import annotations

import contextlib
import gc
import random
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from engine import checkpoint as ckpt
from engine.config import MEMORY_FIELDS, ConfigError, TrainingConfig, preset
from engine.data import TrainingData, composed_prompt, load_images, source_framing, source_identity
from engine.events import (
    Cancelled,
    CheckpointSaved,
    Event,
    EventLog,
    Failed,
    Finished,
    PhaseStarted,
    PreviewSaved,
    Status,
    StepDone,
)
from engine.identity import identity_score, source_embedding
from engine.losses import masked_reconstruction
from engine.runs import RUNS, get_run, remove_run, runs, update_run
from engine.store import Project, StorageFull, StoreError, atomic_path, now

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from engine.faces import FaceKit
    from engine.families import ModelFamily
    from engine.models import BaseModel

ARTEFACT = "final.safetensors"
PREVIEW_WEIGHTS = "artefact.safetensors"
"""The weights of a preview checkpoint, in the artefact format."""
PHASES = {1: "token embeddings", 2: "LoRA and embeddings"}
RECOMMENDED = {
    "unet_scale": 0.6,
    "text_encoder_scale": 0.9,
    "sampler": "euler_a",
    "steps": 50,
    "guidance": 7.0,
}
"""The released inference settings (METHOD.md section 7), stored in the artefact."""


class TrainingError(Exception):
    """Training could not run or stopped on an error; the message says what to do."""


class TrainingCancelled(Exception):
    """The training was cancelled; its state is in ``checkpoint`` and can be resumed."""

    def __init__(self, run: str, checkpoint: Path | None):
        super().__init__(f"Training {run} was cancelled; resume it to continue from its last checkpoint.")
        self.run = run
        self.checkpoint = checkpoint


@dataclass(frozen=True)
class Options:
    """Memory and speed options of one run: the config's values, else the VRAM profile's."""

    profile: str
    device: torch.device
    mixed_precision: str
    use_8bit_adam: bool
    gradient_checkpointing: bool
    vae_slicing: bool
    train_text_encoder: bool
    identity_face_window: bool
    identity_reuse_pass: bool

    @property
    def weight_dtype(self) -> torch.dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.mixed_precision, torch.float32)


def resolve_options(config: TrainingConfig) -> Options:
    from engine.devices import CPU_PROFILE, PROFILES, detect_profile, pick_device

    device = pick_device(None if config.device == "auto" else config.device)
    if config.vram_profile == "auto":
        profile = detect_profile(device)
    else:
        profile = CPU_PROFILE if config.vram_profile == "cpu" else PROFILES[config.vram_profile]
    values = {}
    for name in (
        "use_8bit_adam",
        "gradient_checkpointing",
        "vae_slicing",
        "train_text_encoder",
        "identity_face_window",
        "identity_reuse_pass",
    ):
        value = getattr(config, name)
        values[name] = getattr(profile, name) if value is None else value
    mixed = config.mixed_precision or profile.mixed_precision
    if device.type != "cuda":
        mixed = "no"
    return Options(profile=profile.name, device=device, mixed_precision=mixed, **values)


# Runs -------------------------------------------------------------------------------------------


def _run_lock(project: Project, run: str):
    from filelock import FileLock

    return FileLock(str(project.path(RUNS, run, ".lock")), timeout=0)


def _unfinished(project: Project) -> list[str]:
    """Runs that are not finished and have a checkpoint, newest first."""
    ids = [record.id for record in reversed(runs(project)) if record.id and not record.finished]
    return [run for run in ids if ckpt.checkpoints(project.path(RUNS, run, "checkpoints"))]


def resume_available(project: Project) -> str | None:
    """The newest unfinished run that has a checkpoint and is not being trained now, or None."""
    from filelock import Timeout

    for run in _unfinished(project):
        try:
            with _run_lock(project, run):
                return run
        except Timeout:
            continue
    return None


class PreviewCheckpoint(NamedTuple):
    """A kept preview checkpoint of a run."""

    step: int
    """Global step of the preview."""
    identity_mean: float | None
    """Mean identity score of its preview images; None when no face was scored."""
    path: Path
    """The checkpoint folder: weights in ``PREVIEW_WEIGHTS``, scores in ``state.json``."""


def preview_checkpoints(project: Project, run: str) -> list[PreviewCheckpoint]:
    """The preview checkpoints of ``run``, oldest first."""
    found = []
    for path in ckpt.checkpoints(project.path(RUNS, run, "checkpoints"), ckpt.PREVIEW):
        state = ckpt.read_json(path / ckpt.STATE)
        found.append(PreviewCheckpoint(int(state["global_step"]), state.get("identity_mean"), path))
    return found


def best_preview(project: Project, run: str) -> PreviewCheckpoint | None:
    """The preview checkpoint with the highest mean identity (the later on a tie); None if none was scored."""
    scored = [p for p in preview_checkpoints(project, run) if p.identity_mean is not None]
    return max(reversed(scored), key=lambda p: p.identity_mean, default=None)


def artefact_from_preview(project: Project, run: str, step: int) -> Path:
    """Write the weights of preview ``step`` as ``trainings/<run>/artefact-step-<step>.safetensors``.

    Same format as ``final.safetensors``; the metadata adds ``step``, ``phase``, ``identity_mean``
    and the ``checkpoint`` it came from.
    """
    from engine.artefact import load_artefact, save_artefact

    kept = {p.step: p for p in preview_checkpoints(project, run)}
    if step not in kept:
        steps = ", ".join(str(s) for s in kept) or "none"
        raise TrainingError(
            f"Training {run} has no preview checkpoint at step {step} (kept steps: {steps}); choose one of those."
        )
    weights = load_artefact(kept[step].path / PREVIEW_WEIGHTS)
    metadata = {
        **weights.metadata,
        "checkpoint": kept[step].path.relative_to(project.root).as_posix(),
        "created": now(),
    }
    path = project.path(RUNS, run, f"artefact-step-{step}.safetensors")
    return save_artefact(path, weights.unet_lora, weights.text_lora, weights.embeddings, metadata)


def use_preview(project: Project, run: str, step: int | None) -> Path:
    """Make the artefact of preview ``step`` (None: the final one again) the artefact of ``run``.

    The run's manifest entry then has ``artefact`` (what generation, evaluation and export read)
    pointing at it, ``final_artefact`` (the final one, None if the run has not finished) and
    ``artefact_step`` (the chosen step, None for the final artefact). Refused while the run trains.
    """
    from filelock import Timeout

    if get_run(project, run) is None:
        raise TrainingError(f"Project {project.name!r} has no training run {run!r}.")
    lock = _run_lock(project, run)
    try:
        lock.acquire()
    except Timeout as error:
        raise TrainingError(
            f"Training {run} is running; choose its checkpoint once it has finished or been cancelled."
        ) from error
    try:
        final = get_run(project, run).final_artefact
        if step is not None:
            path = artefact_from_preview(project, run, step)
        elif final is None:
            raise TrainingError(
                f"Training {run} has not finished, so it has no final artefact; choose one of its preview checkpoints."
            )
        else:
            path = project.path(final)

        # "updated" stays: choosing a checkpoint does not make a run the newest.
        artefact = path.relative_to(project.root).as_posix()
        update_run(project, run, touch=False, artefact=artefact, final_artefact=final, artefact_step=step)
        return path
    finally:
        lock.release()


def _new_run_id(project: Project) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    taken = {record.id for record in runs(project)}
    run, suffix = f"run-{stamp}", 1
    while run in taken or project.path(RUNS, run).exists():
        suffix += 1
        run = f"run-{stamp}-{suffix}"
    return run


class _Events:
    """Sends events to the callback and to ``events.jsonl`` (main process only)."""

    def __init__(self, path: Path, callback: Callable[[Event], None] | None, enabled: bool):
        self.log = EventLog(path) if enabled else None
        self.callback = callback if enabled else None

    def __call__(self, event: Event) -> None:
        if self.log is None:
            return
        self.log.append(event)
        if self.callback is not None:
            self.callback(event)


# Entry points -----------------------------------------------------------------------------------


def train(
    project: Project,
    config: TrainingConfig | None = None,
    *,
    on_event: Callable[[Event], None] | None = None,
    cancel: threading.Event | None = None,
    resume: bool | str = False,
    base: BaseModel | None = None,
    face_kit: FaceKit | None = None,
) -> Path:
    """Train on the project's accepted photos and return the path of ``final.safetensors``.

    ``resume`` (True for the newest resumable run, or a run id) continues a stopped or crashed run
    from its last checkpoint with that run's own settings; only memory options
    (`engine.config.MEMORY_FIELDS`) come from ``config``. ``cancel`` stops the run within one step,
    after saving a checkpoint, by raising `TrainingCancelled`. ``base`` (a loaded base model) is
    modified by the training (tokens, LoRA, attention processors): load a fresh one per run.
    A resume starts from the newest checkpoint whose checksums verify; newer, damaged ones are
    renamed ``damaged-step-N`` (a `Status` event says so). A new run is refused while another run
    of the project trains, and one that fails before its first checkpoint leaves no run behind.
    Works in one process or under ``accelerate launch`` (data parallel; the run folder and events
    belong to the main process).
    """
    from accelerate.utils import broadcast_object_list, set_seed
    from filelock import Timeout

    given = config
    config = config or preset("released")
    run, start, damaged = None, None, []
    if resume:
        # The newest unfinished run, the same in every process (its lock is taken below).
        run = resume if isinstance(resume, str) else next(iter(_unfinished(project)), None)
        start, damaged = _resume_point(project, run)
        saved = TrainingConfig.from_dict(ckpt.read_json(start / ckpt.STATE)["config"])
        config = saved.replace(**{name: getattr(given, name) for name in MEMORY_FIELDS}) if given else saved
    options = resolve_options(config)
    if not resume:  # pin what the profile decided about what is trained, so a resume matches it
        config = config.replace(
            use_8bit_adam=options.use_8bit_adam, train_text_encoder=options.train_text_encoder
        )
    accelerator = _accelerator(config, options)
    set_seed(config.seed)
    # The main process names a new run and checks that no other run of the project is training now.
    chosen = [None, None]
    if accelerator.is_main_process:
        chosen = [run or _new_run_id(project), _training_run(project, other_than=run)]
    broadcast_object_list(chosen)
    run, busy = chosen
    if busy is not None:
        raise TrainingError(
            f"Project {project.name!r} is already training run {busy}; wait for it to finish or cancel it, "
            "then try again."
        )
    folder = project.path(RUNS, run)
    folder.mkdir(parents=True, exist_ok=True)
    lock = _run_lock(project, run) if accelerator.is_main_process else None
    try:
        if lock is not None:
            lock.acquire()
    except Timeout as error:
        raise TrainingError(
            f"Training {run} is already running in another process; wait for it or cancel it first."
        ) from error
    emit = _Events(folder / "events.jsonl", on_event, accelerator.is_main_process)
    abandoned = False
    try:
        if accelerator.is_main_process:
            for item in damaged:
                emit(Status(message=_set_aside_damaged(item, run, start)))
            update_run(project, run, status="running", preset=config.preset, error=None)
        trainer = Trainer(project, run, config, options, accelerator, emit, cancel)
        return trainer.run(start, base, face_kit)
    except TrainingCancelled:
        if accelerator.is_main_process:
            update_run(project, run, status="stopped")
        raise
    except BaseException as error:
        message = _failure_message(error, options, run)
        kept = ckpt.checkpoints(folder / "checkpoints")
        # A new run that fails before its first checkpoint has nothing to resume: it leaves no trace.
        abandoned = accelerator.is_main_process and not kept and not resume
        if accelerator.is_main_process and not isinstance(error, KeyboardInterrupt):
            checkpoint = str(kept[-1]) if kept else None
            # Recording the failure may fail too (a full disk): never let that hide the error itself.
            with contextlib.suppress(OSError, StoreError):
                emit(Failed(message=message, error=type(error).__name__, checkpoint=checkpoint))
            if not abandoned:
                with contextlib.suppress(OSError, StoreError):
                    update_run(project, run, status="failed", error=message)
        if isinstance(error, torch.OutOfMemoryError):
            traceback.clear_frames(error.__traceback__)  # let the models' memory go with the frames
            raise TrainingError(message) from error
        raise
    finally:
        if lock is not None:
            lock.release()
        if abandoned:
            _forget_run(project, run)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _training_run(project: Project, other_than: str | None) -> str | None:
    """A run of the project, other than ``other_than``, whose lock a process holds now; None if none is."""
    from filelock import Timeout

    for path in sorted(project.path(RUNS).glob("*/.lock")):
        run = path.parent.name
        if run == other_than:
            continue
        try:
            with _run_lock(project, run):
                pass
        except Timeout:
            return run
    return None


def _resume_point(project: Project, run: str | None) -> tuple[Path, list[ckpt.Damaged]]:
    """The newest checkpoint of ``run`` that verifies and the newer, damaged ones; `TrainingError` if none does.

    When none does, they are all set aside (so the run is no longer offered for resuming).
    """
    from accelerate import PartialState
    from filelock import Timeout

    folder = project.path(RUNS, run, "checkpoints") if run else None
    if folder is None or not ckpt.checkpoints(folder):
        raise TrainingError(f"Project {project.name!r} has no stopped training to resume; start a new one.")
    start, damaged = ckpt.newest_intact(folder)
    if start is not None:
        return start, damaged
    if PartialState().is_main_process:
        try:
            with _run_lock(project, run):
                for item in damaged:
                    ckpt.set_aside(item.path)
        except Timeout as error:
            raise TrainingError(
                f"Training {run} is already running in another process; wait for it or cancel it first."
            ) from error
    reasons = "; ".join(f"{item.path.name}: {item.reason}" for item in damaged)
    raise TrainingError(
        f"No checkpoint of training {run} can be trusted ({reasons}). They were kept aside as "
        f"'{ckpt.DAMAGED}-step-N' folders in {folder}; start a new training."
    )


def _set_aside_damaged(item: ckpt.Damaged, run: str, start: Path) -> str:
    """Rename a damaged checkpoint out of the way; returns the sentence that tells the user."""
    kept = ckpt.set_aside(item.path)
    return (
        f"Checkpoint {item.path.name} of training {run} is damaged ({item.reason}); it was kept aside as "
        f"{kept.name}, and the training resumes from {start.name}."
    )


def _forget_run(project: Project, run: str) -> None:
    """Remove a run's folder and manifest entry (a new run that failed with nothing to resume)."""
    import shutil

    with contextlib.suppress(OSError, StoreError):
        remove_run(project, run)
    shutil.rmtree(project.path(RUNS, run), ignore_errors=True)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is already a sentence for the user."""
    from engine.data import DataError
    from engine.faces import FaceModelError
    from engine.models import ModelLoadError
    from engine.tokens import TokenError

    return (StorageFull, TrainingError, ConfigError, DataError, TokenError, FaceModelError, ModelLoadError)


def _failure_message(error: BaseException, options: Options, run: str) -> str:
    from engine.devices import lower_profile

    if isinstance(error, torch.OutOfMemoryError):
        lower = lower_profile(options.profile)
        advice = (
            f"choose the smaller '{lower.name}' VRAM profile and resume it"
            if lower
            else "lower the resolution or close other programs using the GPU, then resume it"
        )
        return f"Training {run} ran out of GPU memory with the '{options.profile}' profile; its last checkpoint is kept: {advice}."
    if isinstance(error, _user_errors()):
        return str(error)
    return f"Training {run} failed: {type(error).__name__}: {error}"


def _accelerator(config: TrainingConfig, options: Options):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if PartialState._shared_state and not PartialState().use_distributed:
        # One process: let a new run choose its own precision and device (the studio trains repeatedly).
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        mixed_precision=options.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=options.device.type == "cpu",
    )


def lora_configs(
    config: TrainingConfig, train_text_encoder: bool, family: ModelFamily | None = None
) -> dict[str, dict[str, Any]]:
    """peft LoraConfig arguments per component: the UNet and (if trained) the text encoders.

    ``family`` (default: SD 1.x) maps the configured module names to each component's targets.
    """
    from engine.families import DEFAULT_FAMILY

    family = family or DEFAULT_FAMILY
    if config.lora_cross_attention_only and not any(t.startswith("to_") for t in config.lora_unet_targets):
        raise ConfigError(
            "lora_cross_attention_only needs attention projections (to_q, to_k...) in lora_unet_targets."
        )
    init = "gaussian" if config.lora_init == "gaussian" else True  # peft's True: kaiming-uniform A
    common = {"r": config.lora_rank, "lora_alpha": config.lora_alpha, "init_lora_weights": init}
    targets = family.lora_target_modules(
        config.lora_unet_targets, config.lora_text_targets, config.lora_cross_attention_only
    )
    trained = {"unet", *(family.text_encoders if train_text_encoder else ())}
    return {name: {**common, "target_modules": value} for name, value in targets.items() if name in trained}


# The trainer ------------------------------------------------------------------------------------


class Denoiser(nn.Module):
    """Text encoders and UNet as one module, so one DDP wrapper sees every trained parameter.

    Each text encoder is a submodule under its `BaseModel` name; the family turns prompts into states.
    """

    def __init__(self, base: BaseModel):
        super().__init__()
        self.family = base.family
        for name in base.family.text_encoders:
            self.add_module(name, getattr(base, name))
        self.unet = base.unet

    def forward(self, input_ids: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        encoders = [getattr(self, name) for name in self.family.text_encoders]
        states = self.family.encode_prompt(encoders, input_ids)
        return self.unet(noisy, timesteps, states.hidden_states, added_cond_kwargs=states.added_cond).sample


class Trainer:
    """State of one run; `run` drives both phases."""

    def __init__(self, project, run, config, options, accelerator, emit, cancel):
        self.project, self.run_id, self.config, self.options = project, run, config, options
        self.accelerator, self.emit, self.cancel = accelerator, emit, cancel
        self.folder = project.path(RUNS, run)
        self.device = accelerator.device
        rank = accelerator.process_index
        self.rng = random.Random(config.seed * 1_000_003 + rank)
        self.generator = torch.Generator(self.device).manual_seed(config.seed * 1_000_003 + rank)

    # Setup -------------------------------------------------------------------------------------

    def setup(self, base: BaseModel | None, face_kit: FaceKit | None) -> None:
        from engine.attention import AttentionStore, install_capture
        from engine.models import load_base
        from engine.tokens import add_placeholder_tokens

        config, options = self.config, self.options
        self.emit(Status(message=f"Loading {config.base_model if base is None else base.source}."))
        dtype = options.weight_dtype
        if base is None:
            names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
            base = load_base(config.base_model, device=str(self.device), dtype=names[dtype])
        encoders = [getattr(base, name) for name in base.family.text_encoders]
        for module in (*encoders, base.vae, base.unet):
            module.requires_grad_(False)
            if module.device != self.device or module.dtype != dtype:
                module.to(self.device, dtype=dtype)
        self.base = base
        self.placeholders = add_placeholder_tokens(base.tokenizer, base.text_encoder, config)
        self.store = AttentionStore()
        install_capture(base.unet, self.store, base.family)
        if options.gradient_checkpointing:
            base.unet.enable_gradient_checkpointing()
            base.vae.enable_gradient_checkpointing()
            for encoder in encoders:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if options.vae_slicing:
            base.vae.enable_slicing()
        for module in (*encoders, base.unet):
            module.train()

        images = load_images(self.project, config.resolution)
        self.data = TrainingData(images, config, base.tokenizer)
        self.emit(
            Status(
                message=f"Encoding {len(images) * config.latent_cache_variants} augmented views of {len(images)} photos."
            )
        )
        self.data.build_cache(base.vae, self.device, dtype)
        identity_loss = bool(config.phase2_steps and config.identity_weight > 0)
        self.face_kit = face_kit
        if face_kit is None and (identity_loss or config.preview_every):
            from engine.faces import load_face_kit

            # The loss needs the recogniser (fetch it); preview scores use what is installed.
            self.face_kit = load_face_kit(download=identity_loss)
        self.reference = source_embedding(self.project, self.face_kit) if self.face_kit else None
        self.framing = source_framing(images)
        self.identity = None
        self.tiny_decoder = None
        if identity_loss:
            self.identity = (
                source_identity(images).to(self.device),
                self.face_kit.detector,
                self.face_kit.identity_model().to(self.device),
            )
            if config.identity_decoder == "tiny":
                from engine.models import load_tiny_decoder

                self.emit(Status(message=f"Loading the tiny identity decoder {config.tiny_decoder_model}."))
                self.tiny_decoder = load_tiny_decoder(config.tiny_decoder_model, self.device, dtype)
                if options.vae_slicing:
                    self.tiny_decoder.enable_slicing()
                if options.gradient_checkpointing:
                    self.tiny_decoder.enable_gradient_checkpointing()

    def add_lora(self) -> None:
        """Inject the LoRA adapters (fp32), initialised from the seed whatever the RNG state."""
        from diffusers.training_utils import cast_training_params
        from peft import LoraConfig, inject_adapter_in_model

        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed + 1)
            configs = lora_configs(self.config, self.options.train_text_encoder, self.base.family)
            for name, arguments in configs.items():
                module = getattr(self.base, name)
                inject_adapter_in_model(LoraConfig(**arguments), module)
                cast_training_params(module, torch.float32)

    def setup_phase(self, phase: int, restore: Path | None) -> None:
        """Trainable parameters, optimiser, schedule and the accelerate wrapper of a phase."""
        from diffusers.optimization import get_scheduler

        config, accelerator = self.config, self.accelerator
        if phase == 2:
            self.add_lora()
        model = Denoiser(self.base)
        if restore is not None:
            self.load_trainable(
                model,
                restore / "trainable.safetensors",
                strict=ckpt.read_json(restore / ckpt.STATE)["phase"] == phase,
            )
        rows = [self.placeholders.rows]
        scale = (
            config.train_batch_size * config.gradient_accumulation_steps * accelerator.num_processes
            if config.scale_lr
            else 1
        )
        if phase == 1:
            groups = [
                {"params": rows, "lr": config.phase1_lr * scale, "weight_decay": config.phase1_weight_decay}
            ]
        else:
            lora = {
                name: [p for n, p in getattr(self.base, name).named_parameters() if "lora_" in n]
                for name in ("unet", *self.base.family.text_encoders)
            }
            text = [p for name in self.base.family.text_encoders for p in lora[name]]
            groups = [
                {"params": lora["unet"], "lr": config.phase2_unet_lr * scale},
                {"params": text, "lr": config.phase2_text_lr * scale},
                {"params": rows, "lr": config.phase2_embedding_lr * scale},
            ]
            groups = [dict(g, weight_decay=config.phase2_weight_decay) for g in groups if g["params"]]
        for group in groups:
            for param in group["params"]:
                param.requires_grad_(True)
        self.trainable = [p for g in groups for p in g["params"]]
        optimizer = self.make_optimizer(groups)
        steps = config.phase1_steps if phase == 1 else config.phase2_steps
        self.scheduler = get_scheduler(
            config.lr_schedule, optimizer, num_warmup_steps=0, num_training_steps=steps
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        if restore is not None and ckpt.read_json(restore / ckpt.STATE)["phase"] == phase:
            self.load_optimisation(restore)

    def make_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        if self.options.use_8bit_adam:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, betas=(0.9, 0.999), eps=1e-8)
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)

    # Loop --------------------------------------------------------------------------------------

    def run(self, start: Path | None, base: BaseModel | None, face_kit: FaceKit | None) -> Path:
        self.started = time.perf_counter()
        self.setup(base, face_kit)
        config = self.config
        state = ckpt.read_json(start / ckpt.STATE) if start else {"phase": 1, "step": 0}
        steps = {1: config.phase1_steps, 2: config.phase2_steps}
        self.total_steps = steps[1] + steps[2]
        for phase in (1, 2):
            if steps[phase] == 0 or phase < state["phase"]:
                continue
            first = state["step"] if phase == state["phase"] else 0
            if phase == 1 and first >= steps[1] and steps[2]:
                continue  # phase 2's setup loads the finished phase-1 rows from the checkpoint
            self.setup_phase(phase, start)
            if start is not None:
                self.load_rng(start)
                start = None
            self.run_phase(phase, first, steps[phase])
        return self.finish()

    def run_phase(self, phase: int, first: int, steps: int) -> None:
        config, accelerator = self.config, self.accelerator
        if first < steps:
            self.emit(PhaseStarted(phase=phase, steps=steps, description=PHASES[phase]))
        offset = config.phase1_steps if phase == 2 else 0
        began = time.perf_counter()
        for done, step in enumerate(range(first, steps), start=1):
            self.stop_if_cancelled(phase, step, offset + step)
            lr = self.scheduler.get_last_lr()[0]
            totals: dict[str, float] = {}
            for _ in range(config.gradient_accumulation_steps):
                with accelerator.accumulate(self.model):
                    samples = [self.data.draw(self.rng, phase) for _ in range(config.train_batch_size)]
                    terms = self.losses(phase, step, steps, samples)
                    accelerator.backward(terms["total"])
                    if accelerator.sync_gradients:
                        if config.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(self.trainable, config.max_grad_norm)
                        self.optimizer.step()
                        if not accelerator.optimizer_step_was_skipped:
                            self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + value.item() / config.gradient_accumulation_steps
            if phase == 1 and config.embedding_norm_pull:
                from engine.tokens import pull_norms

                pull_norms(self.placeholders.rows, config.embedding_norm_target, min(1.0, 100 * lr))
            global_step = offset + step + 1
            speed = done / max(time.perf_counter() - began, 1e-9)
            self.emit(
                StepDone(
                    phase=phase,
                    step=step + 1,
                    phase_steps=steps,
                    global_step=global_step,
                    total_steps=self.total_steps,
                    losses=totals,
                    lr=lr,
                    it_per_s=speed,
                    eta_s=(self.total_steps - global_step) / speed,
                )
            )
            last = step + 1 == steps
            if config.preview_every and (global_step % config.preview_every == 0 or (last and phase == 2)):
                self.preview(phase, global_step)
            if global_step % config.checkpoint_every == 0 or last:
                self.save_checkpoint(phase, step + 1, global_step)

    def stop_if_cancelled(self, phase: int, step: int, global_step: int) -> None:
        """Before a step: on cancel, make sure the state so far is checkpointed and raise `TrainingCancelled`."""
        flag = torch.tensor(float(bool(self.cancel and self.cancel.is_set())), device=self.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        if flag.item() == 0:
            return
        saved = ckpt.checkpoints(self.folder / "checkpoints")
        if saved and saved[-1].name == f"step-{global_step}":
            path = saved[-1]
        else:
            path = self.save_checkpoint(phase, step, global_step) if global_step else None
        self.emit(Cancelled(global_step=global_step, checkpoint=str(path) if path else None))
        raise TrainingCancelled(self.run_id, path)

    # One step ----------------------------------------------------------------------------------

    def identity_kinds(self, phase: int) -> tuple[str, ...]:
        if phase == 1 or self.identity is None:
            return ()
        return ("source", "composed") if self.config.identity_on_source else ("composed",)

    def losses(self, phase: int, step: int, steps: int, samples: list) -> dict[str, torch.Tensor]:
        """Loss terms of one micro-batch: ``total`` (weighted) plus each unweighted term."""
        config, gen = self.config, self.generator
        scheduler = self.base.noise_scheduler
        scale = self.base.family.latent_scale(self.base.vae)
        batch = self.data.batch(samples, scale, self.identity_kinds(phase), gen)
        size = len(samples)
        latents = batch.latents
        noise = torch.randn(latents.shape, generator=gen, device=self.device)
        high = config.phase1_max_timestep if phase == 1 else config.phase2_max_timestep
        timesteps = torch.randint(0, high, (size,), generator=gen, device=self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        input_ids = batch.input_ids

        # Identity rows: reuse the reconstruction pass when its timestep is low enough, else add rows.
        identity_rows = batch.identity_rows.to(self.device)
        if len(identity_rows):
            reusable = timesteps[identity_rows] < config.identity_max_timestep
            fresh = identity_rows[~reusable] if self.options.identity_reuse_pass else identity_rows
            extra_t = torch.randint(
                0, config.identity_max_timestep, (len(fresh),), generator=gen, device=self.device
            )
            extra_noise = torch.randn((len(fresh), *latents.shape[1:]), generator=gen, device=self.device)
            noisy = torch.cat([noisy, scheduler.add_noise(latents[fresh], extra_noise, extra_t)])
            timesteps = torch.cat([timesteps, extra_t])
            input_ids = torch.cat([input_ids, input_ids[fresh]])
            source_rows = identity_rows.clone()
            reused = torch.isin(identity_rows, fresh, invert=True)
            source_rows[~reused] = size + torch.arange(len(fresh), device=self.device)
        use_ar = phase == 2 and config.ar_weight > 0
        if use_ar:
            self.store.start()
        eps = self.model(input_ids, noisy, timesteps)
        self.store.stop()

        weights = torch.ones(size, device=self.device)
        if step < config.style_weight_fraction * steps:
            styled = torch.tensor([kind != "source" for kind in batch.kinds], device=self.device)
            weights = torch.where(styled, config.style_weight, 1.0)
        reconstruction = masked_reconstruction(eps[:size].float(), noise.float(), batch.recon_masks)
        terms = {"reconstruction": reconstruction.mean()}
        total = (reconstruction * weights).mean()
        if use_ar:
            terms["attention"] = self.attention_term(batch)
            total = total + config.ar_weight * terms["attention"]
        if len(identity_rows):
            term = self.identity_term(noisy[source_rows], eps[source_rows], timesteps[source_rows], batch)
            if term is not None:
                terms["identity"] = term
                total = total + config.identity_weight * term
        terms["total"] = total
        return terms

    def attention_term(self, batch) -> torch.Tensor:
        """AR loss averaged over each sample's tokens, then over samples."""
        from engine.attention import refocusing_loss

        maps = self.store.token_maps(batch.ar_positions, batch.ar_rows)
        pairs = refocusing_loss(maps, batch.ar_targets.to(self.device), self.config.ar_detach_range)
        rows = batch.ar_rows.to(self.device)
        count = torch.zeros(len(batch.kinds), device=self.device).index_add_(0, rows, torch.ones_like(pairs))
        per_sample = torch.zeros_like(count).index_add_(0, rows, pairs) / count.clamp_min(1)
        return per_sample[count > 0].mean()

    def identity_term(self, noisy, eps, timesteps, batch) -> torch.Tensor | None:
        """Identity loss of the one-step x0 estimates, decoded (around the face) with gradient."""
        from engine.losses import crop_windows, detect_landmarks, face_windows, identity_loss, predicted_x0

        target, detector, recogniser = self.identity
        vae = self.base.vae
        latents = predicted_x0(noisy, eps, self.base.noise_scheduler.alphas_cumprod, timesteps)
        boxes, landmarks = batch.boxes.to(self.device), batch.landmarks.to(self.device)
        if self.options.identity_face_window:
            side, corners = face_windows(boxes, latents.shape[-2:], 8, self.config.identity_window_margin)
            latents = crop_windows(latents, side, corners)
            landmarks = landmarks - (corners * 8).to(landmarks).unsqueeze(1)
        with self.accelerator.autocast():
            if self.config.identity_decoder == "tiny":
                images = self.tiny_decoder.decode(latents.to(self.tiny_decoder.dtype)).sample.float()
            else:
                scale = self.base.family.latent_scale(vae)
                images = vae.decode((latents / scale).to(vae.dtype)).sample.float()
            fallback = landmarks if self.config.identity_fallback_landmarks else None
            points, found = detect_landmarks(detector, images, fallback)
            if not found.any():
                return None
            return identity_loss(images[found], points[found], recogniser, target).mean()

    # Checkpoints -------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        model = self.accelerator.unwrap_model(self.model)
        return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def save_checkpoint(self, phase: int, step: int, global_step: int) -> Path:
        accelerator = self.accelerator
        folder = self.folder / "checkpoints"
        staged = folder / f".tmp-step-{global_step}"
        try:
            if accelerator.is_main_process:
                ckpt.staging(folder, global_step)
            accelerator.wait_for_everyone()
            rank = accelerator.process_index
            ckpt.save_tensors(
                staged / f"rng-{rank}.safetensors", {"torch": self.generator.get_state()}, folder
            )
            ckpt.save_json(
                staged / f"rng-{rank}.json", {"python": _python_state(self.rng.getstate())}, folder
            )
            if accelerator.is_main_process:
                ckpt.save_tensors(staged / "trainable.safetensors", self.trainable_state(), folder)
                tree, tensors = ckpt.split_state(self.optimizer.state_dict())
                ckpt.save_tensors(staged / "optimizer.safetensors", tensors, folder)
                ckpt.save_json(staged / "optimizer.json", tree, folder)
            accelerator.wait_for_everyone()  # every process's RNG files are written: checksum them all
            if accelerator.is_main_process:
                state = {
                    "phase": phase,
                    "step": step,
                    "global_step": global_step,
                    "run": self.run_id,
                    "config": self.config.to_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "saved": now(),
                    "processes": accelerator.num_processes,
                }
                ckpt.seal(staged, state, folder)
                ckpt.commit(staged, global_step, self.config.keep_checkpoints)
        except BaseException:
            if accelerator.is_main_process:
                ckpt.discard(staged)
            raise
        path = folder / f"step-{global_step}"
        accelerator.wait_for_everyone()
        self.emit(CheckpointSaved(global_step=global_step, path=str(path)))
        if accelerator.is_main_process:
            update_run(self.project, self.run_id, step=global_step, total_steps=self.total_steps)
        return path

    def load_trainable(self, model: Denoiser, path: Path, strict: bool) -> None:
        saved = ckpt.load_tensors(path, self.device)
        params = dict(model.named_parameters())
        wanted = {n for n, p in params.items() if p.requires_grad or "lora_" in n}
        missing = sorted(wanted - saved.keys()) if strict else []
        unknown = sorted(saved.keys() - params.keys())
        if missing or unknown:
            raise TrainingError(
                f"Checkpoint {path.parent} does not match this model ({len(missing)} missing, {len(unknown)} unknown tensors)."
            )
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)

    def load_optimisation(self, path: Path) -> None:
        state = ckpt.read_json(path / ckpt.STATE)
        if state.get("processes", 1) != self.accelerator.num_processes:
            raise TrainingError(
                f"Checkpoint {path} was saved with {state.get('processes', 1)} processes; resume it with the same number."
            )
        tree = ckpt.read_json(path / "optimizer.json")
        self.optimizer.load_state_dict(
            ckpt.join_state(tree, ckpt.load_tensors(path / "optimizer.safetensors"))
        )
        self.scheduler.load_state_dict(state["scheduler"])

    def load_rng(self, path: Path) -> None:
        rank = self.accelerator.process_index
        self.generator.set_state(ckpt.load_tensors(path / f"rng-{rank}.safetensors")["torch"])
        self.rng.setstate(_python_state(ckpt.read_json(path / f"rng-{rank}.json")["python"]))

    # Previews and the artefact ----------------------------------------------------------------

    @torch.no_grad()
    def preview(self, phase: int, global_step: int) -> None:
        """Composed-prompt samples at fixed seeds plus attention overlays of both tokens (main process)."""
        if not self.accelerator.is_main_process:
            return
        from engine.models import make_pipeline

        config = self.config
        prompt = composed_prompt(config.identity_token, config.style_token)
        seeds = list(config.preview_seeds)
        pipe = make_pipeline(self.base, "euler_a")
        pipe.set_progress_bar_config(disable=True)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self.accelerator.autocast():
            self.store.start(accumulate=True)
            try:
                images = pipe(
                    [prompt] * len(seeds),
                    height=config.resolution,
                    width=config.resolution,
                    num_inference_steps=config.preview_steps,
                    guidance_scale=config.preview_guidance,
                    generator=[torch.Generator(self.device).manual_seed(s) for s in seeds],
                    output_type="np",
                ).images
            finally:
                self.store.stop()
        ids = self.base.tokenizer(
            prompt, padding="max_length", max_length=self.base.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids[0]
        rows = torch.arange(len(seeds)) + (len(seeds) if config.preview_guidance > 1 else 0)
        folder = self.folder / "previews" / f"step-{global_step:06d}"
        paths, overlays = [], {}
        for label, token in (("identity", config.identity_token), ("style", config.style_token)):
            position = int((ids == self.data.token_ids[token]).nonzero()[0, 0])
            maps = self.store.token_maps(torch.full((len(seeds),), position), rows).mean(dim=1)
            overlays[token] = [
                _save_png(folder / f"seed-{s}-{label}.png", _overlay(img, m))
                for s, img, m in zip(seeds, images, maps, strict=True)
            ]
        pixels = [(img * 255).round().astype("uint8") for img in images]
        paths = [_save_png(folder / f"seed-{s}.png", p) for s, p in zip(seeds, pixels, strict=True)]
        detected = [identity_score(self.face_kit, p, self.reference) for p in pixels]
        framed = [score is None and self.framing is not None for score in detected]
        identity = [
            identity_score(self.face_kit, p, self.reference, self.framing) if frame else score
            for p, score, frame in zip(pixels, detected, framed, strict=True)
        ]
        scored = [score for score in identity if score is not None]
        mean = round(sum(scored) / len(scored), 4) if scored else None
        checkpoint = self.save_preview(phase, global_step, identity, mean)
        self.emit(
            PreviewSaved(
                phase=phase,
                global_step=global_step,
                prompt=prompt,
                images=paths,
                attention_maps=overlays,
                identity=identity,
                identity_framed=framed,
                identity_mean=mean,
                checkpoint=str(checkpoint),
            )
        )

    def save_preview(
        self, phase: int, global_step: int, identity: list[float | None], mean: float | None
    ) -> Path:
        """Keep the current weights and the preview's scores as ``checkpoints/preview-<step>/`` (never rotated)."""
        folder = self.folder / "checkpoints"
        staged = ckpt.staging(folder, global_step, ckpt.PREVIEW)
        try:
            with ckpt.disk_guard(folder):
                self.save_weights(
                    staged / PREVIEW_WEIGHTS, phase == 2, step=global_step, phase=phase, identity_mean=mean
                )
            state = {
                "phase": phase,
                "global_step": global_step,
                "run": self.run_id,
                "identity": identity,
                "identity_mean": mean,
                "saved": now(),
            }
            ckpt.seal(staged, state, folder)
            return ckpt.commit(staged, global_step, None, ckpt.PREVIEW)
        except BaseException:
            ckpt.discard(staged)
            raise

    def save_weights(self, path: Path, with_lora: bool, **details: Any) -> Path:
        """An artefact of the current weights: the LoRA (when injected), the two embeddings, and metadata plus ``details``."""
        from engine.artefact import save_artefact

        config = self.config
        configs = lora_configs(config, self.options.train_text_encoder, self.base.family) if with_lora else {}
        loras = {
            name: _lora_state(getattr(self.base, name)) if name in configs else {}
            for name in ("unet", "text_encoder")
        }
        rows = self.placeholders.rows.detach()
        metadata = {
            "format": 1,
            "base_model": self.base.source,
            "family": self.base.family.name,
            "preset": config.preset,
            "run": self.run_id,
            "tokens": {"identity": config.identity_token, "style": config.style_token},
            "prompt": composed_prompt(config.identity_token, config.style_token),
            "resolution": config.resolution,
            "lora": configs,
            "recommended": RECOMMENDED,
            "config": config.to_dict(),
            "created": now(),
            **details,
        }
        return save_artefact(
            path,
            loras["unet"],
            loras["text_encoder"],
            {config.identity_token: rows[0], config.style_token: rows[1]},
            metadata,
        )

    def finish(self) -> Path:
        accelerator = self.accelerator
        path = self.folder / ARTEFACT
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.save_weights(path, bool(self.config.phase2_steps), step=self.total_steps)
            relative = str(path.relative_to(self.project.root))
            update_run(
                self.project,
                self.run_id,
                status="finished",
                artefact=relative,
                final_artefact=relative,
                artefact_step=None,
            )
        accelerator.wait_for_everyone()
        self.emit(Finished(artefact=str(path), seconds=time.perf_counter() - self.started))
        return path


def _lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA weights of a peft-injected module under peft's saved names (adapter name dropped)."""
    return {k.replace(".default.", "."): v for k, v in module.state_dict().items() if "lora_" in k}


def _python_state(state):
    """``random.getstate()`` <-> JSON lists."""
    version, internal, gauss = state
    return (
        [version, list(internal), gauss] if isinstance(internal, tuple) else (version, tuple(internal), gauss)
    )


def _overlay(image, heat: torch.Tensor):
    """RGB ``uint8``: the image blended with a jet-coloured, min-max normalised attention map."""
    import numpy as np
    import torch.nn.functional as F

    size = image.shape[:2]
    heat = F.interpolate(heat[None, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[
        0, 0
    ]
    heat = ((heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-8)).numpy()
    colour = np.stack([np.clip(1.5 - np.abs(4 * heat - c), 0, 1) for c in (3, 2, 1)], axis=-1)
    return (255 * (0.5 * image + 0.5 * colour)).round().astype("uint8")


def _save_png(path: Path, pixels) -> str:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return str(path)
