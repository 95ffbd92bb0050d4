"""Settings step: base model, model downloads, commercial use and where projects live."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gradio as gr

from studio.state import Studio, StudioSettings, bind

DEMO_MODELS = [("tiny SD 1.x", "sd1"), ("tiny SDXL", "sdxl")]
"""Demo mode's choice of tiny model (label, family name)."""


def describe_base(source: str, allow_pickle: bool = False) -> str:
    """One line naming the family and kind of base model ``source`` (``SDXL single file: x.safetensors``),
    or why it cannot be used; read without loading weights (`engine.models.identify_base`)."""
    from engine.models import ModelLoadError, identify_base

    if not source.strip():
        return "⚠ Give a Hugging Face id, a diffusers folder or a .safetensors file."
    try:
        return identify_base(source.strip(), allow_pickle=allow_pickle).describe()
    except ModelLoadError as error:
        return f"⚠ {error}"


def base_chip(studio: Studio) -> str:
    """The header's words on the base model in use: its family, or that it is unknown until it downloads."""
    family = studio.base_family()
    if studio.demo is not None:
        return f"Demo model: tiny {family.label if family else studio.demo_family}"
    if family is None:
        return "Base model: see Settings"
    return f"Base model: {family.label}"


FALLBACK_LABELS = {
    "detector": "Haar cascades",
    "parser": "an ellipse around the landmarks",
    "recogniser": "no identity scores",
}
"""What each face part falls back to (`engine.faces.FaceKit.fallbacks`)."""


@dataclass(frozen=True)
class ModelsInUse:
    """Which models are real, demo stand-ins or fallbacks: what the header and the model list both say."""

    standins: bool
    """The asset folder is the demo kit's: every model in it has random weights in the real format."""
    fallbacks: dict[str, str]
    """Face part running on its approximate fallback -> the asset it stands in for."""
    kit_loaded: bool
    """Whether the face models are loaded (the fallbacks are known only then)."""

    def state(self, name: str, present: bool) -> str:
        """The model list's state of asset ``name``."""
        state = "not downloaded"
        if present:
            state = "demo stand-in (random weights)" if self.standins else "✓ installed"
        parts = [part for part, asset in self.fallbacks.items() if asset == name]
        if parts:
            state += f" · approximate fallback in use for the {and_join(parts)}"
        return state

    def face_line(self) -> str:
        """The header's words on the models: stand-ins, then the face parts on their fallback."""
        words = []
        if self.standins:
            words.append("demo stand-ins (random weights) for every model")
        if self.fallbacks:
            parts = list(self.fallbacks)
            how = "; ".join(FALLBACK_LABELS[part] for part in parts)
            words.append(f"face {and_join(parts)}: approximate fallback ({how})")
            if not self.standins:
                words[-1] += (
                    f" standing in for {and_join(sorted(set(self.fallbacks.values())))}; see Settings"
                )
        if not self.kit_loaded:
            words.append("face models load on first use")
        elif not words:
            words.append("face models ready")
        return " · ".join(words)


def models_in_use(studio: Studio) -> ModelsInUse:
    """The one account of which models are real, stand-ins or fallbacks (the demo marker, the kit's fallbacks)."""
    from engine.assets import demo_standins
    from engine.faces import COMMERCIAL_DETECTOR, FACE_PACK, PARSER_ASSET, RECOGNISER_ASSETS

    kit = studio.face_kit_loaded()
    commercial = studio.settings.commercial
    holders = {
        "detector": COMMERCIAL_DETECTOR if commercial else FACE_PACK,
        "parser": PARSER_ASSET,
        "recogniser": RECOGNISER_ASSETS["sface" if commercial else "arcface"],
    }
    return ModelsInUse(
        standins=demo_standins(),
        fallbacks={part: holders[part] for part in kit.fallbacks} if kit is not None else {},
        kit_loaded=kit is not None,
    )


def and_join(words: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def assets_table(studio: Studio) -> list[list[str]]:
    """The model list: each asset's state as `models_in_use` tells it, size and licence."""
    from engine.assets import list_assets

    models = models_in_use(studio)
    rows = []
    for status in list_assets():
        size = f"{status.size / 2**20:.0f} MB" if status.size else "?"
        licence = ("" if status.commercial_ok else "non-commercial · ") + status.licence
        rows.append(
            [status.name, status.description, models.state(status.name, status.present), size, licence]
        )
    return rows


def on_models(studio: Studio, shown: list[list[str]] | None):
    """The model list again once what it says has changed (the face models loaded, commercial use switched)."""
    rows = assets_table(studio)
    return (gr.skip(), shown) if rows == shown else (rows, rows)


def on_save(studio: Studio, source: str, allow_pickle: bool, commercial_use: bool, demo_family: str):
    """Save the base model and licence choices; in demo mode, switch the tiny model (for this session)."""
    source = source.strip()
    if not source:
        raise gr.Error("The base model is empty; give a Hugging Face id, a folder or a .safetensors file.")
    studio.update_settings(StudioSettings(source, allow_pickle, commercial_use))
    if studio.demo is not None:
        studio.demo_family = demo_family
    gr.Info("Settings saved.")
    return describe_base(studio.base_model, allow_pickle)


def default_bases() -> str:
    """The default hub id of each family, for the base model's help."""
    from engine.families import FAMILIES
    from engine.models import DEFAULT_BASES

    return "; ".join(f"{FAMILIES[name].label}: {repo}" for name, repo in DEFAULT_BASES.items())


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
    return f"✓ {name} is installed at `{path}`.", assets_table(studio)


def on_import(studio: Studio, name: str | None, file: str | None):
    """Install a model file the user downloaded themselves."""
    from engine.assets import AssetError, import_asset

    if not name or not file:
        raise gr.Error("Choose the model in the list above and the file to import.")
    try:
        path = import_asset(name, file)
    except AssetError as error:
        raise gr.Error(str(error)) from error
    return f"✓ {name} imported to `{path}`.", assets_table(studio)


def build(studio: Studio) -> None:
    """Lay out the Settings tab and wire its events."""
    settings = studio.settings
    gr.Markdown("### Base model")
    demo_model = gr.Radio(
        DEMO_MODELS,
        value=studio.demo_family,
        label="Demo model",
        info="Demo mode trains and paints with a tiny random model of the family chosen here; the base "
        "model below is not used.",
        visible=studio.demo is not None,
        elem_id="demo-model",
    )
    with gr.Row():
        base = gr.Textbox(
            settings.base_model,
            label="Base model (Stable Diffusion 1.x or SDXL)",
            info=f"A Hugging Face id (defaults: {default_bases()}), a diffusers folder, or one .safetensors "
            "checkpoint file; its family is found from the files.",
            scale=4,
        )
        pickle = gr.Checkbox(settings.allow_pickle, label="Allow pickle checkpoints (.ckpt)", scale=1)
    base_info = gr.Markdown(describe_base(studio.base_model, settings.allow_pickle), elem_id="base-info")
    commercial = gr.Checkbox(
        settings.commercial,
        label="Commercial use: only use models whose licence allows it",
        info="Face detection and identity scores switch to OpenCV YuNet and SFace, restoration to GFPGAN; "
        "non-commercial weights (InsightFace buffalo_l, CodeFormer) are never loaded.",
    )
    save = gr.Button("Save settings", variant="primary")

    gr.Markdown("### Models")
    table = gr.Dataframe(
        functools.partial(assets_table, studio),
        headers=["name", "what", "state", "size", "licence"],
        interactive=False,
        wrap=True,
        elem_id="models-table",
    )
    with gr.Row():
        asset = gr.Dropdown([row[0] for row in assets_table(studio)], label="Model", scale=2)
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

    shown = gr.State(None)
    gr.Timer(3.0).tick(bind(on_models, studio), shown, [table, shown], show_progress="hidden", queue=False)
    base.change(describe_base, [base, pickle], base_info, show_progress="hidden")
    save.click(bind(on_save, studio), [base, pickle, commercial, demo_model], base_info)
    download.click(bind(on_download, studio), asset, [download_state, table])
    import_button.click(bind(on_import, studio), [asset, upload], [download_state, table])
