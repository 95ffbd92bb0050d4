"""Project step: create, open and delete projects (one per client or subject)."""

from __future__ import annotations

import html

import gradio as gr

from engine.outputs import output_records
from engine.photos import photo_records
from engine.runs import runs
from engine.store import StoreError
from studio.jobs import JobRefused
from studio.state import Studio, bind


def summary(studio: Studio, name: str | None) -> str:
    """An HTML card for the open project, or the empty state."""
    if not name:
        if not studio.store.list():
            return (
                "<div class='mc-empty'><b>No projects yet.</b><br>Create one for each client or subject: "
                "give it a name on the right, then add their selfies and a few style photos.</div>"
            )
        return "<div class='mc-empty'>Pick a project in <b>Open project</b> above, or create a new one.</div>"
    try:
        opened = studio.store.open(name)
        manifest, notice = opened.manifest(), opened.manifest_notice()
    except StoreError as error:
        return f"<div class='mc-empty mc-refused'>{html.escape(str(error))}</div>"
    rows = [
        ("Selfies", len(photo_records(opened, "source")), "4-6 recommended"),
        ("Style references", len(photo_records(opened, "reference")), "4-6 recommended"),
        ("Trainings", len(runs(opened)), ""),
        ("Portraits", len(output_records(opened)), ""),
    ]
    cells = "".join(
        f"<tr><td>{label}</td><td><b>{count}</b></td><td>{hint}</td></tr>" for label, count, hint in rows
    )
    title = html.escape(str(manifest.get("name", name)))
    warning = f"<div class='mc-refused' id='manifest-notice'>⚠ {html.escape(notice)}</div>" if notice else ""
    return f"{warning}<h3>{title}</h3><p>Created {html.escape(str(manifest.get('created', '?')))}</p><table>{cells}</table>"


def on_create(studio: Studio, text: str):
    """Create the project named ``text`` and open it."""
    try:
        project = studio.store.create(text.strip())
    except StoreError as error:
        raise gr.Error(str(error)) from error
    gr.Info(f"Project {project.name} created.")
    return gr.Dropdown(choices=studio.store.list(), value=project.name), ""


def on_confirm_delete(studio: Studio, name: str | None, confirmed: bool):
    """First step of a delete: empty the picker (its choices kept) and hold the name to delete.

    Timers send the picker's value every second; an event still carrying the old name must find it
    among the choices, so the choices lose it only in the second step, once the picker is empty.
    """
    if not name or not confirmed:
        # a warning, not an error: an error would mark the outputs (the box) with a red "Error" badge
        gr.Warning(
            "Open the project to delete first."
            if not name
            else "Tick the box to confirm; deleting a project cannot be undone."
        )
        return gr.skip(), None
    return gr.Dropdown(value=None), name


def on_delete(studio: Studio, name: str | None):
    """Second step: delete the held project, unless a job holds it; the picker offers what is left."""
    if not name:
        return gr.skip(), gr.skip(), None
    try:
        with studio.runner.hold(name, "deleted"):
            studio.store.delete(name)
    except (JobRefused, StoreError) as error:
        gr.Warning(str(error))
        return gr.Dropdown(choices=studio.store.list(), value=name), gr.skip(), None
    gr.Info(f"Project {name} deleted.")
    return gr.Dropdown(choices=studio.store.list(), value=None), False, None


def build(studio: Studio, current: gr.Dropdown, tabs: gr.Tabs) -> None:
    """Lay out the Project tab and wire its events."""
    with gr.Row():
        with gr.Column(scale=3):
            card = gr.HTML(summary(studio, None), elem_id="project-summary")
            next_step = gr.Button("Next: add photos →", variant="primary")
        with gr.Column(scale=2):
            gr.Markdown("### New project")
            name = gr.Textbox(
                label="Name", placeholder="e.g. Anna Smith, headshots 2025", elem_id="new-project-name"
            )
            create = gr.Button("Create project", variant="primary", elem_id="create-project")
            with gr.Accordion("Delete the open project", open=False):
                confirm = gr.Checkbox(label="Yes, delete it with all its photos, trainings and portraits")
                delete = gr.Button("Delete project", variant="stop")

    create.click(bind(on_create, studio), name, [current, name])
    name.submit(bind(on_create, studio), name, [current, name])
    pending = gr.State(None)
    delete.click(bind(on_confirm_delete, studio), [current, confirm], [current, pending]).then(
        bind(on_delete, studio), pending, [current, confirm, pending]
    )
    current.change(lambda value: summary(studio, value), current, card, show_progress="hidden")
    next_step.click(lambda: gr.Tabs(selected="photos"), None, tabs)
