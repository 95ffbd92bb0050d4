"""Gallery step: one tile per portrait (its versions inside), sorted as asked, readable details,
download, export, proofs."""

from __future__ import annotations

import html
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import gradio as gr

from engine import proofs
from engine.runs import run_labels, short_time
from engine.store import Project
from studio.reach import proof_link
from studio.state import Studio, bind

if TYPE_CHECKING:
    from pathlib import Path

    from engine.outputs import OutputRecord

EMPTY = (
    "<div class='mc-empty'>No portraits yet. Train the project (step 3), then generate (step 4); "
    "the portraits appear here, the most recognisable first.</div>"
)

PROOF_HELP = (
    "Share chosen portraits with your client through a read-only link with its own password. The client "
    "sees only these portraits, numbered as they are here, marks favourites and leaves a note; their picks "
    "appear here. The link works wherever your client can reach the studio (`--share` or `--listen`); keep "
    "a studio login (`--auth`) so that nothing else is reachable."
)
SORTS = {
    "identity": "Most recognisable first",
    "newest": "Newest first",
    "seed": "By seed",
}
EXPORTS = "exports"
"""Where `engine.export` saves files, inside the project folder."""
LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}


@dataclass
class Portrait:
    """One generated portrait and its post-processed versions (oldest first; the newest is shown)."""

    versions: list[OutputRecord]

    @property
    def original(self) -> OutputRecord:
        return self.versions[0]

    @property
    def shown(self) -> OutputRecord:
        return self.versions[-1]


def portraits(project: Project) -> list[Portrait]:
    """The project's portraits, each with its versions, in manifest order; versions without a file left out."""
    from engine.outputs import output_records

    records = [record for record in output_records(project) if project.path(record.file).is_file()]
    by_id = {record.id: record for record in records}
    groups: dict[str, list[OutputRecord]] = {}
    for record in records:
        root, seen = record, {record.id}
        while root.parent in by_id and root.parent not in seen:  # a damaged manifest may loop
            root = by_id[root.parent]
            seen.add(root.id)
        groups.setdefault(root.id, []).append(record)
    return [Portrait(sorted(group, key=lambda r: r.created)) for group in groups.values()]


def sort_portraits(found: list[Portrait], order: str | None) -> list[Portrait]:
    """``identity`` (best shown version first; no score last), ``newest`` (latest version) or ``seed``."""
    if order == "newest":
        return sorted(found, key=lambda p: max(r.created for r in p.versions), reverse=True)
    if order == "seed":
        return sorted(found, key=lambda p: (p.original.seed, p.original.created))
    return sorted(found, key=lambda p: (p.shown.identity is None, -(p.shown.identity or 0.0)))


def caption(portrait: Portrait, numbers: dict[str, int], favourites: tuple[str, ...] = ()) -> str:
    record = portrait.shown
    parts = [f"portrait {numbers[record.id]}"] if record.id in numbers else []
    parts.append("identity n/a" if record.identity is None else f"identity {record.identity:.2f}")
    parts.append(f"seed {record.seed}")
    if len(portrait.versions) > 1:
        parts.append(f"{len(portrait.versions)} versions")
    if record.id in favourites:
        parts.append("♥ client favourite")
    return " · ".join(parts)


def version_label(record: OutputRecord, index: int) -> str:
    """``Original`` or what post-processing did, e.g. ``Version 2: restored (codeformer), upscaled x2``."""
    steps = record.params.get("postprocess") or {}
    if not steps:
        return "Original" if index == 0 else f"Version {index + 1}"
    done = []
    if steps.get("restore"):
        done.append(f"restored ({steps['restore']})")
    if steps.get("upscale") and steps["upscale"] != 1:
        done.append(f"upscaled x{steps['upscale']}")
    if steps.get("preset"):
        done.append(f"framed {steps['preset']}")
    return f"Version {index + 1}: {', '.join(done) or 'post-processed'}"


def details(record: OutputRecord, run_names: dict[str, str]) -> str:
    """Markdown: what made the portrait, in words (no paths)."""
    params = record.params
    rows = [
        ("Prompt", params.get("prompt")),
        ("Negative prompt", params.get("negative_prompt")),
        ("Seed", record.seed),
        ("Sampler", f"{params['sampler']}, {params['steps']} steps" if "sampler" in params else None),
        ("Guidance scale", params.get("guidance_scale")),
        (
            "LoRA scales",
            f"UNet {params['unet_lora_scale']}, text encoder {params['text_lora_scale']}"
            if "unet_lora_scale" in params
            else None,
        ),
        ("Training run", run_names.get(record.run or "", record.run)),
        ("Base model", params.get("model")),
        ("Size", f"{params['width']} x {params['height']} px" if "width" in params else None),
        ("Identity", "n/a" if record.identity is None else f"{record.identity:.2f}"),
        ("Post-processing", _postprocess_words(params.get("postprocess"))),
        ("Created", short_time(record.created) or record.created),
    ]
    lines = [f"**{label}:** {html.escape(str(value))}" for label, value in rows if value not in (None, "")]
    lines += [f"⚠ {html.escape(warning)}" for warning in record.warnings]
    return "\n\n".join(lines)


def _postprocess_words(steps: dict[str, Any] | None) -> str | None:
    if not steps:
        return None
    words = [f"face restoration {steps['restore']}" if steps.get("restore") else "no face restoration"]
    if steps.get("fidelity") is not None:
        words.append(f"fidelity {steps['fidelity']}")
    if steps.get("upscale"):
        words.append(f"upscaled x{steps['upscale']}")
    if steps.get("preset"):
        words.append(f"preset {steps['preset']}")
    if steps.get("identity_before") is not None:
        words.append(f"identity before {steps['identity_before']:.2f}")
    return ", ".join(words)


def proof_status(project: Project, origin: str | None = None, studio: Studio | None = None) -> str:
    """Markdown: the link (or that there is none), who can open it, and the client's picks by number."""
    gallery = proofs.gallery(project)
    lines = []
    if gallery is None:
        lines.append("No client gallery is published for this project.")
    else:
        link = proof_link(gallery.token, studio.reach if studio is not None else None, origin)
        lines.append(
            f"**Published** ({len(gallery.outputs)} portraits): <a href='{html.escape(link.url)}' "
            f"id='proof-link' target='_blank'>{html.escape(link.url)}</a>. Send the link and the password "
            "to your client separately."
        )
        lines.append(f"<span id='proof-reach'>{html.escape(link.note)}</span>")
    picks = proofs.picks(project)
    if picks.get("updated"):
        favourites = picks.get("favourites", [])
        numbers = proofs.numbers(project)
        named = ", ".join(str(numbers[f]) if f in numbers else "?" for f in favourites)
        lines.append(
            f"**Client's picks** ({picks['updated']}): {len(favourites)} favourite(s)"
            + (f": portrait{'s' if len(favourites) > 1 else ''} {named}" if favourites else "")
            + "."
        )
        if picks.get("note"):
            lines.append(f"**Client's note:** {html.escape(picks['note'])}")
    return "\n\n".join(lines)


def picked(project: Project) -> list[tuple[str, str]]:
    """The client's favourites as (image, "Portrait N") thumbnails."""
    from engine.outputs import get_output

    numbers = proofs.numbers(project)
    items = []
    for output in proofs.picks(project).get("favourites", []):
        record = get_output(project, output)
        if record is not None and project.path(record.file).is_file():
            items.append((str(project.path(record.file)), f"Portrait {numbers.get(output, '?')}"))
    return items


def exports_note(project: Project) -> str:
    return f"Exports are saved in `{project.path(EXPORTS)}`."


LISTING = 7
"""How many components `refresh` updates."""


def refresh(studio: Studio, name: str | None, order: str | None = None, request: gr.Request | None = None):
    """The listing: empty state, one tile per portrait as sorted, their ids, the proof choices, status, picks."""
    if not name:
        return gr.HTML(visible=True), [], [], gr.CheckboxGroup(choices=[], value=[]), "", [], ""
    project = studio.project(name)
    found = sort_portraits(portraits(project), order)
    favourites = tuple(proofs.picks(project).get("favourites", []))
    numbers = proofs.numbers(project)
    items = [(str(project.path(p.shown.file)), caption(p, numbers, favourites)) for p in found]
    gallery = proofs.gallery(project)
    shown_ids = {p.shown.id for p in found}
    chosen = [output for output in (gallery.outputs if gallery else ()) if output in shown_ids]
    choices = [(caption(p, numbers, favourites), p.shown.id) for p in found]
    return (
        gr.HTML(visible=not items),
        items,
        [p.original.id for p in found],
        gr.CheckboxGroup(choices=choices, value=chosen),
        proof_status(project, _origin(request), studio),
        picked(project),
        exports_note(project),
    )


def on_project(
    studio: Studio, name: str | None, order: str | None, listed: str | None, request: gr.Request | None = None
):
    """The listing of another project, and the project it lists; nothing for the project already listed.

    Gradio fires the project picker's change event again and again for the same project while other
    tabs update (a burst when a tab opens, then about once a second). Listing again would send the
    saved proof choice back and untick the portraits the photographer has just ticked.
    """
    if name and name == listed:
        return *[gr.skip()] * LISTING, listed
    return *refresh(studio, name, order, request), name


def relist(
    studio: Studio,
    name: str | None,
    order: str | None,
    ticked: list[str] | None,
    listed: str | None,
    request: gr.Request | None = None,
):
    """The listing again (a visit of the tab, another sort order), the portraits the photographer
    has ticked for the proof gallery still ticked while they are listed, published or not."""
    listing = list(refresh(studio, name, order, request))
    if name and name == listed and ticked is not None:
        choices = listing[3].choices
        offered = {value for _, value in choices}
        listing[3] = gr.CheckboxGroup(choices=choices, value=[t for t in ticked if t in offered])
    return tuple(listing)


def _versions_of(project: Project, portrait_id: str) -> Portrait:
    portrait = next((p for p in portraits(project) if p.original.id == portrait_id), None)
    if portrait is None:
        raise gr.Error("That portrait is gone; the gallery was out of date.")
    return portrait


def _show(project: Project, record: OutputRecord):
    """The before/after slider, the details and the file of one version."""
    after = str(project.path(record.file))
    if record.raw and project.path(record.raw).is_file():
        compare = gr.ImageSlider(
            (str(project.path(record.raw)), after), label="Before / after post-processing"
        )
    else:
        compare = gr.ImageSlider((after, after), label="Not post-processed: the same image on both sides")
    return compare, details(record, run_labels(project)), after


def on_select(studio: Studio, name: str | None, shown_ids: list[str], event: gr.SelectData):
    """The clicked portrait: its versions (the newest chosen), before/after, its details and its file."""
    project = studio.project(name)
    if not shown_ids or event.index >= len(shown_ids):
        raise gr.Error("That portrait is gone; the gallery was out of date.")
    portrait = _versions_of(project, shown_ids[event.index])
    choices = [(version_label(r, i), r.id) for i, r in enumerate(portrait.versions)]
    versions = gr.Dropdown(choices=choices, value=portrait.shown.id, visible=len(choices) > 1)
    return versions, *_show(project, portrait.shown)


def on_version(studio: Studio, name: str | None, version: str | None):
    """Another version of the selected portrait."""
    from engine.outputs import get_output

    if not name or not version:
        return gr.skip(), gr.skip(), gr.skip()
    project = studio.project(name)
    record = get_output(project, version)
    if record is None:
        raise gr.Error("That version is gone; the gallery was out of date.")
    return _show(project, record)


def on_export(studio: Studio, name: str | None, fmt: str) -> list[str]:
    """Export the LoRA in ``fmt``, the embeddings (every format's prompts use their words) and the usage note."""
    from engine.export import USAGE_NOTE, export_embeddings, export_lora

    project = studio.project(name)
    lora = export_lora(project, None, format=fmt)
    files = [lora, *export_embeddings(project, None), lora.with_name(USAGE_NOTE)]
    gr.Info(f"Saved in {project.path(EXPORTS)}; {USAGE_NOTE} says how to use the files.")
    return [str(path) for path in files]


def on_zip(studio: Studio, name: str | None, shown_ids: list[str]) -> list[str]:
    """Zip the shown portraits (the version shown of each)."""
    from engine.export import export_outputs_zip

    if not shown_ids:
        raise gr.Error("There are no portraits to zip yet.")
    project = studio.project(name)
    shown = {p.original.id: p.shown.id for p in portraits(project)}
    path = export_outputs_zip(project, [shown.get(i, i) for i in shown_ids])
    gr.Info(f"Saved in {project.path(EXPORTS)}.")
    return [str(path)]


def on_show_folder(studio: Studio, name: str | None, request: gr.Request | None = None) -> str:
    """Say where exports are saved; on this computer, also open the folder in the file manager.

    Nothing is served: a browser on another computer gets the path only.
    """
    project = studio.project(name)
    folder = project.path(EXPORTS)
    if not folder.is_dir():
        return f"Nothing is exported yet; exports will be saved in `{folder}`."
    if _local(request):
        try:
            open_folder(folder)
        except OSError as error:
            return f"Exports are saved in `{folder}` (the file manager did not open: {error})."
        return f"Exports are saved in `{folder}`; it is open in your file manager."
    return f"Exports are saved in `{folder}` on the studio's computer."


def open_folder(folder: Path) -> None:
    """Open ``folder`` with the operating system's file manager."""
    if sys.platform == "win32":
        os.startfile(folder)  # noqa: S606 (a folder inside the data root)
        return
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    subprocess.Popen([opener, str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603


def _local(request: gr.Request | None) -> bool:
    """Whether the browser runs on this computer: it connects from here and uses a loopback address.

    A share link's tunnel also connects from here, but with the public host name.
    """
    client = getattr(request, "client", None)
    host = urlsplit(f"//{dict(getattr(request, 'headers', None) or {}).get('host', '')}").hostname
    return getattr(client, "host", None) in LOCAL_HOSTS and host in LOCAL_HOSTS


def on_publish(studio: Studio, name: str | None, chosen: list[str], password: str, request: gr.Request):
    """Publish the client gallery of the chosen portraits."""
    project = studio.project(name)
    try:
        proofs.publish(project, chosen or [], password or None)
    except proofs.ProofError as error:
        raise gr.Error(str(error)) from error
    gr.Info("The client gallery is published.")
    return "", proof_status(project, _origin(request), studio)


def on_unpublish(studio: Studio, name: str | None, request: gr.Request) -> str:
    """Close the client gallery link."""
    project = studio.project(name)
    proofs.unpublish(project)
    gr.Info("The client gallery link is closed.")
    return proof_status(project, _origin(request), studio)


def build(studio: Studio, current: gr.Dropdown, tab: gr.Tab) -> None:
    """Lay out the Gallery tab and wire its events."""
    empty = gr.HTML(EMPTY, elem_id="gallery-empty")
    sort = gr.Radio(
        [(label, key) for key, label in SORTS.items()], value="identity", label="Sort", elem_id="gallery-sort"
    )
    order = gr.State("identity")
    shown = gr.Gallery(
        fit_columns=False,
        label="Portraits",
        columns=5,
        height=420,
        allow_preview=False,
        elem_id="gallery-outputs",
    )
    ids = gr.State([])
    with gr.Row():
        with gr.Column(scale=3):
            compare = gr.ImageSlider(label="Before / after post-processing", elem_id="gallery-compare")
        with gr.Column(scale=2):
            versions = gr.Dropdown(label="Version", visible=False, elem_id="gallery-versions")
            metadata = gr.Markdown(elem_id="gallery-metadata")
            download = gr.DownloadButton("⬇ Download this portrait", elem_id="gallery-download")
    with gr.Accordion("Client proof gallery", open=False, elem_id="proof-accordion"):
        gr.Markdown(PROOF_HELP)
        proof_choice = gr.CheckboxGroup(
            label="Portraits the client sees", elem_id="proof-outputs", interactive=True
        )
        proof_password = gr.Textbox(
            label="Gallery password",
            info=f"At least {proofs.MIN_PASSWORD} characters; leave empty to keep the current one.",
            type="password",
            elem_id="proof-password",
        )
        with gr.Row():
            publish = gr.Button("Publish client gallery", variant="primary", elem_id="proof-publish")
            unpublish = gr.Button("Close the link", elem_id="proof-unpublish")
        proof_info = gr.Markdown(elem_id="proof-status")
        picks = gr.Gallery(
            label="Client's favourites",
            columns=8,
            fit_columns=False,
            height=200,
            allow_preview=False,
            elem_id="proof-picks",
        )
    with gr.Accordion("Export", open=True):
        with gr.Row():
            lora_format = gr.Radio(["a1111", "diffusers"], value="a1111", label="LoRA format")
            export_lora = gr.Button("Export LoRA and embeddings", elem_id="export-lora")
            export_zip = gr.Button("Zip all portraits", elem_id="export-zip")
        with gr.Row():
            where = gr.Markdown(elem_id="export-folder")
            show_folder = gr.Button("Show the exports folder", elem_id="export-show-folder", scale=0)
        exported = gr.File(
            label="Exported files", file_count="multiple", interactive=False, elem_id="export-files"
        )

    listing = [empty, shown, ids, proof_choice, proof_info, picks, where]
    listed = gr.State(None)
    current.change(
        bind(on_project, studio), [current, order, listed], [*listing, listed], show_progress="hidden"
    )
    relisting = [current, order, proof_choice, listed]
    tab.select(bind(relist, studio), relisting, listing, show_progress="hidden")
    sort.change(lambda value: value, sort, order, show_progress="hidden").then(
        bind(relist, studio), relisting, listing, show_progress="hidden"
    )
    publish.click(
        bind(on_publish, studio), [current, proof_choice, proof_password], [proof_password, proof_info]
    )
    unpublish.click(bind(on_unpublish, studio), current, proof_info)
    shown.select(bind(on_select, studio), [current, ids], [versions, compare, metadata, download])
    versions.input(bind(on_version, studio), [current, versions], [compare, metadata, download])
    export_lora.click(bind(on_export, studio), [current, lora_format], exported)
    export_zip.click(bind(on_zip, studio), [current, ids], exported)
    show_folder.click(bind(on_show_folder, studio), current, where)


def _origin(request: gr.Request | None) -> str | None:
    """The scheme and host the photographer's browser uses for the studio."""
    if request is None:
        return None
    headers = dict(request.headers)
    if headers.get("origin"):
        return headers["origin"]
    return f"http://{headers['host']}" if headers.get("host") else None
