"""Trust in the project store: a real full disk, names that fold together, deleting a training
project, and damaged manifests and event logs (issue 13, items 4, 6, 7 and 8).

Faults are real where the machine allows: a small tmpfs mounted when the tests run as root, bad
bytes written into the real files, a training that really holds its lock.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch
from fixtures_faces import astronaut, encode
from fixtures_training import tiny_face_kit
from tiny import tiny_config

import engine.store as engine_store
from engine import checkpoint as ckpt
from engine.artefact import save_artefact
from engine.demo.portraits import make_project
from engine.events import EventLog, Finished, Status, StepDone, read_events
from engine.store import MANIFEST, InvalidName, ProjectStore, StorageFull, StoreError

MAX_NAME = 80
PREVIOUS = "manifest.prev.json"


SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
"""What safetensors 0.4-0.8 raise when the disk fills up under ``save_file`` (seen on a real tmpfs)."""


# -- item 4: a real full disk while safetensors writes ----------------------------------------------


def _mount_small_tmpfs(folder: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture(params=["tmpfs", "library-error"])
def full_folder(request, tmp_path, monkeypatch):
    """A folder on a disk too small for the test's tensors: a real 256 KiB tmpfs (as root), or
    safetensors' own exception with the library's real message (anyone)."""
    folder = tmp_path / "small"
    if request.param == "tmpfs":
        if not _mount_small_tmpfs(folder):
            pytest.skip("mounting a tmpfs needs root (CI runs as root)")
        try:
            yield folder
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        return
    import safetensors
    import safetensors.torch

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1024)  # part of the file was written when the disk filled up
        raise safetensors.SafetensorError(SAFETENSORS_FULL)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    folder.mkdir()
    yield folder


def _big_tensors() -> dict[str, torch.Tensor]:
    return {"weight": torch.ones(256, 1024)}  # 1 MiB, four times the small disk


def test_a_real_full_disk_while_checkpointing_raises_storage_full_naming_the_folder(full_folder):
    staged = full_folder / ".tmp-step-3"
    staged.mkdir()
    with pytest.raises(StorageFull) as full:
        ckpt.save_tensors(staged / "trainable.safetensors", _big_tensors(), full_folder)
    message = str(full.value)
    assert str(full_folder) in message and "intact" in message
    assert isinstance(full.value.__cause__, OSError) and full.value.__cause__.errno == errno.ENOSPC
    assert list(staged.iterdir()) == []  # no temporary file left behind


def test_a_real_full_disk_while_saving_the_artefact_raises_storage_full_naming_the_folder(full_folder):
    path = full_folder / "final.safetensors"
    with pytest.raises(StorageFull) as full:
        save_artefact(path, {}, {}, {"<sks>": torch.ones(256 * 1024)}, {"run": "run-1"})
    assert str(full_folder) in str(full.value) and "is full" in str(full.value)
    assert list(full_folder.iterdir()) == []


# -- item 6: two names, one project ---------------------------------------------------------------


def test_a_name_longer_than_the_limit_is_refused_not_cut():
    store = ProjectStore()
    stem = "Wedding of Anna Smith and Ben Jones, civil ceremony and reception in the town hall, part "
    for name in (stem + "ONE", stem + "TWO"):
        for action in (store.create, store.open, store.delete):
            with pytest.raises(InvalidName, match=f"at most {MAX_NAME} characters"):
                action(name)
    assert store.list() == []
    assert not store.projects_dir.exists() or list(store.projects_dir.iterdir()) == []


@pytest.mark.parametrize(("first", "second"), [("a-b", "a b"), ("a b", "a-b"), ("x", ".x"), (".x", "x")])
def test_a_name_whose_folder_belongs_to_another_project_is_refused_naming_it(first, second):
    store = ProjectStore()
    kept = store.create(first)
    for action in (store.create, store.open, store.delete):
        with pytest.raises(StoreError, match=repr(first).replace(".", r"\.")) as refused:
            action(second)
        assert isinstance(refused.value, engine_store.NameTaken)
    assert store.list() == [first]
    assert store.open(first).root == kept.root and kept.manifest()["name"] == first


def test_list_gives_the_names_as_typed_and_open_and_delete_take_them():
    store = ProjectStore()
    names = ["Anna Smith", "Client: Ann Lee", "Zoë", "wedding_2026"]
    for name in names:
        assert store.create(name).name == name
    assert store.list() == sorted(names)
    for name in store.list():
        project = store.open(name)
        assert project.name == name and project.manifest()["name"] == name
    legacy = store.projects_dir / "Old-Client"  # a manifest without a name: the folder name
    legacy.mkdir()
    (legacy / MANIFEST).write_text(json.dumps({"images": [], "trainings": [], "outputs": []}))
    assert "Old-Client" in store.list() and store.open("Old-Client").name == "Old-Client"
    store.delete("Client: Ann Lee")
    assert store.list() == sorted(["Anna Smith", "Zoë", "wedding_2026", "Old-Client"])


def test_the_studio_opens_projects_by_the_names_it_lists(tmp_path):
    from studio.app import Studio, initial_project
    from studio.project import summary

    studio = Studio(ProjectStore(tmp_path))
    studio.store.create("Anna Smith")
    assert initial_project(studio) == "Anna Smith"
    assert studio.project("Anna Smith").name == "Anna Smith"
    assert "<h3>Anna Smith</h3>" in summary(studio, "Anna Smith")


# -- item 7: a project is not deleted while it trains --------------------------------------------


def test_a_project_is_not_deleted_while_it_trains(tiny_sd):
    from engine.models import load_base
    from engine.training import TrainingCancelled, train

    store = ProjectStore()
    project = make_project(store.root, name="Anna Smith")
    cancel = threading.Event()
    refusals: list[BaseException | None] = []
    outcome = None

    def on_event(event) -> None:
        if isinstance(event, StepDone) and not refusals:
            try:
                store.delete("Anna Smith")
            except StoreError as error:
                refusals.append(error)
            else:
                refusals.append(None)
            cancel.set()

    try:
        train(
            project,
            tiny_config(tiny_sd.folder, checkpoint_every=1),
            base=load_base(tiny_sd.folder),
            face_kit=tiny_face_kit(),
            on_event=on_event,
            cancel=cancel,
        )
    except BaseException as error:
        outcome = error
    assert refusals and isinstance(refusals[0], StoreError), (
        f"deleted while training, which then ended: {outcome!r}"
    )
    assert isinstance(refusals[0], engine_store.ProjectBusy) and isinstance(outcome, TrainingCancelled)
    run = project.manifest()["trainings"][-1]["id"]
    assert run in str(refusals[0]) and "Anna Smith" in str(refusals[0])
    assert store.open("Anna Smith").manifest()["trainings"][-1]["status"] == "stopped"
    store.delete("Anna Smith")  # once the training has stopped
    assert store.list() == [] and list(store.projects_dir.iterdir()) == []


def test_a_project_is_not_deleted_while_another_process_trains_it():
    store = ProjectStore()
    project = store.create("anna")
    lock = project.path("trainings", "run-1", ".lock")
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); "
         "l.acquire(); print('held', flush=True); sys.stdin.read()", str(lock)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match="run-1") as refused:
            store.delete("anna")
        assert isinstance(refused.value, engine_store.ProjectBusy)
        assert store.list() == ["anna"]
    finally:
        holder.communicate("", timeout=30)
    store.delete("anna")
    assert store.list() == []


# -- item 8: one bad byte does not break a project ------------------------------------------------


def _with_two_updates(store: ProjectStore):
    project = store.create("Anna Smith")
    project.update(lambda manifest: manifest["images"].append({"id": "first"}))
    project.update(lambda manifest: manifest["images"].append({"id": "second"}))
    return project


def _invalid_utf8(data: bytes) -> bytes:
    return data.replace(b"Anna", b"Ann\xe9", 1)  # Latin-1 e-acute: one byte that is not UTF-8


DAMAGES = {
    "invalid-utf8": _invalid_utf8,
    "truncated": lambda data: data[: len(data) // 2],
    "emptied": lambda data: b"",
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_manifest_falls_back_to_the_previous_one_and_says_so(damage):
    store = ProjectStore()
    project = _with_two_updates(store)
    path = project.root / MANIFEST
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.warns(UserWarning, match="previous") as warned:
        manifest = store.open("Anna Smith").manifest()
    assert warned[0].category is engine_store.ManifestRecovered
    assert [image["id"] for image in manifest["images"]] == ["first"]
    notice = project.manifest_notice()
    assert notice and "Anna Smith" in notice and "previous" in notice
    assert store.list() == ["Anna Smith"]
    with pytest.warns(UserWarning, match="previous"):
        project.update(lambda manifest: manifest["images"].append({"id": "third"}))
    assert [image["id"] for image in json.loads(path.read_text("utf-8"))["images"]] == ["first", "third"]
    assert project.manifest_notice() is None


def test_each_update_keeps_the_previous_manifest_beside_it():
    project = _with_two_updates(ProjectStore())
    previous = json.loads((project.root / PREVIOUS).read_text("utf-8"))
    assert [image["id"] for image in previous["images"]] == ["first"]
    assert not list(project.root.glob(".*.tmp"))


def test_when_no_manifest_parses_the_error_says_to_run_repair():
    store = ProjectStore()
    project = _with_two_updates(store)
    (project.root / MANIFEST).write_bytes(b"\xff\xfe{")
    (project.root / PREVIOUS).write_bytes(b"")
    with pytest.raises(StoreError, match="magicapture projects repair Anna-Smith"):
        project.manifest()
    with pytest.raises(StoreError, match="repair"):
        project.update(lambda manifest: None)


def test_a_bad_line_in_an_event_log_loses_only_that_line(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    for index in range(4):
        log.append(Status(message=f"stage {index}"))
    log.append(Finished(artefact="final.safetensors", seconds=1.0))
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"stage 1", b"stage \xff1")  # invalid UTF-8 inside one line
    lines[2] = lines[2][: len(lines[2]) // 2]  # half a line
    path.write_bytes(b"\n".join(lines))
    events = read_events(path)
    assert [getattr(e, "message", None) for e in events] == ["stage 0", "stage 3", None]
    assert isinstance(events[-1], Finished)


def test_the_studio_views_work_on_a_damaged_manifest_and_show_the_notice(tmp_path):
    import gradio as gr

    from studio.app import Studio, build, initial_project
    from studio.project import summary

    studio = Studio(ProjectStore(tmp_path))
    project = _with_two_updates(studio.store)
    path = project.root / MANIFEST
    path.write_bytes(_invalid_utf8(path.read_bytes()))
    blocks = build(studio)
    picker = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "project-picker")
    called = 0
    with pytest.warns(UserWarning, match="previous"):
        assert initial_project(studio) == "Anna Smith"
        for block_fn in blocks.fns.values():
            inputs = block_fn.inputs
            events = {event for _, event in block_fn.targets}
            if not events <= {"tick", "change", "select"} or not inputs or inputs[0] is not picker:
                continue
            if any(not isinstance(i, gr.State) for i in inputs[1:]) or "SelectData" in str(
                inspect.signature(block_fn.fn)
            ):
                continue
            block_fn.fn("Anna Smith", *[None] * (len(inputs) - 1))
            called += 1
        card = summary(studio, "Anna Smith")
    assert called >= 8
    assert "previous" in card and "<h3>Anna Smith</h3>" in card


def test_repair_rebuilds_the_manifest_from_the_files_on_disk(tiny_sd, fallback_kit):
    from engine.artefact import load_artefact
    from engine.export import export_names
    from engine.intake import Accepted, add_photo
    from engine.models import load_base
    from engine.outputs import OutputRecord, add_output, format_parameters
    from engine.photos import photo_records
    from engine.repair import repair_manifest
    from engine.runs import resolve_artefact
    from engine.training import train

    store = ProjectStore()
    project = make_project(store.root, name="Anna Smith")  # demo photos: crops and masks, no face.json
    artefact = train(
        project,
        tiny_config(tiny_sd.folder, checkpoint_every=1),
        base=load_base(tiny_sd.folder),
        face_kit=tiny_face_kit(),
    )
    accepted = add_photo(project, encode(astronaut()), "anna.jpg", "source", fallback_kit)
    assert isinstance(accepted, Accepted)
    run = project.manifest()["trainings"][-1]["id"]
    params = {
        "prompt": "a photo of a <sks> person in the style of <style1>, smiling",
        "negative_prompt": "blurry, lowres",
        "seed": 7, "sampler": "euler_a", "steps": 30, "guidance_scale": 7.5,
        "unet_lora_scale": 0.6, "text_lora_scale": 0.9, "width": 64, "height": 64, "model": "tiny-sd",
    }  # fmt: skip
    output_id = f"20260101-120000-7-{uuid.uuid4().hex[:6]}"
    record = OutputRecord(
        id=output_id, file=f"outputs/{output_id}.png", seed=7, params=params, run=run, identity=0.5,
        created="2026-01-01T12:00:00+00:00",
    )  # fmt: skip
    names = export_names(project, load_artefact(artefact))  # as generation writes it: the exported words
    text = format_parameters(params, {"MagiCapture run": run}, names)
    assert "<sks>" not in text.splitlines()[0]
    add_output(project, astronaut()[:64, :64], record, text)
    before = project.manifest()
    (project.root / MANIFEST).write_bytes(b"\xff" + (project.root / MANIFEST).read_bytes()[:50])
    (project.root / PREVIOUS).write_bytes(b"")

    report = repair_manifest(store.open("Anna-Smith"))

    assert "\n" not in report and "Anna-Smith" in report
    after = project.manifest()
    assert project.manifest_notice() is None
    assert store.list() == ["Anna-Smith"]  # the name as typed was in the lost manifest only
    image_keys = ("id", "role", "status", "original", "crop", "mask", "labels", "preview", "face",
                  "embedding", "landmarks", "bbox", "sha256", "dhash", "fallback")  # fmt: skip
    rebuilt = {image["id"]: image for image in after["images"]}
    assert {key: rebuilt[accepted.record.id][key] for key in image_keys} == {
        key: getattr(accepted.record, key) for key in image_keys
    }
    # demo photos lack face.json
    assert [image.id for image in photo_records(project)] == [accepted.record.id]
    assert "face.json" in report
    run_keys = (
        "id",
        "status",
        "preset",
        "artefact",
        "final_artefact",
        "artefact_step",
        "step",
        "total_steps",
    )
    assert [{key: t.get(key) for key in run_keys} for t in after["trainings"]] == [
        {key: t.get(key) for key in run_keys} for t in before["trainings"]
    ]
    assert resolve_artefact(project, None) == (artefact, run)
    output_keys = ("id", "file", "seed", "run", "parent", "raw", "warnings")
    assert [{key: o[key] for key in output_keys} for o in after["outputs"]] == [
        {key: o[key] for key in output_keys} for o in before["outputs"]
    ]
    restored = after["outputs"][0]["params"]
    assert {key: restored[key] for key in params} == params
    assert (project.root / "manifest.damaged.json").read_bytes().startswith(b"\xff")
    project.update(lambda manifest: None)  # an ordinary project again
