"""Train step: preset and memory profile, start / cancel / resume, and the live view of the run.

The live view is a fold over the engine's training events: the same function reads the running
job's events (from the job runner) and a past run's ``events.jsonl`` (after a restart), so an
interrupted run shows its previews and losses when the studio comes back.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import html
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gradio as gr
import pandas as pd

from engine import preflight
from engine.config import PRESETS, PROFILE_NAMES, ConfigError, TrainingConfig, preset
from engine.events import (
    Cancelled,
    CheckpointSaved,
    Failed,
    Finished,
    MethodReport,
    MethodWarning,
    PhaseStarted,
    PreviewSaved,
    Status,
    StepDone,
    identity_curve,
    read_events,
)
from engine.photos import photo_records
from engine.preflight import duration
from engine.runs import RUNS, RunRecord, runs
from studio.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Job, JobRefused
from studio.state import Studio, bind

if TYPE_CHECKING:
    from engine.store import Project

logger = logging.getLogger(__name__)

PRESET_HELP = {
    "released": "the settings of the authors' released code; the best results.",
    "paper": "the values stated in the paper (gradient accumulation 4, so slower).",
    "fast": "fewer steps, for a first look at whether the photos work.",
}
ADVANCED = (
    "phase1_steps",
    "phase2_steps",
    "resolution",
    "seed",
    "lora_rank",
    "identity_weight",
    "ar_weight",
    "checkpoint_every",
    "preview_every",
    "identity_decoder",
)
"""Settings shown under "Advanced" (a menu for a setting with choices); the rest keep the preset's values."""
IDENTITY_SPAN = 0.2
"""The identity axis spans at least this much: the scores of successive previews vary by a few
thousandths, which on an axis fitted to them looks like a trend."""
IDENTITY_TITLE = "Identity (ArcFace similarity of the previews to the selfies)"
ATTENTION_TITLE = "Token attention (mean, on the layers Attention Refocusing reads)"
MAX_PLOT_POINTS = 600
"""Loss points per term sent to the browser; longer runs are thinned evenly."""
DEMO_DEFAULTS = {"phase1_steps": 6, "phase2_steps": 6, "checkpoint_every": 3, "preview_every": 6}
"""Demo mode: a CPU run of the tiny model that finishes in about a minute (editable under Advanced)."""
DEMO_FIXED = {"preview_steps": 4, "preview_seeds": [0], "latent_cache_variants": 1, "device": "cpu"}
"""Demo mode: settings the tiny model always runs with."""


@dataclass
class TrainingView:
    """What the Train tab shows about one run."""

    state: str = "idle"
    """idle, starting, running, done, failed, cancelled or interrupted."""
    message: str = ""
    phase: int = 0
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    it_per_s: float | None = None
    lr: float | None = None
    losses: list[tuple[int, str, float]] = field(default_factory=list)
    previews: list[tuple[str, str]] = field(default_factory=list)
    attention: list[tuple[str, str]] = field(default_factory=list)
    checkpoint: str | None = None
    identity: list[tuple[int, float]] = field(default_factory=list)
    """(global step, mean identity score) of each scored preview."""
    preview_images: dict[int, list[str]] = field(default_factory=dict)
    """Each preview's images by global step (the best checkpoint shows its own)."""
    step_seconds: dict[int, list[float]] = field(default_factory=dict)
    """Seconds each step took, per phase (for the refined estimate and the slowdown warning)."""
    warnings: list[str] = field(default_factory=list)
    attention_levels: list[tuple[int, str, float]] = field(default_factory=list)
    """(global step, token, mean attention) of each phase-2 method report."""
    method: str = ""
    """The latest method report in words: attention outside the regions, faces found, skipped steps."""
    method_warnings: list[str] = field(default_factory=list)


def method_summary(report: MethodReport) -> str:
    """One line of what the method did: share of each token's attention outside its region, faces found, skips."""
    parts = [
        f"{token} {share:.0%} outside its region" for token, share in sorted(report.outside_share.items())
    ]
    if report.detection_rate is not None:
        tried = sum(tries for _, tries in report.face_found.values())
        parts.append(f"faces found in {report.detection_rate:.0%} of {tried} identity estimates")
    if report.skipped_steps:
        parts.append(f"{report.skipped_steps} of {report.steps} steps skipped (fp16 overflow)")
    return " · ".join(parts)


def fold(events: list[Any]) -> TrainingView:
    """The view after ``events`` (engine event objects, in order)."""
    view = TrainingView(state="starting", message="Preparing the training…")
    for event in events:
        if isinstance(event, Status):
            view.message = event.message
        elif isinstance(event, PhaseStarted):
            view.state, view.phase, view.message = "running", event.phase, event.description
        elif isinstance(event, StepDone):
            if view.losses and view.losses[-1][0] >= event.global_step:
                # A resumed run repeats the steps after its checkpoint: its new values replace the old.
                view.losses = [row for row in view.losses if row[0] < event.global_step]
            view.state = "running"
            view.phase, view.step, view.total = event.phase, event.global_step, event.total_steps
            view.eta_s, view.it_per_s, view.lr = event.eta_s, event.it_per_s, event.lr
            view.losses.extend((event.global_step, term, value) for term, value in event.losses.items())
        elif isinstance(event, PreviewSaved):
            view.preview_images[event.global_step] = list(event.images)
            view.previews = [
                (path, f"step {event.global_step} · seed {i}") for i, path in enumerate(event.images)
            ]
            view.attention = [
                (path, f"{token} · step {event.global_step}")
                for token, paths in event.attention_maps.items()
                for path in paths
            ]
        elif isinstance(event, MethodReport):
            view.attention_levels = [row for row in view.attention_levels if row[0] < event.global_step]
            view.attention_levels.extend(
                (event.global_step, t, v) for t, v in sorted(event.attention.items())
            )
            view.method = method_summary(event)
        elif isinstance(event, MethodWarning):
            if event.message not in view.method_warnings:
                view.method_warnings.append(event.message)
        elif isinstance(event, CheckpointSaved):
            view.checkpoint = f"Checkpoint saved at step {event.global_step}."
        elif isinstance(event, Finished):
            view.state = "done"
            view.step = view.total = max(view.total, view.step)
            view.message = f"Finished in {duration(event.seconds)}."
        elif isinstance(event, Cancelled):
            view.state = "cancelled"
            view.message = f"Cancelled at step {event.global_step}" + (
                "; resume continues from the last checkpoint." if event.checkpoint else "."
            )
        elif isinstance(event, Failed):
            view.state, view.message = "failed", event.message
    view.identity = identity_curve(events)
    view.step_seconds = preflight.step_seconds(events)
    jump = preflight.step_time_jump(view.step_seconds.get(view.phase, []))
    if jump is not None and view.state == "running":
        view.warnings.append(preflight.jump_warning(jump))
    view.warnings.extend(view.method_warnings)
    return view


def refined(view: TrainingView, job: Job | None) -> TrainingView:
    """The view with the pre-flight estimate of the job's run corrected by its steps so far.

    The time left comes from the measured wall rate of the recent steps, previews and checkpoints
    included, the warm-up step left out (`engine.preflight.wall_step_seconds`).
    """
    found = job.estimate if job is not None else None
    if found is None or view.state != "running":
        return view
    first = found.steps[0]
    done = (view.step, 0) if view.phase == 1 else (first, max(view.step - first, 0))
    better = preflight.refine(found, view.step_seconds, peak_bytes=preflight.measured_peak(), done=done)
    wall = preflight.wall_step_seconds(view.step_seconds.get(view.phase, ()))
    left = preflight.remaining_seconds(better, wall, view.phase)
    view.eta_s = left if left is not None else view.eta_s
    view.warnings = [*better.warnings, *view.warnings]
    return view


def progress_html(view: TrainingView, job: Job | None) -> str:
    """The progress bar with phase, step, speed and ETA."""
    if job is not None and job.status == QUEUED:
        return "<div class='mc-empty'>Waiting in the queue for the job before it to finish…</div>"
    if view.state == "idle":
        return (
            "<div class='mc-empty'>No training yet. Add photos, pick a preset and press "
            "<b>Start training</b>; the progress, losses and previews appear here.</div>"
        )
    fraction = view.step / view.total if view.total else 0.0
    if view.state == "done":
        fraction = 1.0
    parts = [
        f"Phase {view.phase} of 2" if view.phase else "",
        f"step {view.step} / {view.total}" if view.total else "",
    ]
    if view.state == "running" and view.it_per_s:
        parts.append(f"{view.it_per_s:.2f} it/s")
    if view.state == "running" and view.lr is not None:
        parts.append(f"lr {view.lr:.1e}")
    if view.state == "running" and view.eta_s is not None:
        parts.append(f"ETA {duration(view.eta_s)}")
    icon = {"done": "✓", "failed": "✗", "cancelled": "■", "interrupted": "❚❚"}.get(view.state, "●")
    details = " · ".join(p for p in parts if p)
    message = html.escape(view.message)
    checkpoint = f"<br><small>{html.escape(view.checkpoint)}</small>" if view.checkpoint else ""
    if view.method:
        checkpoint += f"<br><small class='mc-method'>{html.escape(view.method)}</small>"
    warnings = "".join(
        f"<div class='mc-refused mc-train-warning'>⚠ {html.escape(warning)}</div>"
        for warning in view.warnings
    )
    return (
        f"<div id='train-progress' data-state='{view.state}'><b>{icon} {details}</b> {message}"
        f"<div class='mc-progress'><div style='width:{100 * fraction:.1f}%'></div></div>{checkpoint}"
        f"{warnings}</div>"
    )


def loss_frame(view: TrainingView) -> pd.DataFrame | None:
    """Loss points as a long table (step, term, value), thinned to `MAX_PLOT_POINTS` per term.

    None when there are no points yet: the browser's plot keeps the column types of the first table
    it gets, so an empty (untyped) table must never reach it.
    """
    if not view.losses:
        return None
    frame = pd.DataFrame(view.losses, columns=["step", "term", "value"])
    stride = max(1, int(frame["step"].nunique() / MAX_PLOT_POINTS + 0.999))
    return frame[frame["step"] % stride == 0] if stride > 1 else frame


def identity_frame(view: TrainingView) -> pd.DataFrame | None:
    """The identity curve as a table (step, identity); None before the first scored preview (see `loss_frame`)."""
    if not view.identity:
        return None
    return pd.DataFrame(view.identity, columns=["step", "identity"])


def identity_range(scores: list[float]) -> list[float]:
    """The identity axis: the scores' range widened to at least `IDENTITY_SPAN`, inside the cosine's -1 to 1."""
    low, high = math.floor(min(scores) * 100) / 100, math.ceil(max(scores) * 100) / 100
    if high - low < IDENTITY_SPAN:
        middle = (low + high) / 2
        low, high = middle - IDENTITY_SPAN / 2, middle + IDENTITY_SPAN / 2
        shift = max(-1.0 - low, 0.0) - max(high - 1.0, 0.0)
        low, high = low + shift, high + shift
    return [round(low, 2), round(high, 2)]


def identity_chart(view: TrainingView) -> gr.LinePlot:
    """The identity curve with its axis (`identity_range`), so that noise between previews looks flat."""
    frame = identity_frame(view)
    return gr.LinePlot(frame, y_lim=None if frame is None else identity_range(frame["identity"].tolist()))


def attention_frame(view: TrainingView) -> pd.DataFrame | None:
    """Each token's mean attention per report (step, token, attention); None before the first (see `loss_frame`)."""
    if not view.attention_levels:
        return None
    return pd.DataFrame(view.attention_levels, columns=["step", "token", "attention"])


def estimate_text(config: TrainingConfig) -> str:
    """The pre-flight estimate of ``config`` on this machine, as Markdown: the steps the run will do."""
    try:
        found = preflight.estimate(config)
    except preflight.PreflightError as error:  # how to rebuild the table is for the maintainers' log
        logger.warning("Pre-flight estimate unavailable: %s", error)
        steps = config.phase1_steps + config.phase2_steps
        return (
            f"**Pre-flight estimate:** {steps:,} steps; no measured figures are installed, so the time "
            "and memory come from the first steps of the run."
        )
    return "**Pre-flight estimate:** " + preflight.summary(found).replace("\n", "\n\n")


# -- runs on disk --------------------------------------------------------------------------


def replay(events_file: Path) -> TrainingView:
    """The view of a run from its ``events.jsonl`` (cached until the file changes)."""
    try:
        stat = events_file.stat()
    except FileNotFoundError:
        return fold([])
    return copy.deepcopy(_replayed(events_file, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)
def _replayed(events_file: Path, mtime_ns: int, size: int) -> TrainingView:
    return fold(read_events(events_file))


def newest_run(project: Project) -> RunRecord | None:
    """The project's run started last, or None."""
    return next(reversed(runs(project)), None)


def disk_view(project: Project) -> TrainingView:
    """The project's newest run as recorded on disk (by this studio before a restart, or the CLI)."""
    from engine.training import resume_available

    run = newest_run(project)
    if run is None:
        return TrainingView()
    view = replay(project.path(RUNS, run.id, "events.jsonl"))
    if not run.finished and resume_available(project) == run.id:
        view.state = "interrupted"
        view.message = f"Training {run.id} stopped before the end; resume continues from its last checkpoint."
    elif run.finished:
        view.state = "done"
    return view


def best_checkpoint(project: Project, view: TrainingView, idle: bool) -> tuple[str, list, bool, bool]:
    """The best-checkpoint area of the project's newest run.

    Its text (best step, score, what generation uses), the best preview's images, and whether the
    buttons "use this checkpoint" and "use the final weights" are offered (only while no job trains it).
    """
    from engine.training import best_preview

    run = newest_run(project)
    best = best_preview(project, run.id) if run else None
    if run is None or best is None:
        return (
            "**Best checkpoint:** none yet; it appears once a preview with a face has been scored.",
            [],
            False,
            False,
        )
    images = view.preview_images.get(best.step)
    if images is None:  # a resumed run's job only holds the events since the resume
        images = replay(project.path(RUNS, run.id, "events.jsonl")).preview_images.get(best.step, [])
    chosen = run.artefact_step
    in_use = (
        f"the checkpoint of step {chosen}"
        if chosen is not None
        else "the final weights"
        if run.finished
        else "nothing yet (the run has not finished)"
    )
    text = (
        f"**Best checkpoint:** step {best.step}, identity {best.identity_mean:.3f}. "
        f"Generation uses **{in_use}**."
    )
    gallery = [(path, f"step {best.step} · seed {i}") for i, path in enumerate(images)]
    return text, gallery, idle, idle and run.finished


def latest_view(studio: Studio, name: str | None) -> tuple[TrainingView, Job | None]:
    """The training to show for a project: its job in this session, else its newest run on disk."""
    if not name:
        return TrainingView(), None
    job = studio.runner.latest(name, "train")
    if job is None:
        return disk_view(studio.store.open(name)), None
    view = fold([*job.history, *job.event_list()])
    if job.status == FAILED and view.state != "failed":
        view.state, view.message = "failed", job.error or "The training failed."
    elif job.status == CANCELLED and view.state not in ("cancelled", "failed"):
        view.state, view.message = "cancelled", "Cancelled; resume continues from the last checkpoint."
    elif job.status == DONE:
        view.state = "done"
    return view, job


# -- starting jobs -------------------------------------------------------------------------


def preset_help(studio: Studio, name: str) -> str:
    """What the preset is for and the steps a run of it does here (demo mode shortens them)."""
    values = start_values(studio, name)
    where = " in demo mode" if studio.demo is not None else ""
    return (
        f"**{name}**: {PRESET_HELP.get(name, '')} {values.phase1_steps + values.phase2_steps:,} steps "
        f"({values.phase1_steps:,} + {values.phase2_steps:,}){where}."
    )


def start_values(studio: Studio, preset_name: str) -> TrainingConfig:
    """The values the Advanced fields start from: the preset at the base family's native size,
    shortened in demo mode (the tiny models' size)."""
    if studio.demo is not None:
        return preset(preset_name, **DEMO_DEFAULTS, resolution=studio.demo.resolution)
    family = studio.base_family()
    return preset(preset_name, **({"resolution": family.native_resolution} if family else {}))


def make_config(studio: Studio, preset_name: str, profile: str, advanced: dict[str, Any]) -> TrainingConfig:
    """The run's config: the preset, the user's advanced values, the base model and the demo's fixed values."""
    overrides = {"base_model": studio.base_model, "vram_profile": profile, **advanced}
    if studio.demo is not None:
        overrides.update(
            DEMO_FIXED, resolution=studio.demo.resolution, tiny_decoder_model=str(studio.demo.tiny_decoder)
        )
    try:
        return preset(preset_name, **overrides)
    except ConfigError as error:
        raise gr.Error(str(error)) from error


def submit_training(studio: Studio, project: Project, config: TrainingConfig, *, resume: bool = False) -> Job:
    """Queue a training of ``project``; a second one for the same project is refused with a reason.

    A resume job's view starts with its run's history, read here before the job appends to it.
    """
    from engine.training import resume_available

    run = resume_available(project) if resume else None
    past = read_events(project.path(RUNS, run, "events.jsonl")) if run else []
    history = [event for event in past if not isinstance(event, (Finished, Cancelled, Failed))]

    def work(job: Job) -> Path:
        from engine.training import train

        return train(
            project,
            config,
            on_event=job.emit,
            cancel=job.cancel,
            resume=run or resume,
            face_kit=studio.face_kit(),
        )

    verb = "Resumed training" if resume else "Training"
    job = studio.runner.submit(
        "train", project.name, f"{verb} of {project.name}", work, key=f"train:{project.name}"
    )
    job.history = history
    with contextlib.suppress(preflight.PreflightError):
        job.estimate = preflight.estimate(config)
    return job


def can_resume(studio: Studio, name: str | None) -> bool:
    from engine.training import resume_available

    return bool(name) and resume_available(studio.store.open(name)) is not None


def readiness(studio: Studio, name: str | None) -> str:
    if not name:
        return "Open or create a project first (step 1)."
    project = studio.store.open(name)
    sources, references = len(photo_records(project, "source")), len(photo_records(project, "reference"))
    notes = [f"**{sources}** selfie(s) and **{references}** style reference(s)."]
    if not sources or not references:
        notes.append("⚠ Training needs at least one of each; add them in step 2.")
    elif sources < 4 or references < 4:
        notes.append("Works with fewer, but 4-6 of each give better likeness and style.")
    return " ".join(notes)


def queue_html(studio: Studio) -> str:
    items = []
    for job in studio.runner.jobs()[:8]:
        state = {RUNNING: "● running", QUEUED: "waiting", DONE: "✓ done", FAILED: "✗ failed"}.get(
            job.status, "■ cancelled"
        )
        items.append(f"<li>{state}: {html.escape(job.title)}</li>")
    if not items:
        return "<i>The queue is empty. One GPU job runs at a time; others wait here.</i>"
    return f"<ul class='mc-queue'>{''.join(items)}</ul>"


# -- events --------------------------------------------------------------------------------


class LiveView(NamedTuple):
    """The Train tab's live view, in the order of its outputs (values from `refresh`, components in `build`)."""

    ready: Any
    progress: Any
    plot: Any
    identity_plot: Any
    attention_plot: Any
    previews: Any
    attention: Any
    best_text: Any
    best_images: Any
    use_best: Any
    use_final: Any
    resume: Any
    queue: Any
    seen: Any


def refresh(studio: Studio, name: str | None, last: Any, force: bool = False) -> LiveView:
    """The live view of the project's training; all but the queue skipped while it has not changed."""
    if name not in studio.store.list():
        name = None
    view, job = latest_view(studio, name)
    view = refined(view, job)
    status = readiness(studio, name)
    signature = [
        name,
        status,
        job.id if job else None,
        job.status if job else None,
        view.state,
        view.step,
        view.warnings,
        view.identity,
        view.method,
        len(view.attention_levels),
        [path for path, _ in view.previews],
    ]
    if not force and signature == last:
        skipped = [gr.skip()] * len(LiveView._fields)
        return LiveView(*skipped)._replace(queue=queue_html(studio))
    idle = job is None or not job.active
    resumable = idle and view.state in ("interrupted", "cancelled", "failed") and can_resume(studio, name)
    best = best_checkpoint(studio.store.open(name), view, idle) if name else ("", [], False, False)
    return LiveView(
        ready=status,
        progress=progress_html(view, job),
        plot=loss_frame(view),
        identity_plot=identity_chart(view),
        attention_plot=attention_frame(view),
        previews=view.previews,
        attention=view.attention,
        best_text=best[0],
        best_images=gr.Gallery(best[1], visible=bool(best[1])),
        use_best=gr.Button(visible=best[2]),
        use_final=gr.Button(visible=best[3]),
        resume=gr.Button(visible=resumable),
        queue=queue_html(studio),
        seen=signature,
    )


def on_run(
    studio: Studio, name: str | None, preset_name: str, profile_name: str, *values: Any, resume: bool = False
) -> LiveView:
    """Queue a training (or the resume of the project's stopped run) with the tab's settings."""
    project = studio.project(name)
    if not resume and not photos_ready(project):
        raise gr.Error("Training needs at least one selfie and one style reference; add them in step 2.")
    config = make_config(studio, preset_name, profile_name, advanced_values(values))
    try:
        job = submit_training(studio, project, config, resume=resume)
    except JobRefused as error:
        raise gr.Error(str(error)) from error
    for warning in job.estimate.warnings if job.estimate else ():
        gr.Warning(warning)
    gr.Info(
        f"{job.title} is queued behind the running job." if job.status == QUEUED else f"{job.title} started."
    )
    return refresh(studio, name, None, force=True)


def on_cancel(studio: Studio, name: str | None) -> None:
    """Ask the project's running training to stop."""
    job = studio.runner.latest(name, "train") if name else None
    if job is None or not job.active:
        raise gr.Error("No training of this project is running.")
    studio.runner.cancel(job.id)
    gr.Info("Cancelling… the run stops after the current step and keeps its last checkpoint.")


def on_use(studio: Studio, name: str | None, best: bool) -> LiveView:
    """Make generation use the best preview checkpoint (``best``) or the final weights."""
    from engine.training import TrainingError, best_preview, use_preview

    project = studio.project(name)
    run = newest_run(project)
    chosen = best_preview(project, run.id) if run and best else None
    try:
        if run is None or (best and chosen is None):
            raise TrainingError("This project has no scored preview checkpoint to choose yet.")
        use_preview(project, run.id, chosen.step if chosen else None)
    except TrainingError as error:
        gr.Warning(str(error))
    else:
        gr.Info(
            f"Generation now uses the checkpoint of step {chosen.step}."
            if chosen
            else "Generation now uses the final weights."
        )
    return refresh(studio, name, None, force=True)


def on_project(
    studio: Studio, name: str | None, shown: str | None, preset_name: str, profile_name: str, *values: Any
) -> list[Any]:
    """The live view and the estimate of another project, then the project shown; nothing for the
    project already shown.

    Gradio fires the project picker's change event again for the same project (a burst as tabs
    open and update); drawing the tab again would read the run, the photos and the estimate afresh.
    """
    if name and name == shown:
        return [*[gr.skip()] * len(LiveView._fields), gr.skip(), shown]
    estimate = on_estimate(studio, preset_name, profile_name, *values)
    return [*refresh(studio, name, None, force=True), estimate, name]


def on_preset(studio: Studio, name: str) -> list[Any]:
    """The preset's help, then the values the Advanced fields start from."""
    values = start_values(studio, name)
    return [preset_help(studio, name)] + [getattr(values, key) for key in ADVANCED]


def on_estimate(studio: Studio, preset_name: str, profile_name: str, *values: Any) -> str:
    """The pre-flight estimate of the tab's settings."""
    try:
        config = make_config(studio, preset_name, profile_name, advanced_values(values))
    except gr.Error as error:
        return f"Pre-flight estimate unavailable: {error.message}"
    return estimate_text(config)


# -- layout --------------------------------------------------------------------------------


def build(studio: Studio, current: gr.Dropdown, tabs: gr.Tabs, timer: gr.Timer, tab: gr.Tab) -> None:
    """Lay out the Train tab and wire its events."""
    default_preset = "fast" if studio.demo is not None else "released"
    initial = start_values(studio, default_preset)
    ready = gr.Markdown(elem_id="train-readiness")
    with gr.Row():
        with gr.Column(scale=2):
            preset_choice = gr.Radio(list(PRESETS), value=default_preset, label="Preset")
            help_text = gr.Markdown(preset_help(studio, default_preset))
        with gr.Column(scale=1):
            profile = gr.Dropdown(
                list(PROFILE_NAMES),
                value="auto",
                label="GPU memory profile",
                info="auto: picked from your GPU's memory (shown in the status line above).",
            )
    estimate_box = gr.Markdown(elem_id="train-estimate")
    with gr.Accordion("Advanced settings", open=False):
        if studio.demo is not None:
            gr.Markdown("Demo mode starts from a few CPU steps of the tiny model at 64 pixels.")
        fields = {item.name: item for item in TrainingConfig.__dataclass_fields__.values()}
        advanced = []
        with gr.Row():
            for name in ADVANCED:
                choices = fields[name].metadata.get("choices")
                control = functools.partial(gr.Dropdown, choices=list(choices)) if choices else gr.Number
                advanced.append(
                    control(
                        value=getattr(initial, name),
                        label=name.replace("_", " "),
                        info=fields[name].metadata["help"],
                        elem_id=f"advanced-{name}",
                    )
                )
    with gr.Row():
        start = gr.Button("▶ Start training", variant="primary", elem_id="start-training")
        cancel = gr.Button("■ Cancel", variant="stop", elem_id="cancel-training")
        resume = gr.Button("⟲ Resume", elem_id="resume-training", visible=False)
    progress = gr.HTML(progress_html(TrainingView(), None), elem_id="train-progress-box")
    with gr.Row(elem_id="train-curves"):
        with gr.Column(scale=1):
            plot = gr.LinePlot(
                loss_frame(TrainingView()),
                x="step",
                y="value",
                color="term",
                title="Losses",
                height=280,
                elem_id="loss-plot",
            )
        with gr.Column(scale=1, elem_id="identity-curve-column"):
            gr.Markdown(
                f"**{IDENTITY_TITLE}**: higher is more like the person; a point per preview. "
                "Where the detector finds no face yet, the preview is scored where the face sits in "
                "your selfie crops.",
                elem_id="identity-curve-heading",
            )
            identity_plot = gr.LinePlot(
                identity_frame(TrainingView()),
                x="step",
                y="identity",
                title=IDENTITY_TITLE,
                height=280,
                elem_id="identity-plot",
            )
    with gr.Row(elem_id="attention-curve-row"):
        gr.Markdown(
            f"**{ATTENTION_TITLE}**: a point per preview in phase 2. A token whose line falls toward zero "
            "has stopped looking at the picture (a warning above says which setting to change).",
            elem_id="attention-curve-heading",
        )
        attention_plot = gr.LinePlot(
            attention_frame(TrainingView()),
            x="step",
            y="attention",
            color="token",
            title=ATTENTION_TITLE,
            height=220,
            elem_id="attention-plot",
        )
    with gr.Row():
        previews = gr.Gallery(
            fit_columns=False,
            label="Latest previews (composed prompt)",
            columns=4,
            height=260,
            elem_id="train-previews",
        )
        attention = gr.Gallery(
            fit_columns=False,
            label="Where the tokens look (<sks> = the person, <style1> = the style)",
            columns=4,
            height=260,
            elem_id="train-attention",
        )
    with gr.Column(elem_id="best-checkpoint"):
        best_text = gr.Markdown(elem_id="best-checkpoint-text")
        best_images = gr.Gallery(
            fit_columns=False,
            label="Previews of the best checkpoint",
            columns=4,
            height=180,
            elem_id="best-checkpoint-images",
            visible=False,
        )
        with gr.Row():
            use_best = gr.Button("Use this checkpoint for generation", visible=False, elem_id="use-best")
            use_final = gr.Button("Use the final weights", visible=False, elem_id="use-final")
    with gr.Accordion("Queue", open=False):
        queue = gr.HTML(queue_html(studio))
    next_step = gr.Button("Next: generate →", variant="primary")
    seen = gr.State(None)

    outputs = list(
        LiveView(
            ready=ready,
            progress=progress,
            plot=plot,
            identity_plot=identity_plot,
            attention_plot=attention_plot,
            previews=previews,
            attention=attention,
            best_text=best_text,
            best_images=best_images,
            use_best=use_best,
            use_final=use_final,
            resume=resume,
            queue=queue,
            seen=seen,
        )
    )
    settings = [current, preset_choice, profile, *advanced]
    for control in (preset_choice, profile, *advanced):
        control.change(bind(on_estimate, studio), settings[1:], estimate_box, show_progress="hidden")
    shown = gr.State(None)
    current.change(
        bind(on_project, studio),
        [current, shown, *settings[1:]],
        [*outputs, estimate_box, shown],
        show_progress="hidden",
    )
    start.click(bind(on_run, studio), settings, outputs)
    resume.click(lambda *values: on_run(studio, *values, resume=True), settings, outputs)
    cancel.click(bind(on_cancel, studio), current, None)
    use_best.click(lambda name: on_use(studio, name, best=True), current, outputs)
    use_final.click(lambda name: on_use(studio, name, best=False), current, outputs)
    preset_choice.change(bind(on_preset, studio), preset_choice, [help_text, *advanced])
    timer.tick(bind(refresh, studio), [current, seen], outputs, show_progress="hidden")
    tab.select(  # the photo counts change in step 2
        lambda name: refresh(studio, name, None, force=True), current, outputs, show_progress="hidden"
    )
    next_step.click(lambda: gr.Tabs(selected="generate"), None, tabs)


def photos_ready(project: Project) -> bool:
    return bool(photo_records(project, "source")) and bool(photo_records(project, "reference"))


def advanced_values(values: tuple) -> dict[str, str | int | float]:
    """The Advanced fields' values by setting name (empty fields keep the preset's value)."""
    return {
        key: value if isinstance(value, str) else int(value) if float(value).is_integer() else float(value)
        for key, value in zip(ADVANCED, values, strict=True)
        if value is not None
    }
