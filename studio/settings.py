"""Settings step: base model, model downloads, commercial use and where projects live."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio.state import Studio, StudioSettings, bind


def describe_base(source: str) -> str:
    """One line saying what kind of base model ``source`` names, or why it cannot be used."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet").is_dir():
            return f"Diffusers folder: {path}"
        return f"⚠ {path} is a folder but not a diffusers model folder (no model_index.json)."
    if path.is_file():
        if path.suffix == ".safetensors":
            return f"Single checkpoint file: {path.name}"
        return f"⚠ {path.name} is a pickle checkpoint; it loads only with 'Allow pickle checkpoints' on."
    if path.is_absolute() or source.startswith((".", "~")):
        return f"⚠ There is no file or folder at {path}."
    return f"Hugging Face model id: {source} (downloaded on first use)."


def assets_table() -> list[list[str]]:
    from engine.assets import list_assets

    rows = []
    for status in list_assets():
        size = f"{status.size / 2**20:.0f} MB" if status.size else "?"
        state = "✓ installed" if status.present else "not downloaded"
        licence = ("" if status.commercial_ok else "non-commercial · ") + status.licence
        rows.append([status.name, status.description, state, size, licence])
    return rows


def on_save(studio: Studio, source: str, allow_pickle: bool, commercial_use: bool):
    """Save the base model and licence choices."""
    source = source.strip()
    if not source:
        raise gr.Error("The base model is empty; give a Hugging Face id, a folder or a .safetensors file.")
    studio.update_settings(StudioSettings(source, allow_pickle, commercial_use))
    gr.Info("Settings saved.")
    return describe_base(source)


def on_download(studio: Studio, name: str | None, progress=gr.Progress()):  # noqa: B008 (Gradio's progress idiom)
    """Download a model, showing its progress."""
    from engine.assets import AssetError, asset_path

    if not name:
        raise gr.Error("Choose a model to download first.")

    def report(done: int, total: int | None) -> None:
        if total:
            progress(done / total, desc=f"{name}: {done / 2**20:.0f} of {total / 2**20:.0f} MB")

    try:
        path = asset_path(name, progress=report, commercial=studio.settings.commercial)
    except AssetError as error:
        raise gr.Error(str(error)) from error
    return f"✓ {name} is installed at `{path}`.", assets_table()


def on_import(name: str | None, file: str | None):
    """Install a model file the user downloaded themselves."""
    from engine.assets import AssetError, import_asset

    if not name or not file:
        raise gr.Error("Choose the model in the list above and the file to import.")
    try:
        path = import_asset(name, file)
    except AssetError as error:
        raise gr.Error(str(error)) from error
    return f"✓ {name} imported to `{path}`.", assets_table()


def build(studio: Studio) -> None:
    """Lay out the Settings tab and wire its events."""
    settings = studio.settings
    gr.Markdown("### Base model")
    if studio.demo is not None:
        gr.Markdown("Demo mode uses the tiny random SD 1.x of the demo kit; the setting below is not used.")
    with gr.Row():
        base = gr.Textbox(
            settings.base_model,
            label="Stable Diffusion 1.x base model",
            info="A Hugging Face id (e.g. stable-diffusion-v1-5/stable-diffusion-v1-5), a diffusers folder, "
            "or one .safetensors checkpoint file.",
            scale=4,
        )
        pickle = gr.Checkbox(settings.allow_pickle, label="Allow pickle checkpoints (.ckpt)", scale=1)
    base_info = gr.Markdown(describe_base(settings.base_model))
    commercial = gr.Checkbox(
        settings.commercial,
        label="Commercial use: only use models whose licence allows it",
        info="Face detection and identity scores switch to OpenCV YuNet and SFace, restoration to GFPGAN; "
        "non-commercial weights (InsightFace buffalo_l, CodeFormer) are never loaded.",
    )
    save = gr.Button("Save settings", variant="primary")

    gr.Markdown("### Models")
    table = gr.Dataframe(
        assets_table,
        headers=["name", "what", "state", "size", "licence"],
        interactive=False,
        wrap=True,
        elem_id="models-table",
    )
    with gr.Row():
        asset = gr.Dropdown([row[0] for row in assets_table()], label="Model", scale=2)
        download = gr.Button("Download", scale=1)
    with gr.Accordion("Import a file you downloaded yourself", open=False):
        upload = gr.File(label="The model file (the .zip for insightface packs)", file_count="single")
        import_button = gr.Button("Import")
    download_state = gr.Markdown()

    gr.Markdown("### Storage")
    gr.Markdown(
        f"Projects live in `{studio.store.projects_dir}`. To keep them elsewhere, start the studio with "
        "`--data-dir FOLDER` (or set `MAGICAPTURE_HOME`)."
    )

    base.change(describe_base, base, base_info, show_progress="hidden")
    save.click(bind(on_save, studio), [base, pickle, commercial], base_info)
    download.click(bind(on_download, studio), asset, [download_state, table])
    import_button.click(on_import, [asset, upload], [download_state, table])
