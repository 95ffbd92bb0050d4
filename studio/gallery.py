"""Gallery step: portraits best-first by identity score, before/after, metadata, download, export, proofs."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import gradio as gr

from engine import proofs
from engine.store import Project
from studio.state import Studio, bind

if TYPE_CHECKING:
    from engine.outputs import OutputRecord

EMPTY = (
    "<div class='mc-empty'>No portraits yet. Train the project (step 3), then generate (step 4); "
    "the portraits appear here, the most recognisable first.</div>"
)


PROOF_HELP = (
    "Share chosen portraits with your client through a read-only link with its own password. The client "
    "sees only these portraits, marks favourites and leaves a note; their picks appear here. The link "
    "works wherever your client can reach the studio (`--share` or `--listen`); keep a studio login "
    "(`--auth`) so that nothing else is reachable."
)


def caption(record: OutputRecord, favourites: tuple[str, ...] = ()) -> str:
    score = "identity n/a" if record.identity is None else f"identity {record.identity:.2f}"
    liked = " · ♥ client favourite" if record.id in favourites else ""
    return f"{score} · seed {record.seed}{liked}"


def proof_link(token: str, origin: str | None) -> str:
    """The gallery's address as the photographer's browser reaches the studio."""
    return f"{(origin or '').rstrip('/')}/proof/{token}/"


def proof_status(project: Project, origin: str | None = None) -> str:
    """Markdown: the link (or that there is none) and the client's picks."""
    gallery = proofs.gallery(project)
    lines = []
    if gallery is None:
        lines.append("No client gallery is published for this project.")
    else:
        link = proof_link(gallery.token, origin)
        lines.append(
            f"**Published** ({len(gallery.outputs)} portraits): <a href='{html.escape(link)}' "
            f"id='proof-link' target='_blank'>{html.escape(link)}</a>. Send the link and the password "
            "to your client separately."
        )
    picks = proofs.picks(project)
    if picks.get("updated"):
        favourites = picks.get("favourites", [])
        lines.append(
            f"**Client's picks** ({picks['updated']}): {len(favourites)} favourite(s)"
            + (f": {', '.join(favourites)}" if favourites else "")
            + "."
        )
        if picks.get("note"):
            lines.append(f"**Client's note:** {html.escape(picks['note'])}")
    return "\n\n".join(lines)


def refresh(studio: Studio, name: str | None, request: gr.Request | None = None):
    """The listing: empty state, portraits best first, their ids, the proof choices and status."""
    from engine.outputs import sorted_outputs

    if not name:
        return gr.HTML(visible=True), [], [], gr.CheckboxGroup(choices=[], value=[]), ""
    project = studio.project(name)
    records = [record for record in sorted_outputs(project) if project.path(record.file).is_file()]
    favourites = tuple(proofs.picks(project).get("favourites", []))
    items = [(str(project.path(record.file)), caption(record, favourites)) for record in records]
    gallery = proofs.gallery(project)
    chosen = [output for output in (gallery.outputs if gallery else ()) if output in {r.id for r in records}]
    choices = [(f"{caption(record, favourites)} · {record.id}", record.id) for record in records]
    return (
        gr.HTML(visible=not items),
        items,
        [record.id for record in records],
        gr.CheckboxGroup(choices=choices, value=chosen),
        proof_status(project, _origin(request)),
    )


def on_select(studio: Studio, name: str | None, shown_ids: list[str], event: gr.SelectData):
    """The clicked portrait: before/after, its details and its file."""
    from engine.outputs import get_output

    project = studio.project(name)
    record = get_output(project, shown_ids[event.index]) if shown_ids else None
    if record is None:
        raise gr.Error("That portrait is gone; the gallery was out of date.")
    after = str(project.path(record.file))
    if record.raw:
        compare = gr.ImageSlider(
            (str(project.path(record.raw)), after), label="Before / after post-processing"
        )
    else:
        compare = gr.ImageSlider((after, after), label="Not post-processed: the same image on both sides")
    return compare, record.to_json(), after


def on_export(studio: Studio, name: str | None, fmt: str) -> list[str]:
    """Export the LoRA (and, for A1111, the embeddings)."""
    from engine.export import export_embeddings, export_lora

    project = studio.project(name)
    files = [str(export_lora(project, None, format=fmt))]
    if fmt == "a1111":
        files += [str(path) for path in export_embeddings(project, None)]
    return files


def on_zip(studio: Studio, name: str | None, shown_ids: list[str]) -> list[str]:
    """Zip the shown portraits."""
    from engine.export import export_outputs_zip

    if not shown_ids:
        raise gr.Error("There are no portraits to zip yet.")
    return [str(export_outputs_zip(studio.project(name), shown_ids))]


def on_publish(studio: Studio, name: str | None, chosen: list[str], password: str, request: gr.Request):
    """Publish the client gallery of the chosen portraits."""
    project = studio.project(name)
    try:
        proofs.publish(project, chosen or [], password or None)
    except proofs.ProofError as error:
        raise gr.Error(str(error)) from error
    gr.Info("The client gallery is published.")
    return "", proof_status(project, _origin(request))


def on_unpublish(studio: Studio, name: str | None, request: gr.Request) -> str:
    """Close the client gallery link."""
    project = studio.project(name)
    proofs.unpublish(project)
    gr.Info("The client gallery link is closed.")
    return proof_status(project, _origin(request))


def build(studio: Studio, current: gr.Dropdown, tab: gr.Tab) -> None:
    """Lay out the Gallery tab and wire its events."""
    empty = gr.HTML(EMPTY, elem_id="gallery-empty")
    shown = gr.Gallery(
        fit_columns=False,
        label="Portraits, best first",
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
            metadata = gr.JSON(label="Details", elem_id="gallery-metadata")
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
    with gr.Accordion("Export", open=True):
        with gr.Row():
            lora_format = gr.Radio(["a1111", "diffusers"], value="a1111", label="LoRA format")
            export_lora = gr.Button("Export LoRA and embeddings", elem_id="export-lora")
            export_zip = gr.Button("Zip all portraits", elem_id="export-zip")
        exported = gr.File(
            label="Exported files", file_count="multiple", interactive=False, elem_id="export-files"
        )

    listing = [empty, shown, ids, proof_choice, proof_info]
    current.change(bind(refresh, studio), current, listing, show_progress="hidden")
    tab.select(bind(refresh, studio), current, listing, show_progress="hidden")
    publish.click(
        bind(on_publish, studio), [current, proof_choice, proof_password], [proof_password, proof_info]
    )
    unpublish.click(bind(on_unpublish, studio), current, proof_info)
    shown.select(bind(on_select, studio), [current, ids], [compare, metadata, download])
    export_lora.click(bind(on_export, studio), [current, lora_format], exported)
    export_zip.click(bind(on_zip, studio), [current, ids], exported)


def _origin(request: gr.Request | None) -> str | None:
    """The scheme and host the photographer's browser uses for the studio."""
    if request is None:
        return None
    headers = dict(request.headers)
    if headers.get("origin"):
        return headers["origin"]
    return f"http://{headers['host']}" if headers.get("host") else None
