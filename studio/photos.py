"""Photos step: upload selfies and style references; see each crop with its mask, or why it was refused."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from engine.photos import photo_records
from studio.jobs import Job, JobRefused
from studio.state import DEMO_STEPS, Refusal, Studio, bind

if TYPE_CHECKING:
    from engine.store import Project

ROLES = {"source": "selfie", "reference": "style reference"}
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif"]


def submit_references(studio: Studio, project: Project, prompt: str, count: int) -> Job:
    """Queue the painting of style references from a text prompt with the base model."""
    if not prompt.strip():
        raise gr.Error("Describe the style first, e.g. 'studio headshot, soft light, grey backdrop'.")

    def work(job: Job) -> list[Any]:
        from engine.intake import Refused
        from engine.references import make_references

        steps = DEMO_STEPS if studio.demo is not None else 30
        results = make_references(
            project,
            prompt,
            count,
            base_model=studio.base_model,
            kit=studio.face_kit(),
            steps=steps,
            on_event=job.emit,
            cancel=job.cancel,
        )
        for index, result in enumerate(results):
            if isinstance(result, Refused):
                refusal = Refusal(
                    f"painted reference {index + 1}", "reference", result.reason, result.message
                )
                studio.refusals.add(project.name, refusal)
        return results

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


def photo_items(project: Project, role: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Gallery items (preview image, caption) and the matching photo ids, in upload order."""
    items, ids = [], []
    for record in photo_records(project, role):
        picture = record.preview or record.crop
        if not picture:
            continue
        items.append((str(project.path(picture)), record.filename or record.id))
        ids.append(record.id)
    return items, ids


def refusals_html(refusals: list[Refusal]) -> str:
    if not refusals:
        return ""
    rows = "".join(
        f"<li><b>{html.escape(item.reason.replace('_', ' ').capitalize())}</b> · {html.escape(item.filename)} "
        f"({ROLES[item.role]}): {html.escape(item.message)}</li>"
        for item in refusals
    )
    return f"<div class='mc-refused' id='refusals'><b>Not used:</b><ul>{rows}</ul></div>"


def empty_hint(role: str, count: int) -> str:
    if count:
        return f"{count} {ROLES[role]}{'s' if count != 1 else ''} ready. Click one to remove or replace it."
    if role == "source":
        return "No selfies yet. Add 4-6 photos of the person: one face each, different angles and light."
    return "No style references yet. Add 4-6 photos in the look you want (a studio headshot, a painting…)."


VIEWS = 3 * len(ROLES) + 1
"""How many values `views` returns."""


def views(studio: Studio, name: str | None) -> list[Any]:
    """Gallery, ids, hint per role, then the refusals."""
    values: list[Any] = []
    project = studio.project(name) if name else None
    for role in ROLES:
        items, ids = photo_items(project, role) if project else ([], [])
        values += [items, ids, empty_hint(role, len(ids)) if project else ""]
    return [*values, refusals_html(studio.refusals.get(name))]


def add_files(studio: Studio, name: str | None, files: list[str], role: str, progress: gr.Progress) -> int:
    """Pass ``files`` through intake, noting each refusal; returns how many were accepted."""
    from engine.intake import Refused, add_photo, read_photo

    project = studio.project(name)
    if studio.face_kit_loaded() is None:
        progress(0, desc="Loading the face models (the first time, this may download them)…")
    kit = studio.face_kit()
    accepted = 0
    for index, file in enumerate(files):
        path = Path(file)
        progress(index / max(len(files), 1), desc=f"Checking {path.name}")
        outcome = add_photo(project, read_photo(path), path.name, role, kit)
        if isinstance(outcome, Refused):
            studio.refusals.add(project.name, Refusal(path.name, role, outcome.reason, outcome.message))
        else:
            accepted += 1
    return accepted


def on_upload(
    studio: Studio,
    role: str,
    name: str | None,
    files: list[str] | None,
    progress=gr.Progress(),  # noqa: B008 (Gradio's progress idiom)
):
    """Add uploaded photos of ``role``; the views, then the cleared upload box."""
    if not files:
        return [gr.skip()] * (VIEWS + 1)
    studio.refusals.clear(studio.project(name).name)
    add_files(studio, name, files, role, progress)
    return [*views(studio, name), None]


def on_select(ids: list[str], event: gr.SelectData) -> str | None:
    """The id of the clicked photo."""
    return ids[event.index] if 0 <= event.index < len(ids) else None


def on_remove(studio: Studio, role: str, name: str | None, selected: str | None):
    """Remove the selected photo; the views, then the cleared selection."""
    from engine.intake import remove_photo

    if not selected:
        raise gr.Error(f"Click a {ROLES[role]} first, then remove it.")
    remove_photo(studio.project(name), selected)
    return [*views(studio, name), None]


def on_replace(
    studio: Studio,
    role: str,
    name: str | None,
    selected: str | None,
    file: str,
    progress=gr.Progress(),  # noqa: B008 (Gradio's progress idiom)
):
    """Replace the selected photo with ``file``, keeping it when ``file`` is refused."""
    from engine.intake import remove_photo

    if not selected:
        raise gr.Error(f"Click the {ROLES[role]} to replace first.")
    if add_files(studio, name, [file], role, progress):
        remove_photo(studio.project(name), selected)
    else:
        gr.Warning(
            f"{Path(file).name} was not used, so the selected {ROLES[role]} is kept; "
            "the reason is listed under the photos."
        )
    return [*views(studio, name), None]


def on_make(studio: Studio, name: str | None, text: str, how_many: float) -> None:
    """Queue style references painted from ``text``."""
    job = submit_references(studio, studio.project(name), text, int(how_many))
    gr.Info(f"{job.title} is queued; the references appear here when it is done.")


def on_tick(studio: Studio, name: str | None, last: Any):
    """Show the references made from a text prompt as soon as their job ends."""
    job = studio.runner.latest(name, "references") if name else None
    signature = [job.id, job.status] if job else None
    if signature == last:
        return [gr.skip()] * VIEWS + [last]
    return [
        *(views(studio, name) if job is not None and not job.active else [gr.skip()] * VIEWS),
        signature,
    ]


def build(studio: Studio, current: gr.Dropdown, tabs: gr.Tabs, tab: gr.Tab, timer: gr.Timer) -> None:
    """Lay out the Photos tab and wire its events."""
    panels: dict[str, dict[str, Any]] = {}
    with gr.Row():
        for role, title, tip in (
            ("source", "Selfies", "One face per photo; sharp, well lit, different angles."),
            ("reference", "Style references", "Portraits in the style you want; the face is ignored."),
        ):
            with gr.Column():
                gr.Markdown(f"### {title}\n{tip}")
                upload = gr.File(
                    label=f"Add {ROLES[role]}s",
                    file_count="multiple",
                    file_types=IMAGE_TYPES,
                    elem_id=f"upload-{role}",
                )
                hint = gr.Markdown(elem_id=f"hint-{role}")
                shown = gr.Gallery(
                    fit_columns=False,
                    label="Crops with their face masks"
                    if role == "source"
                    else "Crops with their style masks",
                    columns=4,
                    height=320,
                    object_fit="contain",
                    allow_preview=False,
                    elem_id=f"gallery-{role}",
                )
                with gr.Row():
                    remove = gr.Button("Remove selected", size="sm")
                    replace = gr.UploadButton("Replace selected", size="sm", file_types=IMAGE_TYPES)
                panels[role] = {
                    "upload": upload,
                    "hint": hint,
                    "gallery": shown,
                    "remove": remove,
                    "replace": replace,
                    "ids": gr.State([]),
                    "selected": gr.State(None),
                }
    refused = gr.HTML(elem_id="refused-photos")
    with gr.Accordion("No style photos? Make style references from a text prompt", open=False):
        gr.Markdown(
            "The base model paints a few references from your description (e.g. *studio headshot, soft "
            "light, grey backdrop*); you can remove the ones you do not like."
        )
        with gr.Row():
            prompt = gr.Textbox(label="Describe the style", scale=4)
            count = gr.Slider(1, 8, value=4, step=1, label="How many", scale=1)
        make = gr.Button("Make style references")
    next_step = gr.Button("Next: train →", variant="primary")

    outputs = [
        c for role in ROLES for c in (panels[role]["gallery"], panels[role]["ids"], panels[role]["hint"])
    ]
    outputs.append(refused)

    for role, panel in panels.items():
        panel["upload"].upload(
            bind(on_upload, studio, role), [current, panel["upload"]], [*outputs, panel["upload"]]
        )
        panel["gallery"].select(on_select, panel["ids"], panel["selected"])
        panel["remove"].click(
            bind(on_remove, studio, role), [current, panel["selected"]], [*outputs, panel["selected"]]
        )
        panel["replace"].upload(
            bind(on_replace, studio, role),
            [current, panel["selected"], panel["replace"]],
            [*outputs, panel["selected"]],
        )

    made = gr.State(None)
    make.click(bind(on_make, studio), [current, prompt, count], None)
    timer.tick(bind(on_tick, studio), [current, made], [*outputs, made], show_progress="hidden")
    current.change(bind(views, studio), current, outputs, show_progress="hidden")
    tab.select(bind(views, studio), current, outputs, show_progress="hidden")
    next_step.click(lambda: gr.Tabs(selected="train"), None, tabs)
