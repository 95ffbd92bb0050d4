"""Faults: a training killed with SIGKILL, a full disk, two tabs acting on one project at once."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_faces import ScriptedDetector, astronaut, encode, face_at
from fixtures_reliability import PAUSED, READS, disk_full, scratch
from tiny import tiny_config

from engine import checkpoint as ckpt
from engine.demo.portraits import make_project
from engine.faces import FaceKit
from engine.faces.fallback import EllipseParser
from engine.intake import Accepted, add_photo, remove_photo
from engine.photos import photo_records
from engine.store import ProjectStore, StorageFull, StoreError

DRIVER = Path(__file__).with_name("fixtures_reliability.py")


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


# -- training killed with SIGKILL ----------------------------------------------------------


def start_driver(project, base: str, fault: str) -> subprocess.Popen:
    # One CPU thread: on some CPUs two uninterrupted multi-threaded runs already differ in the last
    # bits (bitsandbytes' 8-bit AdamW on the CPU), and this test compares weights bit for bit.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    name = fault.replace(":", "-").replace("@", "-")
    with open(scratch(project.root) / f"driver-{name}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), str(project.root), base, fault],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def run_until_paused(project, base: str, fault: str) -> None:
    """Start the driver, wait until it stops at ``fault``, then SIGKILL it."""
    marker = scratch(project.root) / PAUSED
    marker.unlink(missing_ok=True)
    process = start_driver(project, base, fault)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, f"the driver ended before {fault}:\n{log_of(project)}"
        assert time.monotonic() < deadline, f"the driver never reached {fault}"
        time.sleep(0.02)
    kill(process)


def logged_steps(project) -> list[int]:
    """Global steps of the StepDone events in the project's event logs (whole lines only)."""
    steps = []
    for path in project.root.glob("trainings/*/events.jsonl"):
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("type") == "StepDone":
                steps.append(event["global_step"])
    return steps


def run_and_kill_at_random(project, base: str, after_step: int, seed: int) -> None:
    """Start the driver and SIGKILL it at a random moment (up to 1.5 s) after it reports ``after_step``."""
    seen = len(logged_steps(project))
    process = start_driver(project, base, f"slow-after:{after_step + 1}")
    deadline = time.monotonic() + 300
    while after_step not in logged_steps(project)[seen:]:
        assert process.poll() is None, f"the driver ended early:\n{log_of(project)}"
        assert time.monotonic() < deadline, "the driver never reached the step"
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 1.5))
    kill(process)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def log_of(project) -> str:
    logs = sorted(scratch(project.root).glob("driver-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text()[-3000:] if logs else ""


def checkpoint_names(project, check_all: bool = True) -> list[str]:
    """The listed checkpoints, after checking that each (else the newest, the one a resume reads) is whole."""
    (run,) = project.manifest()["trainings"]
    folder = project.path("trainings", run["id"], "checkpoints")
    found = ckpt.checkpoints(folder)
    for path in found if check_all else found[-1:]:  # every file in it reads back
        assert ckpt.read_json(path / ckpt.STATE)["global_step"] == int(path.name.split("-")[1])
        for tensors in path.glob("*.safetensors"):
            ckpt.load_tensors(tensors)
        for text in path.glob("*.json"):
            ckpt.read_json(text)
    return [p.name for p in found]


def final_tensors(path: Path) -> dict:
    from engine.artefact import load_artefact

    artefact = load_artefact(path)
    return {
        **{f"unet.{k}": v for k, v in artefact.unet_lora.items()},
        **{f"text.{k}": v for k, v in artefact.text_lora.items()},
        **{f"emb.{k}": v for k, v in artefact.embeddings.items()},
    }


@pytest.mark.slow
def test_training_killed_at_five_points_resumes_to_the_uninterrupted_weights(tmp_path, tiny_sd):
    """SIGKILL mid-step, mid-checkpoint-file, before a checkpoint's rename, at a random moment and
    mid-artefact-write; each restart resumes, and the final weights are bit-identical."""
    base = str(tiny_sd.folder)
    reference = make_project(tmp_path / "reference" / "home")
    uninterrupted = start_driver(reference, base, "none")
    project = make_project(tmp_path / "killed" / "home")

    run_until_paused(project, base, "after-step:3")
    assert checkpoint_names(project) == ["step-2"]
    run_until_paused(project, base, "half-file:optimizer.safetensors@3")
    assert checkpoint_names(project) == ["step-2"]
    run_until_paused(project, base, "commit:4")
    assert checkpoint_names(project) == ["step-2", "step-3"]
    seed = random.randrange(2**32)
    run_and_kill_at_random(project, base, after_step=4, seed=seed)  # in checkpoint 4 or step 5
    names = checkpoint_names(project, check_all=False)  # the kill may land while step-2 is being deleted
    assert names[-1] in ("step-3", "step-4") and set(names) <= {"step-2", "step-3", "step-4"}, seed
    run_until_paused(project, base, "half-file:final.safetensors")
    assert checkpoint_names(project) == ["step-4", "step-6"]
    run = project.path("trainings", project.manifest()["trainings"][0]["id"])
    assert not (run / "final.safetensors").exists()

    finisher = start_driver(project, base, "none")
    assert finisher.wait(timeout=300) == 0, log_of(project)
    assert uninterrupted.wait(timeout=300) == 0, log_of(reference)

    (entry,) = project.manifest()["trainings"]
    assert entry["status"] == "finished"
    expected = final_tensors(reference.path(reference.manifest()["trainings"][0]["artefact"]))
    resumed = final_tensors(project.path(entry["artefact"]))
    assert resumed.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-4", "step-6"]

    reads = (scratch(project.root) / READS).read_text().split()
    assert len(reads) > 10, "the restarts read no checkpoint"
    for read in map(Path, reads):  # only files of renamed (whole) checkpoints were ever read
        assert read.parent.parent == run / "checkpoints" and read.parent.name.startswith("step-"), read
        assert not read.name.startswith("."), read


def test_a_process_killed_while_writing_the_manifest_leaves_the_previous_one(tmp_path):
    project = ProjectStore(tmp_path / "home").create("client")
    project.update(lambda manifest: manifest["images"].append({"id": "kept"}))
    run_until_paused(project, "-", "manifest")
    assert [image["id"] for image in ProjectStore(tmp_path / "home").open("client").manifest()["images"]] == [
        "kept"
    ]
    assert [p.name for p in project.root.glob(".manifest.json.*.tmp")]  # the half-written file was there


# -- a full disk ---------------------------------------------------------------------------


def test_a_full_disk_while_saving_an_upload_names_the_folder_and_changes_nothing(fallback_kit):
    store = ProjectStore()
    project = store.create("client")
    before, manifest = listing(store.root), project.manifest()
    with disk_full(store.root) as disk:
        disk["writes_left"] = 3  # fills up after three of the photo's files
        with pytest.raises(StorageFull) as full:
            add_photo(project, encode(astronaut()), "a.jpg", "source", fallback_kit)
    message = str(full.value)
    assert "is full" in message and str(project.path("photos")) in message
    assert store.open("client").manifest() == manifest
    assert listing(store.root) == before


@pytest.mark.parametrize("writes_left", [0, 1], ids=["image", "manifest"])
def test_a_full_disk_while_saving_an_output_names_the_folder_and_leaves_no_orphan(writes_left):
    from fixtures_outputs import add_photo_output

    store = ProjectStore()
    project = store.create("client")
    before, manifest = listing(store.root), project.manifest()
    with disk_full(store.root) as disk:
        disk["writes_left"] = writes_left
        with pytest.raises(StorageFull, match="is full") as full:
            add_photo_output(project, np.zeros((64, 64, 3), np.uint8), "out-1")
    folder = project.path("outputs") if writes_left == 0 else project.root
    assert str(folder) in str(full.value)
    assert store.open("client").manifest() == manifest
    new = [name for name in listing(store.root) if name not in before and not name.endswith(".lock")]
    assert new in ([], ["projects/client/outputs"])  # at most the empty folder


def test_a_full_disk_while_updating_the_manifest_keeps_the_previous_one():
    store = ProjectStore()
    project = store.create("client")
    project.update(lambda manifest: manifest["images"].append({"id": "kept"}))
    before = listing(store.root)
    with disk_full(store.root) as disk:
        disk["full"] = True
        with pytest.raises(StorageFull, match=re.escape(str(project.root))):
            project.update(lambda manifest: manifest["images"].append({"id": "lost"}))
    assert [image["id"] for image in store.open("client").manifest()["images"]] == ["kept"]
    assert listing(store.root) == before


@pytest.mark.slow
def test_a_disk_that_fills_up_during_training_stops_it_clearly_and_it_resumes_after(isolated_home, tiny_sd):
    from fixtures_training import tiny_face_kit

    from engine.events import StepDone
    from engine.models import load_base
    from engine.training import resume_available, train

    project = make_project(isolated_home)
    with disk_full(isolated_home) as disk:

        def fill_up(event) -> None:
            if isinstance(event, StepDone) and event.global_step == 2:
                disk["full"] = True

        with pytest.raises(StorageFull) as full:
            train(
                project, tiny_config(tiny_sd.folder, checkpoint_every=1), base=load_base(tiny_sd.folder), face_kit=tiny_face_kit(),
                on_event=fill_up,
            )  # fmt: skip
    run = project.manifest()["trainings"][-1]["id"]
    folder = project.path("trainings", run, "checkpoints")
    assert str(folder) in str(full.value) and "previous checkpoint is intact" in str(full.value)
    reopened = ProjectStore(isolated_home).open("demo")
    assert reopened.manifest()["trainings"][-1]["status"] in ("running", "failed")
    assert sorted(p.name for p in folder.iterdir()) == ["step-1"]
    assert ckpt.read_json(folder / "step-1" / ckpt.STATE)["global_step"] == 1
    assert resume_available(reopened) == run

    path = train(
        reopened,
        tiny_config(tiny_sd.folder, checkpoint_every=1),
        base=load_base(tiny_sd.folder),
        face_kit=tiny_face_kit(),
        resume=True,
    )
    assert path.is_file() and reopened.manifest()["trainings"][-1]["status"] == "finished"


# -- two tabs on one project ---------------------------------------------------------------


def noise_photo(seed: int) -> bytes:
    """A sharp 400 px picture, different for every seed (its own hash and difference hash)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    return encode(np.kron(small, np.ones((10, 10, 1), np.uint8)), "PNG")


def test_uploads_and_deletes_from_two_tabs_keep_the_manifest_and_the_files_in_step():
    store = ProjectStore()
    project = store.create("client")
    kit = FaceKit(ScriptedDetector([face_at(120, 100, 280, 300)]), EllipseParser(), None)
    added, removed, errors = [], [], []
    uploading = threading.Event()
    uploading.set()

    def upload(first: int) -> None:
        try:
            for seed in range(first, first + 6):
                result = add_photo(project, noise_photo(seed), f"{seed}.png", "source", kit)
                assert isinstance(result, Accepted), result
                added.append(result.record.id)
        except BaseException as error:  # reported below
            errors.append(error)

    def delete() -> None:
        try:
            while uploading.is_set() or photo_records(project):
                for record in photo_records(project):
                    with contextlib.suppress(StoreError):  # the other tab deleted it first
                        removed.append(remove_photo(project, record.id).id)
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=upload, args=(first,)) for first in (0, 100)]
    deleters = [threading.Thread(target=delete) for _ in range(2)]
    for thread in workers + deleters:
        thread.start()
    for thread in workers:
        thread.join(120)
    uploading.clear()
    for thread in deleters:
        thread.join(120)
    assert errors == []
    assert sorted(added) == sorted(removed) and len(added) == 12  # every upload deleted exactly once
    assert json.loads((project.root / "manifest.json").read_text())["images"] == []
    assert listing(project.path("photos")) in ([], ["source"])


def test_an_upload_into_a_project_deleted_meanwhile_fails_clearly_and_leaves_nothing(
    fallback_kit, monkeypatch
):
    from engine.intake import storing

    store = ProjectStore()
    project = store.create("client")
    real_store = storing._store

    def delete_first(*args):  # the other tab deletes the project while this upload is being checked
        store.delete("client")
        return real_store(*args)

    monkeypatch.setattr(storing, "_store", delete_first)
    with pytest.raises(StoreError, match="no manifest"):
        add_photo(project, encode(astronaut()), "a.jpg", "source", fallback_kit)
    assert store.list() == [] and listing(store.projects_dir) == []


def test_two_processes_updating_one_manifest_lose_nothing(tmp_path):
    project = ProjectStore(tmp_path).create("client")
    code = (
        "import sys; from pathlib import Path; from engine.store import Project\n"
        "p = Project(Path(sys.argv[1]))\n"
        "for i in range(25): p.update(lambda m, i=i: m['images'].append({'id': f'{sys.argv[2]}-{i}'}))\n"
    )
    root = Path(__file__).resolve().parent.parent
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(project.root), name], cwd=root) for name in "ab"
    ]
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    ids = sorted(image["id"] for image in project.manifest()["images"])
    assert ids == sorted(f"{name}-{i}" for name in "ab" for i in range(25))
