"""The trainings section of the manifest through `engine.runs`, and photo records through `engine.photos`."""

from __future__ import annotations

import pytest

from engine.photos import PhotoRecord, photo_records
from engine.runs import (
    RunRecord,
    UnknownRun,
    get_run,
    latest_finished,
    remove_run,
    resolve_artefact,
    runs,
    update_run,
)
from engine.store import ProjectStore


@pytest.fixture
def project(tmp_path):
    return ProjectStore(tmp_path).create("alice")


def test_update_run_adds_then_changes_only_the_given_fields(project):
    update_run(project, "run-1", status="running", preset="fast", error=None)
    (entry,) = project.manifest()["trainings"]
    assert set(entry) == {"id", "started", "updated", "status", "preset", "error"}
    update_run(project, "run-1", touch=False, step=3)
    (entry,) = project.manifest()["trainings"]
    assert entry["step"] == 3 and "artefact" not in entry
    assert get_run(project, "run-1") == RunRecord.from_json(entry)
    with pytest.raises(TypeError, match="no field colour"):
        update_run(project, "run-1", colour="blue")


def test_a_record_from_before_chosen_checkpoints_has_its_artefact_as_the_final_one():
    record = RunRecord.from_json(
        {"id": "old", "status": "finished", "artefact": "trainings/old/final.safetensors"}
    )
    assert record.final_artefact == record.artefact and record.finished
    assert RunRecord.from_json(record.to_json()) == record


def test_the_latest_finished_run_is_resolved_and_removed_runs_are_gone(project):
    for run, updated in (("run-1", "2024-05-01"), ("run-2", "2024-06-01")):
        path = project.path("trainings", run, "final.safetensors")
        path.parent.mkdir(parents=True)
        path.write_bytes(b"weights")
        artefact = f"trainings/{run}/final.safetensors"
        update_run(project, run, touch=False, status="finished", artefact=artefact, updated=updated)
    update_run(project, "run-3", status="running")
    assert latest_finished(project).id == "run-2"
    assert resolve_artefact(project, "run-1") == (project.path("trainings/run-1/final.safetensors"), "run-1")
    with pytest.raises(UnknownRun, match="finished runs: run-1, run-2"):
        resolve_artefact(project, "run-3")
    remove_run(project, "run-2")
    assert [r.id for r in runs(project)] == ["run-1", "run-3"]
    assert resolve_artefact(project, None)[1] == "run-1"


def test_photo_records_read_the_images_section(project):
    record = PhotoRecord(id="a1", role="source", crop="photos/source/a1/crop.png", landmarks=[0.0] * 10)
    project.update(lambda m: m["images"].extend([record.to_json(), {"id": "b2", "role": "reference"}]))
    assert photo_records(project, "source") == [record]
    assert [r.id for r in photo_records(project)] == ["a1", "b2"]
    assert PhotoRecord.from_json({**record.to_json(), "unknown": 1}) == record
