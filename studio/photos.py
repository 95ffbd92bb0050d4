"""Photos step: upload selfies and style references; see each crop with its mask, or why it was refused."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from engine.intake.checks import MIN_FACE
from engine.photos import photo_records
from studio.jobs import Job, JobRefused
from studio.state import DEMO_STEPS, Refusal, Studio, bind

if TYPE_CHECKING:
    from engine.store import Project

ROLES = {"source": "selfie", "reference": "style reference"}
SOURCE_TIP = "One face per photo; sharp, well lit, different angles."
STYLE_TIP = (
    "Portraits in the look you want, of anyone. Each needs one face clearly visible (at least "
    f"{MIN_FACE} pixels wide, not cut off, sharp), as a selfie does: the face is outlined so that "
    "the style is learnt from everything around it."
)
"""What intake requires of a style reference: the same one usable face as of a selfie."""
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
            demo=studio.demo is not None,
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
    """The "Not used" list: each role's refusals under its own heading."""
    if not refusals:
        return ""
    groups = []
    for role, label in ROLES.items():
        rows = "".join(
            f"<li><b>{html.escape(item.reason.replace('_', ' ').capitalize())}</b> · "
            f"{html.escape(item.filename)}: {html.escape(item.message)}</li>"
            for item in refusals
            if item.role == role
        )
        if rows:
            groups.append(f"<div id='refused-{role}'><i>{label.capitalize()}s</i><ul>{rows}</ul></div>")
    return f"<div class='mc-refused' id='refusals'><b>Not used:</b>{''.join(groups)}</div>"


def references_progress(job: Job | None) -> str:
    """The painting of style references from a prompt: the image and step it is at, then the outcome."""
    from engine.events import Status
    from engine.references import ReferenceProgress

    if job is None:
        return ""
    events = job.event_list()
    painted = [event for event in events if isinstance(event, ReferenceProgress)]
    if job.status == "queued":
        text, state, done, total = "Queued: starts when the job before it ends.", "queued", 0, 1
    elif job.active:
        if painted:
            last = painted[-1]
            done, total = (last.index - 1) * last.steps + last.step, last.count * last.steps
            text = f"Painting style reference {last.index} of {last.count}: step {last.step} of {last.steps}."
        else:
            statuses = [event.message for event in events if isinstance(event, Status)]
            text, done, total = (statuses[-1] if statuses else "Starting…"), 0, 1
        state = "running"
    else:
        outcomes = [event.outcome for event in painted if event.outcome is not None]
        added = outcomes.count("accepted")
        done = total = 1
        state = job.status
        if job.status == "failed":
            text = job.error or "Making the style references failed."
        else:
            text = (
                f"{len(outcomes)} style reference{'s' if len(outcomes) != 1 else ''} painted: {added} added"
            )
            if len(outcomes) > added:
                text += f", {len(outcomes) - added} not used (the reasons are listed under the photos)"
            text += "." if job.status == "done" else "; then it was cancelled."
    bar = f"<progress value='{done}' max='{total}'></progress> " if state == "running" else ""
    return f"<div id='references-status' data-state='{state}'>{bar}{html.escape(text)}</div>"


def empty_hint(role: str, count: int) -> str:
    if count:
        return f"{count} {ROLES[role]}{'s' if count != 1 else ''} ready. Click one to remove or replace it."
    if role == "source":
        return "No selfies yet. Add 4-6 photos of the person: one face each, different angles and light."
    return "No style references yet. Add 4-6 photos in the look you want (a studio headshot, a painting…)."


VIEWS = 4 * len(ROLES) + 2
"""How many values `views` returns."""


def views(studio: Studio, name: str | None) -> list[Any]:
    """Gallery, ids, hint and the dismiss button per role, then the refusals and the samples button."""
    values: list[Any] = []
    project = studio.project(name) if name else None
    photos = 0
    for role in ROLES:
        items, ids = photo_items(project, role) if project else ([], [])
        photos += len(ids)
        dismiss = gr.Button(visible=bool(project and studio.refusals.get(project.name, role)))
        values += [items, ids, empty_hint(role, len(ids)) if project else "", dismiss]
    samples = gr.Button(visible=studio.demo is not None and project is not None and photos == 0)
    return [*values, refusals_html(studio.refusals.get(name)), samples]


def on_project(studio: Studio, name: str | None, shown: str | None) -> list[Any]:
    """The views of another project, and the project shown; nothing for the project already shown.

    Gradio fires the project picker's change event again for the same project (a burst as tabs
    open and update); showing the photos again would drop the tile the user has just selected.
    """
    if name and name == shown:
        return [*[gr.skip()] * VIEWS, shown]
    return [*views(studio, name), name]


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
    add_files(studio, name, files, role, progress)
    return [*views(studio, name), None]


def on_select(ids: list[str], event: gr.SelectData) -> str | None:
    """The id of the clicked photo."""
    return ids[event.index] if 0 <= event.index < len(ids) else None


def on_dismiss(studio: Studio, role: str, name: str | None) -> list[Any]:
    """Forget the refusals of ``role`` (the other role's stay listed); the views."""
    studio.refusals.clear(studio.project(name).name, role)
    return views(studio, name)


def on_samples(
    studio: Studio,
    name: str | None,
    progress=gr.Progress(),  # noqa: B008 (Gradio's progress idiom)
) -> list[Any]:
    """Fill an empty project with the demo's sample selfies and style references, through intake."""
    from engine.demo.samples import add_samples
    from engine.intake import Refused

    project = studio.project(name)
    if studio.demo is None:
        raise gr.Error("Sample photos are for demo mode; start the studio with --demo to try them.")
    if photo_records(project):
        raise gr.Error("This project already has photos; sample photos go into an empty project.")
    if studio.face_kit_loaded() is None:
        progress(0, desc="Loading the face models…")
    kit = studio.face_kit()
    progress(0.1, desc="Checking the sample photos…")
    for photo, result in add_samples(project, kit).results:
        if isinstance(result, Refused):
            studio.refusals.add(
                project.name, Refusal(photo.filename, photo.role, result.reason, result.message)
            )
    return views(studio, name)


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
    """The painting's progress; the references made from a text prompt as soon as their job ends."""
    job = studio.runner.latest(name, "references") if name else None
    signature = [job.id, job.status] if job else None
    if signature == last and (job is None or not job.active):
        return [gr.skip()] * VIEWS + [gr.skip(), last]
    ended = job is not None and not job.active and signature != last
    return [
        *(views(studio, name) if ended else [gr.skip()] * VIEWS),
        references_progress(job),
        signature,
    ]


def build(studio: Studio, current: gr.Dropdown, tabs: gr.Tabs, tab: gr.Tab, timer: gr.Timer) -> None:
    """Lay out the Photos tab and wire its events."""
    panels: dict[str, dict[str, Any]] = {}
    samples = gr.Button("Try it with sample photos", variant="primary", visible=False, elem_id="try-samples")
    with gr.Row():
        for role, title, tip in (
            ("source", "Selfies", SOURCE_TIP),
            ("reference", "Style references", STYLE_TIP),
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
                dismiss = gr.Button(
                    f"Dismiss the {ROLES[role]}s not used",
                    size="sm",
                    visible=False,
                    elem_id=f"dismiss-{role}",
                )
                panels[role] = {
                    "dismiss": dismiss,
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
        made_status = gr.HTML(elem_id="references-progress")
    next_step = gr.Button("Next: train →", variant="primary")

    outputs = [
        c
        for role in ROLES
        for c in (panels[role]["gallery"], panels[role]["ids"], panels[role]["hint"], panels[role]["dismiss"])
    ]
    outputs += [refused, samples]

    for role, panel in panels.items():
        panel["upload"].upload(
            bind(on_upload, studio, role), [current, panel["upload"]], [*outputs, panel["upload"]]
        )
        panel["gallery"].select(on_select, panel["ids"], panel["selected"])
        panel["dismiss"].click(bind(on_dismiss, studio, role), current, outputs)
        panel["remove"].click(
            bind(on_remove, studio, role), [current, panel["selected"]], [*outputs, panel["selected"]]
        )
        panel["replace"].upload(
            bind(on_replace, studio, role),
            [current, panel["selected"], panel["replace"]],
            [*outputs, panel["selected"]],
        )

    made = gr.State(None)
    samples.click(bind(on_samples, studio), current, outputs)
    make.click(bind(on_make, studio), [current, prompt, count], None)
    timer.tick(bind(on_tick, studio), [current, made], [*outputs, made_status, made], show_progress="hidden")
    shown = gr.State(None)
    current.change(bind(on_project, studio), [current, shown], [*outputs, shown], show_progress="hidden")
    tab.select(bind(views, studio), current, outputs, show_progress="hidden")
    next_step.click(lambda: gr.Tabs(selected="train"), None, tabs)
