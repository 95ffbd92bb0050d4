"""Generate step: prompt words, style ideas, seeds, count, post-processing; runs as a background job."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import gradio as gr

from engine.events import Failed, Finished, Status, StepDone
from studio.jobs import CANCELLED, DONE, FAILED, QUEUED, Job, JobRefused

if TYPE_CHECKING:
    from engine.store import Project
    from studio.app import Studio

SAMPLERS = ("euler_a", "dpmpp_2m_karras", "ddim")
RESTORERS = ("none", "gfpgan", "codeformer")
OUTPUT_PRESETS = ("none", "passport-eu", "passport-us", "headshot-1024", "headshot-2048")
DEMO_STEPS = 4


def finished_runs(project: Project) -> list[str]:
    """Ids of the project's finished training runs, newest first."""
    runs = project.manifest().get("trainings", [])
    return [run["id"] for run in reversed(runs) if run.get("status") == "finished"]


def submit_generation(studio: Studio, project: Project, run: str | None, request: dict[str, Any]) -> Job:
    """Queue a batch of portraits (and their post-processing) as one job."""

    def work(job: Job) -> list[Any]:
        from engine.generate import GenerationSettings, generate
        from engine.postprocess import postprocess_output

        settings = GenerationSettings(
            prompt_extra=request["prompt_extra"],
            count=request["count"],
            seed=request["seed"],
            sampler=request["sampler"],
            steps=request["steps"],
            guidance_scale=request["guidance"],
        )
        records = generate(
            project, run, settings, face_kit=studio.face_kit(), on_event=job.emit, cancel=job.cancel
        )
        post = request["restore"] != "none" or request["upscale"] > 1 or request["preset"] != "none"
        if not post:
            return records
        done = []
        for index, record in enumerate(records):
            job.emit(Status(message=f"Post-processing portrait {index + 1} of {len(records)}…"))
            done.append(
                postprocess_output(
                    project,
                    record.id,
                    restore=None if request["restore"] == "none" else request["restore"],
                    upscale=request["upscale"],
                    preset=None if request["preset"] == "none" else request["preset"],
                )
            )
        return done

    return studio.runner.submit(
        "generate", project.name, f"Portraits of {project.name}", work, key=f"generate:{project.name}"
    )


def submit_references(studio: Studio, project: Project, prompt: str, count: int) -> Job:
    """Queue the making of style references from a text prompt with the base model."""
    if not prompt.strip():
        raise gr.Error("Describe the style first, e.g. 'studio headshot, soft light, grey backdrop'.")

    def work(job: Job) -> Any:
        from engine.generate import make_references

        return make_references(
            project,
            prompt,
            count,
            base_model=studio.base_model,
            kit=studio.face_kit(),
            on_event=job.emit,
            cancel=job.cancel,
        )

    try:
        return studio.runner.submit(
            "references",
            project.name,
            f"Style references for {project.name}",
            work,
            key=f"references:{project.name}",
        )
    except JobRefused as error:
        raise gr.Error(str(error)) from error


def progress_html(job: Job | None) -> str:
    if job is None:
        return "<div class='mc-empty'>Pick the words and press <b>Generate</b>; new portraits appear here and in the Gallery.</div>"
    if job.status == QUEUED:
        return "<div class='mc-empty'>🕒 Waiting for the running job to finish…</div>"
    events = job.event_list()
    steps = [e for e in events if isinstance(e, StepDone)]
    message = next((e.message for e in reversed(events) if isinstance(e, (Status, Failed))), "")
    fraction = steps[-1].global_step / steps[-1].total_steps if steps and steps[-1].total_steps else 0.0
    if job.status == DONE or any(isinstance(e, Finished) for e in events):
        fraction, message = (
            1.0,
            f"Done: {len(job.result or [])} portrait(s). See them best-first in the Gallery.",
        )
    elif job.status == FAILED:
        message = job.error or message
    elif job.status == CANCELLED:
        message = "Cancelled."
    icon = {DONE: "✅", FAILED: "❌", CANCELLED: "⏹"}.get(job.status, "⏳")
    return (
        f"<div id='generate-progress' data-state='{job.status}'><b>{icon}</b> {html.escape(message)}"
        f"<div class='mc-progress'><div style='width:{100 * fraction:.1f}%'></div></div></div>"
    )


def result_items(studio: Studio, job: Job | None) -> list[tuple[str, str]]:
    if job is None or job.status != DONE or not job.result:
        return []
    project = studio.store.open(job.project)
    return [(str(project.path(record.file)), f"seed {getattr(record, 'seed', '?')}") for record in job.result]


def build(studio: Studio, current: gr.Dropdown, tabs: gr.Tabs, timer: gr.Timer, tab: gr.Tab) -> None:
    """Lay out the Generate tab and wire its events."""
    with gr.Row():
        with gr.Column(scale=3):
            run = gr.Dropdown([], label="Trained model", info="Newest first.", elem_id="generate-run")
            extra = gr.Textbox(
                label="Extra prompt words",
                placeholder="e.g. wearing a navy suit, smiling, outdoors",
                elem_id="generate-extra",
            )
            with gr.Row():
                seed = gr.Number(0, label="First seed", precision=0, info="Each portrait uses the next seed.")
                count = gr.Slider(1, 16, value=2 if studio.demo else 4, step=1, label="How many")
        with gr.Column(scale=2):
            restore = gr.Radio(list(RESTORERS), value="none", label="Face restoration")
            upscale = gr.Radio([1, 2, 4], value=1, label="Upscale")
            output_preset = gr.Dropdown(list(OUTPUT_PRESETS), value="none", label="Output preset")
    with gr.Accordion("Sampling", open=False), gr.Row():
        sampler = gr.Dropdown(list(SAMPLERS), value="euler_a", label="Sampler")
        steps = gr.Slider(1, 150, value=DEMO_STEPS if studio.demo else 50, step=1, label="Steps")
        guidance = gr.Slider(1, 20, value=7.0, step=0.5, label="Guidance")
    with gr.Row():
        go = gr.Button("✨ Generate", variant="primary", elem_id="generate-button")
        stop = gr.Button("⏹ Cancel", variant="stop")
    progress = gr.HTML(progress_html(None), elem_id="generate-progress-box")
    results = gr.Gallery(label="This batch", columns=4, height=300, elem_id="generate-results")
    next_step = gr.Button("Next: gallery →", variant="primary")
    seen = gr.State(None)

    def runs(name: str | None):
        choices = finished_runs(studio.store.open(name)) if name else []
        return gr.Dropdown(choices=choices, value=choices[0] if choices else None)

    def refresh(name: str | None, last: Any):
        job = studio.runner.latest(name, "generate") if name else None
        signature = (job.id, job.status, len(job.events)) if job else None
        if signature == last:
            return gr.skip(), gr.skip(), last
        return progress_html(job), result_items(studio, job), signature

    def on_generate(
        name,
        chosen_run,
        words,
        first_seed,
        how_many,
        restorer,
        factor,
        out_preset,
        sampler_name,
        n_steps,
        cfg,
    ):
        project = studio.project(name)
        if not finished_runs(project):
            raise gr.Error("This project has no finished training yet; train it first (step 3).")
        request = {
            "prompt_extra": words.strip(),
            "count": int(how_many),
            "seed": int(first_seed or 0),
            "sampler": sampler_name,
            "steps": int(n_steps),
            "guidance": float(cfg),
            "restore": restorer,
            "upscale": int(factor),
            "preset": out_preset,
        }
        try:
            job = submit_generation(studio, project, chosen_run, request)
        except JobRefused as error:
            raise gr.Error(str(error)) from error
        return progress_html(job), [], None

    def on_cancel(name):
        job = studio.runner.latest(name, "generate") if name else None
        if job is None or not job.active:
            raise gr.Error("No generation of this project is running.")
        studio.runner.cancel(job.id)

    inputs = [current, run, extra, seed, count, restore, upscale, output_preset, sampler, steps, guidance]
    go.click(on_generate, inputs, [progress, results, seen])
    stop.click(on_cancel, current, None)
    timer.tick(refresh, [current, seen], [progress, results, seen], show_progress="hidden")
    current.change(runs, current, run)
    tab.select(runs, current, run)
    next_step.click(lambda: gr.Tabs(selected="gallery"), None, tabs)
