"""Generate step: prompt words, style and outfit ideas, seeds, count, post-processing; a background job."""

from __future__ import annotations

import html
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from engine.artefact import artefact_family
from engine.events import Failed, ImageStarted, Status, StepDone
from engine.families import DEFAULT_FAMILY
from engine.models import SAMPLERS
from engine.postprocess import RESTORER_LABELS, suggested_postprocess
from engine.preflight import duration
from engine.presets import OutputPreset, presets_for
from engine.runs import resolve_artefact, run_labels
from engine.runs import runs as run_records
from studio.jobs import CANCELLED, DONE, FAILED, QUEUED, Job, JobRefused
from studio.state import DEMO_STEPS, Studio, bind

if TYPE_CHECKING:
    from engine.outputs import OutputRecord
    from engine.store import Project

IDEAS = (
    "wearing a navy suit",
    "in a white shirt",
    "in a black turtleneck",
    "smiling",
    "serious expression",
    "outdoors, golden hour",
    "soft studio light, grey backdrop",
    "black and white",
    "business headshot",
    "oil painting",
)
"""Style and outfit ideas offered as clickable words."""


@dataclass(frozen=True)
class Request:
    """What the user asked for in the Generate tab."""

    prompt_extra: str
    count: int
    seed: int
    sampler: str
    steps: int
    guidance: float
    restore: str | None
    upscale: int
    preset: str | None

    @property
    def postprocess(self) -> bool:
        return self.restore is not None or self.upscale > 1 or self.preset is not None


def finished_runs(project: Project) -> list[str]:
    """Ids of the project's finished training runs, newest first."""
    return [record.id for record in reversed(run_records(project)) if record.finished]


def submit_generation(studio: Studio, project: Project, run: str | None, request: Request) -> Job:
    """Queue a batch of portraits, then their post-processing, as one job."""

    def work(job: Job) -> list[OutputRecord]:
        from engine.generate import GenerationSettings, generate
        from engine.postprocess import postprocess_output

        settings = GenerationSettings(
            prompt_extra=request.prompt_extra,
            count=request.count,
            seed=request.seed,
            sampler=request.sampler,
            steps=request.steps,
            guidance_scale=request.guidance,
        )
        kit = studio.face_kit()
        records = generate(project, run, settings, face_kit=kit, on_event=job.emit, cancel=job.cancel)
        if not request.postprocess:
            return records
        finished = []
        for index, record in enumerate(records):
            if job.cancel.is_set():
                break
            job.emit(Status(message=f"Post-processing portrait {index + 1} of {len(records)}…"))
            finished.append(
                postprocess_output(
                    project,
                    record.id,
                    restore=request.restore,
                    upscale=request.upscale,
                    preset=request.preset,
                    face_kit=kit,
                    commercial=studio.settings.commercial,
                    on_event=job.emit,
                )
            )
        return finished

    return studio.runner.submit(
        "generate", project.name, f"Portraits of {project.name}", work, key=f"generate:{project.name}"
    )


def progress_html(job: Job | None) -> str:
    """The batch's progress bar and latest message."""
    if job is None:
        return (
            "<div class='mc-empty'>Choose the words and press <b>Generate</b>; new portraits appear here "
            "and, best first, in the Gallery.</div>"
        )
    if job.status == QUEUED:
        return "<div class='mc-empty'>Waiting for the running job to finish…</div>"
    events = job.event_list()
    steps = [event for event in events if isinstance(event, StepDone)]
    message = progress_line(events)
    fraction = steps[-1].global_step / steps[-1].total_steps if steps and steps[-1].total_steps else 0.0
    if job.status == DONE:
        fraction = 1.0
        message = f"Done: {len(job.result or [])} portrait(s). See them best-first in the Gallery."
    elif job.status == FAILED:
        message = job.error or message
    elif job.status == CANCELLED:
        message = "Cancelled; the portraits finished so far are in the Gallery."
    icon = {DONE: "✓", FAILED: "✗", CANCELLED: "■"}.get(job.status, "●")
    return (
        f"<div id='generate-progress' data-state='{job.status}'><b>{icon}</b> {html.escape(message)}"
        f"<div class='mc-progress'><div style='width:{100 * fraction:.1f}%'></div></div></div>"
    )


def progress_line(events: list[Any]) -> str:
    """What the batch is doing now: its latest stage (loading, post-processing...), or while it
    samples "Image 2 of 4, step 13/30" with the time left at the batch's own step rate."""
    latest = next(
        (e for e in reversed(events) if isinstance(e, (Status, Failed, ImageStarted, StepDone))), None
    )
    image = next((e for e in reversed(events) if isinstance(e, ImageStarted)), None)
    if latest is None:
        return "Starting…"
    if isinstance(latest, (Status, Failed)) or image is None:
        return getattr(latest, "message", "Generating…")
    step = latest.global_step - (image.index - 1) * image.steps if isinstance(latest, StepDone) else 0
    line = f"Image {image.index} of {image.count}, step {max(step, 0)}/{image.steps}"
    if isinstance(latest, StepDone) and latest.global_step < latest.total_steps:
        line += f" · about {duration(latest.eta_s)} left"
    return line


def result_items(studio: Studio, job: Job | None) -> list[tuple[str, str]]:
    if job is None or job.status != DONE or not job.result:
        return []
    project = studio.store.open(job.project)
    return [(str(project.path(record.file)), f"seed {record.seed}") for record in job.result]


def runs(studio: Studio, name: str | None, chosen: str | None = None):
    """The no-training notice and the project's finished runs: ``chosen`` stays chosen while the
    project still has it, else the newest is.

    Gradio fires the project picker's change event again for the same project (a burst as tabs
    open and update), and the tab's select event comes with every visit: neither may take back an
    older run the user picked.
    """
    project = studio.store.open(name) if name else None
    choices = finished_runs(project) if project else []
    labels = run_labels(project) if project else {}
    value = chosen if chosen in choices else choices[0] if choices else None
    return gr.HTML(visible=bool(name) and not choices), gr.Dropdown(
        choices=[(labels.get(run, run), run) for run in choices], value=value
    )


def preset_choices(offered: dict[str, OutputPreset]) -> list[tuple[str, str]]:
    """The output preset picker's (label, value) pairs, "none" first."""
    return [("none", "none"), *((preset.description, key) for key, preset in offered.items())]


def run_options(studio: Studio, name: str | None, run: str | None, preset: str, shown: str | None):
    """The output presets of the chosen run's model family, its own sizes first (SDXL's 1024 px
    portraits), and, when the family differs from the one shown, its suggested post-processing
    (SDXL: restoration without upscaling); the family shown last.

    The tab opens showing the default family's suggestion, so choosing its run (as the tab does on
    each visit) leaves what the user has already set alone.
    """
    if not name or not run:
        return gr.skip(), gr.skip(), gr.skip(), shown
    family = artefact_family(resolve_artefact(studio.project(name), run)[0])
    offered = presets_for(family.native_resolution)
    presets = gr.Dropdown(choices=preset_choices(offered), value=preset if preset in offered else "none")
    if family.name == shown:
        return presets, gr.skip(), gr.skip(), shown
    suggested = suggested_postprocess(family.native_resolution)
    return presets, suggested.restore or "none", suggested.upscale, family.name


def refresh(studio: Studio, name: str | None, last: Any):
    """The batch's progress and results, skipped while nothing changed."""
    job = studio.runner.latest(name, "generate") if name else None
    signature = [job.id, job.status, len(job.events)] if job else None
    if signature == last:
        return gr.skip(), gr.skip(), last
    return progress_html(job), result_items(studio, job), signature


def on_generate(
    studio: Studio,
    name: str | None,
    chosen_run: str | None,
    words: str,
    picked: list[str] | None,
    first_seed: float | None,
    how_many: float,
    restorer: str,
    factor: float,
    out: str,
    method: str,
    n: float,
    cfg: float,
):
    """Queue a batch of portraits with the tab's choices."""
    project = studio.project(name)
    if not finished_runs(project):
        raise gr.Error("This project has no finished training yet; train it first (step 3).")
    request = Request(
        prompt_extra=", ".join(part for part in [words.strip(), *(picked or [])] if part),
        count=int(how_many),
        seed=int(first_seed or 0),
        sampler=method,
        steps=int(n),
        guidance=float(cfg),
        restore=None if restorer == "none" else restorer,
        upscale=int(factor),
        preset=None if out == "none" else out,
    )
    try:
        job = submit_generation(studio, project, chosen_run, request)
    except JobRefused as error:
        raise gr.Error(str(error)) from error
    return progress_html(job), [], None


def on_cancel(studio: Studio, name: str | None) -> None:
    """Cancel the project's running generation."""
    job = studio.runner.latest(name, "generate") if name else None
    if job is None or not job.active:
        raise gr.Error("No generation of this project is running.")
    studio.runner.cancel(job.id)


def build(studio: Studio, current: gr.Dropdown, tabs: gr.Tabs, timer: gr.Timer, tab: gr.Tab) -> None:
    """Lay out the Generate tab and wire its events."""
    empty = gr.HTML(
        "<div class='mc-empty'>This project has no finished training yet: train it in step 3 first.</div>",
        visible=False,
    )
    with gr.Row():
        with gr.Column(scale=3):
            run = gr.Dropdown([], label="Trained model", info="Newest first.", elem_id="generate-run")
            extra = gr.Textbox(
                label="Extra prompt words",
                placeholder="e.g. wearing a navy suit, smiling, outdoors",
                elem_id="generate-extra",
            )
            ideas = gr.Dropdown(
                list(IDEAS),
                multiselect=True,
                label="Style and outfit ideas",
                info="Added to the prompt words.",
            )
            with gr.Row():
                seed = gr.Number(0, label="First seed", precision=0, info="Portrait i uses seed + i.")
                dice = gr.Button("Random seed", size="sm")
                count = gr.Slider(1, 16, value=2 if studio.demo else 4, step=1, label="How many")
        with gr.Column(scale=2):
            restore = gr.Radio(
                [("none", "none"), *((label, key) for key, label in RESTORER_LABELS.items())],
                value="none",
                label="Face restoration",
            )
            upscale = gr.Radio([1, 2, 4], value=1, label="Upscale ×", elem_id="generate-upscale")
            output_preset = gr.Dropdown(
                preset_choices(presets_for(DEFAULT_FAMILY.native_resolution)),
                value="none",
                label="Output preset",
                info="Sizes for the chosen model's family.",
                elem_id="generate-preset",
            )
    with gr.Accordion("Sampling", open=False), gr.Row():
        sampler = gr.Dropdown(list(SAMPLERS), value="euler_a", label="Sampler")
        steps = gr.Slider(1, 150, value=DEMO_STEPS if studio.demo else 50, step=1, label="Steps")
        guidance = gr.Slider(1, 20, value=7.0, step=0.5, label="Guidance")
    with gr.Row():
        go = gr.Button("Generate", variant="primary", elem_id="generate-button")
        stop = gr.Button("■ Cancel", variant="stop")
    progress = gr.HTML(progress_html(None), elem_id="generate-progress-box")
    results = gr.Gallery(
        fit_columns=False, label="This batch", columns=4, height=300, elem_id="generate-results"
    )
    next_step = gr.Button("Next: gallery →", variant="primary")
    seen = gr.State(None)
    family = gr.State(DEFAULT_FAMILY.name)  # the post-processing choices above are its suggestion

    inputs = [
        current,
        run,
        extra,
        ideas,
        seed,
        count,
        restore,
        upscale,
        output_preset,
        sampler,
        steps,
        guidance,
    ]
    go.click(bind(on_generate, studio), inputs, [progress, results, seen])
    stop.click(bind(on_cancel, studio), current, None)
    dice.click(lambda: random.randrange(2**31), None, seed)
    timer.tick(bind(refresh, studio), [current, seen], [progress, results, seen], show_progress="hidden")
    current.change(bind(runs, studio), [current, run], [empty, run], show_progress="hidden")
    tab.select(bind(runs, studio), [current, run], [empty, run], show_progress="hidden")
    run.change(
        bind(run_options, studio),
        [current, run, output_preset, family],
        [output_preset, restore, upscale, family],
        show_progress="hidden",
    )
    next_step.click(lambda: gr.Tabs(selected="gallery"), None, tabs)
