"""Security: names cannot escape the store, pickles are not run, --listen warns.

Serving only the data root, auth on every route and --share refusing to start without a login are
proven against a running app in tests/test_studio.py; hash checks of downloads in tests/test_assets.py.
"""

from __future__ import annotations

import pathlib
import shutil
from pathlib import Path

import pytest
from fixtures_faces import astronaut, encode

from engine.intake import Accepted, add_photo, remove_photo
from engine.store import InvalidName, ProjectStore, StoreError


def listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture(scope="module")
def portrait() -> bytes:
    return encode(astronaut())


# -- names ---------------------------------------------------------------------------------

HOSTILE_FILENAMES = [
    "../../../outside/evil.jpg",
    "..\\..\\..\\outside\\evil.jpg",
    "/etc/cron.d/evil.jpg",
    "C:\\Windows\\System32\\evil.jpg",
    "photo\x00.jpg",
    "\x00",
    "CON",
    "NUL.jpg",
    "..",
    "",
    "~/.ssh/authorized_keys",
    "a/../../../../outside/b.png",
]


@pytest.mark.parametrize("filename", HOSTILE_FILENAMES)
def test_an_upload_name_cannot_place_a_file_outside_its_photo_folder(
    tmp_path, fallback_kit, portrait, filename
):
    (tmp_path / "outside").mkdir()
    store = ProjectStore(tmp_path / "home")
    project = store.create("client")
    before = listing(tmp_path)
    result = add_photo(project, portrait, filename, "source", fallback_kit)
    assert isinstance(result, Accepted)
    record = result.record
    folder = f"home/projects/client/photos/source/{record.id}"
    new = listing(tmp_path) - before
    assert new and all(
        name == folder or name.startswith(f"{folder}/") or name in ("home/projects/client/photos",
        "home/projects/client/photos/source", "home/projects/client/.lock")
        for name in new
    ), sorted(new)  # fmt: skip
    for key in ("original", "crop", "mask", "labels", "preview", "face"):
        assert project.path(getattr(record, key)).parent == project.path("photos", "source", record.id)
    assert "/" not in record.filename and "\\" not in record.filename
    assert not any((tmp_path / "outside").iterdir())


HOSTILE_PROJECT_NAMES = [
    "../outside",
    "../../etc",
    "/tmp/abs",
    "a/b",
    "a\\b",
    "..",
    ".",
    "",
    "evil\x00name",
    "CON",
    "aux.txt",
    "COM1",
]


@pytest.mark.parametrize("name", HOSTILE_PROJECT_NAMES)
def test_a_project_name_cannot_create_open_or_delete_outside_the_store(tmp_path, name):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "manifest.json").write_text("{}")
    store = ProjectStore(tmp_path / "home")
    store.create("kept")
    before = listing(tmp_path)
    for action in (store.create, store.open, store.delete):
        with pytest.raises(InvalidName):
            action(name)
    assert listing(tmp_path) == before
    assert store.list() == ["kept"]


def test_photo_ids_and_tampered_entries_cannot_remove_files_outside_the_project(tmp_path):
    (tmp_path / "outside" / "id").mkdir(parents=True)
    store = ProjectStore(tmp_path / "home")
    project = store.create("client")
    for photo_id in ("../../..", "/", "..", "*"):
        with pytest.raises(StoreError, match="has no photo with id"):
            remove_photo(project, photo_id)
    project.update(lambda m: m["images"].append({"id": "id", "role": "../../../../outside"}))
    with pytest.raises(InvalidName, match="leaves"):
        remove_photo(project, "id")
    assert (tmp_path / "outside" / "id").is_dir()


# -- --listen --------------------------------------------------------------------------------


@pytest.fixture
def launched(monkeypatch, tmp_path):
    """Run ``app.main`` with the server start replaced by a recorder; returns the options it got."""
    import app
    import studio.app

    for key in (
        "GRADIO_TEMP_DIR",
        "GRADIO_EXAMPLES_CACHE",
        "GRADIO_ANALYTICS_ENABLED",
        "HF_HUB_DISABLE_TELEMETRY",
    ):
        monkeypatch.setenv(key, "")  # restored after the test: main() sets them
    monkeypatch.delenv(app.AUTH_ENV, raising=False)
    calls = []
    monkeypatch.setattr(studio.app, "launch", lambda studio_, options, **kwargs: calls.append(options))

    def main(*flags: str):
        assert app.main([*flags, "--no-browser", "--data-dir", str(tmp_path / "data")]) == 0
        return calls[-1]

    return main


def test_listen_warns_that_the_network_can_reach_the_studio(launched, capsys):
    options = launched("--listen")
    warning = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Warning: --listen")]
    assert options.listen and options.auth is None
    assert len(warning) == 1 and "network" in warning[0] and "--auth USER:PASSWORD" in warning[0]
    options = launched("--listen", "--auth", "ann:pw")
    warning = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Warning: --listen")]
    assert options.auth == ("ann", "pw")
    assert len(warning) == 1 and "network" in warning[0] and "--auth" not in warning[0]
    options = launched()
    assert not options.listen and "Warning" not in capsys.readouterr().out


# -- pickles ---------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this creates ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickle_checkpoint_is_refused_unopened_and_allowed_only_with_weights_only(tmp_path, tiny_sd):
    import torch
    from safetensors.torch import load_file

    from engine.models import ModelLoadError, load_base

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"weight": RunsCode(marker)}}, evil)
    with pytest.raises(ModelLoadError, match="pickle checkpoint, which can run code"):
        load_base(evil)
    with pytest.raises(ModelLoadError):
        load_base(evil, allow_pickle=True, config=tiny_sd.folder)  # allowed: read with weights_only
    assert not marker.exists()

    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": load_file(tiny_sd.single_file)}, good)
    with pytest.raises(ModelLoadError, match="allow pickle explicitly"):
        load_base(good)
    assert load_base(good, allow_pickle=True, config=tiny_sd.folder).unet is not None


def pickled_unet_folder(tiny_sd, folder: Path, weights: dict | None = None) -> Path:
    """A copy of the tiny SD folder whose UNet weights are a pickle (``weights``, else the real ones)."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(tiny_sd.folder, folder)
    (safe,) = (folder / "unet").glob("*.safetensors")
    torch.save(weights or load_file(safe), folder / "unet" / "diffusion_pytorch_model.bin")
    safe.unlink()
    return folder


def test_a_model_folder_with_pickle_weights_is_refused_unless_allowed(tmp_path, tiny_sd):
    from engine.models import ModelLoadError, load_base

    marker = tmp_path / "code-ran"
    evil = pickled_unet_folder(tiny_sd, tmp_path / "evil", {"weight": RunsCode(marker)})
    with pytest.raises(ModelLoadError, match="no .safetensors weights"):
        load_base(evil)
    with pytest.raises(ModelLoadError):
        load_base(evil, allow_pickle=True)  # allowed: read with weights_only
    assert not marker.exists()


def test_allowing_pickle_still_loads_pickle_and_safetensors_folders(tmp_path, tiny_sd):
    from engine.models import load_base

    assert load_base(tiny_sd.folder, allow_pickle=True).unet is not None
    assert load_base(pickled_unet_folder(tiny_sd, tmp_path / "good"), allow_pickle=True).unet is not None


def test_restoration_weights_are_unpickled_with_a_restricted_unpickler(tmp_path):
    import torch

    from engine.postprocess import PostprocessError, load_model

    marker = tmp_path / "code-ran"
    weights = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": {"weight": RunsCode(marker)}}, weights)
    with pytest.raises(PostprocessError, match="is not a restoration or upscaling model"):
        load_model(weights, "cpu")
    assert not marker.exists()
