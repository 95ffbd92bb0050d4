"""The training loop: one run's models, data and optimisation, driven through both phases.

Phase 1 trains the two placeholder embeddings on masked reconstruction; phase 2 adds LoRA on the
UNet and text encoder (the objective: masked reconstruction, composed prompts, identity loss and
Attention Refocusing). Steps run under accelerate (one process or data parallel).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from engine import checkpoint as ckpt
from engine.data import TrainingData, load_images, source_framing, source_identity
from engine.events import Cancelled, Event, Finished, MethodWarning, PhaseStarted, Status, StepDone
from engine.identity import source_embedding
from engine.runs import RUNS, update_run
from engine.store import Project
from engine.training.errors import TrainingCancelled
from engine.training.identity_branch import (
    build_identity_branch,
    check_identity_branch,
    identity_decoder_for,
)
from engine.training.monitor import MethodMonitor
from engine.training.objective import Denoiser, Objective
from engine.training.options import Options, lora_configs, make_accelerator, resolve_options
from engine.training.previews import preview
from engine.training.state import load_optimisation, load_rng, load_trainable, save_checkpoint
from engine.training.weights import ARTEFACT, save_weights

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from accelerate import Accelerator

    from engine.config import TrainingConfig
    from engine.faces import FaceKit
    from engine.models import BaseModel

PHASES = {1: "token embeddings", 2: "LoRA and embeddings"}
LOG = logging.getLogger(__name__)


class Trainer:
    """State of one run; `run` drives both phases."""

    def __init__(
        self,
        project: Project,
        run: str,
        config: TrainingConfig,
        options: Options,
        accelerator: Accelerator,
        emit: Callable[[Event], None],
        cancel: threading.Event | None,
    ):
        self.project, self.run_id, self.config, self.options = project, run, config, options
        self.accelerator, self.emit, self.cancel = accelerator, emit, cancel
        self.folder = project.path(RUNS, run)
        self.device = accelerator.device
        rank = accelerator.process_index
        self.rng = random.Random(config.seed * 1_000_003 + rank)
        self.generator = torch.Generator(self.device).manual_seed(config.seed * 1_000_003 + rank)

    # Setup -------------------------------------------------------------------------------------

    def setup(self, base: BaseModel | None, face_kit: FaceKit | None) -> None:
        """Load and prepare the models (frozen, tokens added, AR capture installed) and the training data."""
        from engine.attention import AttentionStore, install_capture
        from engine.models import load_base, vae_upcast
        from engine.tokens import add_placeholder_tokens_to_base, norm_targets

        config, options = self.config, self.options
        self.emit(Status(message=f"Loading {config.base_model if base is None else base.source}."))
        dtype = options.weight_dtype
        if base is None:
            names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
            base = load_base(config.base_model, device=str(self.device), dtype=names[dtype])
            for note in base.notes:
                self.emit(Status(message=note))
        encoders = [getattr(base, name) for name in base.family.text_encoders]
        for module in (*encoders, base.vae, base.unet):
            module.requires_grad_(False)
            if module.device != self.device or module.dtype != dtype:
                module.to(self.device, dtype=dtype)
        self.base = base
        self.config = config = identity_decoder_for(config, base.family, self.emit)
        self.placeholders = add_placeholder_tokens_to_base(base, config)
        self.norm_targets = norm_targets(base, config, self.placeholders)
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
        if config.latent_cache_variants:
            views = len(images) * config.latent_cache_variants
            self.emit(Status(message=f"Encoding {views} augmented views of {len(images)} photos."))
        self.data.build_cache(base.vae, self.device, dtype, upcast=vae_upcast(base))
        self.monitor = MethodMonitor(
            tokens={token_id: token for token, token_id in self.data.token_ids.items()},
            collapse_fraction=config.ar_collapse_fraction,
            fallback_landmarks=config.identity_fallback_landmarks,
        )
        self.setup_identity(images, face_kit)

    def setup_identity(self, images: list, face_kit: FaceKit | None) -> None:
        """The face kit, the source references previews are scored against, and the identity loss's branch."""
        config, options = self.config, self.options
        identity_loss = bool(config.phase2_steps and config.identity_weight > 0)
        self.face_kit = face_kit
        if face_kit is None and (identity_loss or config.preview_every):
            from engine.faces import load_face_kit

            # The loss needs the recogniser (fetch it); preview scores use what is installed.
            self.face_kit = load_face_kit(download=identity_loss)
        self.reference = source_embedding(self.project, self.face_kit) if self.face_kit else None
        self.framing = source_framing(images)
        self.identity = None
        if not identity_loss:
            return
        target = source_identity(images).to(self.device)
        self.identity = build_identity_branch(
            config, options, self.base, self.face_kit, target, self.device, self.emit
        )

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

    def param_groups(self, phase: int) -> list[dict[str, Any]]:
        """The optimiser's parameter groups of ``phase``: the two rows, then (phase 2) the LoRA."""
        config, rows = self.config, [embedding.rows for embedding in self.placeholders.values()]
        scale = (
            config.train_batch_size * config.gradient_accumulation_steps * self.accelerator.num_processes
            if config.scale_lr
            else 1
        )
        if phase == 1:
            return [
                {"params": rows, "lr": config.phase1_lr * scale, "weight_decay": config.phase1_weight_decay}
            ]
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
        return [dict(g, weight_decay=config.phase2_weight_decay) for g in groups if g["params"]]

    def setup_phase(self, phase: int, restore: Path | None) -> None:
        """Trainable parameters, optimiser, schedule, the accelerate wrapper and the objective of a phase."""
        from diffusers.optimization import get_scheduler

        config = self.config
        if phase == 2:
            self.add_lora()
        model = Denoiser(self.base, config.resolution)
        if restore is not None:
            strict = ckpt.read_json(restore / ckpt.STATE)["phase"] == phase
            load_trainable(model, restore / "trainable.safetensors", self.device, strict)
        groups = self.param_groups(phase)
        for group in groups:
            for param in group["params"]:
                param.requires_grad_(True)
        self.trainable = [p for g in groups for p in g["params"]]
        optimizer = self.make_optimizer(groups)
        steps = config.phase1_steps if phase == 1 else config.phase2_steps
        self.scheduler = get_scheduler(
            config.lr_schedule, optimizer, num_warmup_steps=0, num_training_steps=steps
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if restore is not None and ckpt.read_json(restore / ckpt.STATE)["phase"] == phase:
            load_optimisation(restore, self.optimizer, self.scheduler, self.accelerator.num_processes)
        self.objective = Objective(
            config,
            self.options,
            self.base,
            self.model,
            self.data,
            self.store,
            self.accelerator,
            self.generator,
            self.identity,
            self.monitor,
        )

    def check_shortcuts(self) -> None:
        """At phase-2 start, the identity branch's shortcuts checked (`check_identity_branch`); the monitor reports them."""
        if self.identity is None or not self.accelerator.is_main_process:
            return
        self.monitor.face_window, self.monitor.decoder = check_identity_branch(
            self.identity, self.config, self.options, self.base, self.data, self.accelerator
        )

    def make_optimizer(self, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        if self.options.use_8bit_adam:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, betas=(0.9, 0.999), eps=1e-8)
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)

    # Loop --------------------------------------------------------------------------------------

    def run(self, start: Path | None, base: BaseModel | None, face_kit: FaceKit | None) -> Path:
        """Both phases from ``start`` (a checkpoint, or None for a new run); returns the artefact's path."""
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
            if phase == 2 and first == 0:
                self.check_shortcuts()
            if start is not None:
                load_rng(start, self.accelerator.process_index, self.generator, self.rng)
                self.monitor.restore(ckpt.read_json(start / ckpt.STATE).get("monitor", {}))
                start = None
            self.run_phase(phase, first, steps[phase])
        return self.finish()

    def run_phase(self, phase: int, first: int, steps: int) -> None:
        """Steps ``first`` to ``steps`` of ``phase``, with their events, previews and checkpoints."""
        config = self.config
        if first < steps:
            self.emit(PhaseStarted(phase=phase, steps=steps, description=PHASES[phase]))
        offset = config.phase1_steps if phase == 2 else 0
        began = time.perf_counter()
        for done, step in enumerate(range(first, steps), start=1):
            self.stop_if_cancelled(phase, step, offset + step)
            lr = self.scheduler.get_last_lr()[0]
            totals = self.optimisation_step(phase, step, steps)
            if phase == 1 and config.embedding_norm_pull:
                from engine.tokens import pull_norms

                for name, embedding in self.placeholders.items():
                    pull_norms(embedding.rows, self.norm_targets[name], min(1.0, 100 * lr))
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
                preview(self, phase, global_step)
            if global_step % config.checkpoint_every == 0 or last:
                save_checkpoint(self, phase, step + 1, global_step)
            if (config.preview_every and global_step % config.preview_every == 0) or last:
                self.report(phase, global_step)

    def optimisation_step(self, phase: int, step: int, steps: int) -> dict[str, float]:
        """One optimiser step over the accumulated micro-batches; returns the mean of each loss term."""
        config, accelerator = self.config, self.accelerator
        totals: dict[str, float] = {}
        for _ in range(config.gradient_accumulation_steps):
            with accelerator.accumulate(self.model):
                samples = [self.data.draw(self.rng, phase) for _ in range(config.train_batch_size)]
                terms = self.objective(phase, step, steps, samples)
                accelerator.backward(terms["total"])
                if accelerator.sync_gradients:
                    if config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(self.trainable, config.max_grad_norm)
                    self.optimizer.step()
                    skipped = accelerator.optimizer_step_was_skipped
                    self.monitor.record_step(skipped)
                    if not skipped:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.item() / config.gradient_accumulation_steps
        return totals

    def report(self, phase: int, global_step: int) -> None:
        """Emit the method's report since the last one and any new warning (also to the log)."""
        for event in self.monitor.report(phase, global_step):
            if isinstance(event, MethodWarning):
                LOG.warning("Training %s, step %d: %s", self.run_id, global_step, event.message)
            self.emit(event)

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
            path = save_checkpoint(self, phase, step, global_step) if global_step else None
        self.emit(Cancelled(global_step=global_step, checkpoint=str(path) if path else None))
        raise TrainingCancelled(self.run_id, path)

    def finish(self) -> Path:
        """Write ``final.safetensors``, record the run as finished and return the artefact's path."""
        accelerator = self.accelerator
        path = self.folder / ARTEFACT
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_weights(self, path, bool(self.config.phase2_steps), step=self.total_steps)
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


def phase_two_trainer(
    project: Project,
    config: TrainingConfig,
    *,
    options: Options | None = None,
    base: BaseModel | None = None,
    face_kit: FaceKit | None = None,
    run: str = "phase-2",
) -> Trainer:
    """A trainer with phase 2 set up, as a run has it before its first phase-2 step (benchmarks, tests).

    ``options`` default to the config's (`resolve_options`); the accelerator is a fresh one
    (`make_accelerator`), events are dropped and no run is recorded; checkpoints and artefacts the
    caller saves go under ``trainings/<run>/``.
    """
    options = options or resolve_options(config)
    accelerator = make_accelerator(options, config.gradient_accumulation_steps)
    trainer = Trainer(project, run, config, options, accelerator, lambda event: None, None)
    trainer.setup(base, face_kit)
    trainer.setup_phase(2, None)
    return trainer
