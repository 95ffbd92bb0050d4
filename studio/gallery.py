"""Gallery step: portraits best-first by identity score, before/after, metadata, download and export."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

if TYPE_CHECKING:
    from engine.generate import OutputRecord
    from studio.app import Studio

EMPTY = (
    "<div class='mc-empty'>No portraits yet. Train the project (step 3), then generate (step 4); "
    "the portraits appear here, the most recognisable first.</div>"
)


def caption(record: OutputRecord) -> str:
    score = "identity n/a" if record.identity is None else f"identity {record.identity:.2f}"
    return f"{score} · seed {record.seed}"


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
    with gr.Accordion("Export", open=True):
        with gr.Row():
            lora_format = gr.Radio(["a1111", "diffusers"], value="a1111", label="LoRA format")
            export_lora = gr.Button("Export LoRA and embeddings", elem_id="export-lora")
            export_zip = gr.Button("Zip all portraits", elem_id="export-zip")
        exported = gr.File(
            label="Exported files", file_count="multiple", interactive=False, elem_id="export-files"
        )

    def refresh(name: str | None):
        from engine.generate import sorted_outputs

        if not name:
            return gr.HTML(visible=True), [], []
        project = studio.project(name)
        records = [record for record in sorted_outputs(project) if project.path(record.file).is_file()]
        items = [(str(project.path(record.file)), caption(record)) for record in records]
        return gr.HTML(visible=not items), items, [record.id for record in records]

    def on_select(name: str | None, shown_ids: list[str], event: gr.SelectData):
        from engine.generate import OutputRecord

        project = studio.project(name)
        entries = project.manifest().get("outputs", [])
        entry = next((e for e in entries if e["id"] == shown_ids[event.index]), None) if shown_ids else None
        if entry is None:
            raise gr.Error("That portrait is gone; the gallery was out of date.")
        record = OutputRecord.from_json(entry)
        after = str(project.path(record.file))
        if record.raw:
            compare = gr.ImageSlider(
                (str(project.path(record.raw)), after), label="Before / after post-processing"
            )
        else:
            compare = gr.ImageSlider((after, after), label="Not post-processed: the same image on both sides")
        return compare, entry, after

    def on_export(name: str | None, fmt: str):
        from engine.export import export_embeddings, export_lora

        project = studio.project(name)
        files = [str(export_lora(project, None, format=fmt))]
        if fmt == "a1111":
            files += [str(path) for path in export_embeddings(project, None)]
        return files

    def on_zip(name: str | None, shown_ids: list[str]):
        from engine.export import export_outputs_zip

        if not shown_ids:
            raise gr.Error("There are no portraits to zip yet.")
        return [str(export_outputs_zip(studio.project(name), shown_ids))]

    current.change(refresh, current, [empty, shown, ids], show_progress="hidden")
    tab.select(refresh, current, [empty, shown, ids], show_progress="hidden")
    shown.select(on_select, [current, ids], [compare, metadata, download])
    export_lora.click(on_export, [current, lora_format], exported)
    export_zip.click(on_zip, [current, ids], exported)
