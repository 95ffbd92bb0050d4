"""The gallery and the client (issue 16): proof links a client can reach, portraits numbered once,
one tile per portrait, readable details, run names, and the Project tab's delete."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from engine import proofs
from engine.store import ProjectStore

PASSWORD = "client-pass-1"


def add_outputs(project, count: int, **fields) -> list[str]:
    """``count`` outputs with distinct pixels, seeds and identities; ``fields`` override the record's."""
    from engine.outputs import OutputRecord, add_output

    ids = []
    for index in range(count):
        output_id = f"20261203-2312{index:02d}-{index}-abcdef"
        record = OutputRecord(
            id=output_id, file=f"outputs/{output_id}.png", seed=index, run="run-1", identity=0.5,
            created=f"2026-12-03T23:12:{index:02d}+00:00", params={"prompt": "a photo of <sks> person"},
        )  # fmt: skip
        for key, value in fields.items():
            setattr(record, key, value[index] if isinstance(value, list) else value)
        add_output(project, np.full((48, 40, 3), 30 * index, np.uint8), record, "a photo, Steps: 50")
        ids.append(output_id)
    return ids


@pytest.fixture
def studio(tmp_path):
    from studio.state import Studio

    return Studio(ProjectStore(tmp_path))


def test_delete_without_the_box_ticked_warns_and_changes_nothing(studio):
    from studio.project import on_confirm_delete, on_delete

    studio.store.create("Jane Doe headshots")
    with pytest.warns(UserWarning, match="Tick the box"):
        picker, pending = on_confirm_delete(studio, "Jane Doe headshots", False)
    # nothing is sent back (no red "Error" badge on the box) and the project stays
    assert isinstance(picker, type(gr.skip())) and pending is None
    assert on_delete(studio, pending)[0] == gr.skip()
    assert studio.store.list() == ["Jane Doe headshots"]


def test_delete_empties_the_picker_before_its_choices_lose_the_name(studio):
    """Timers send the picker's value every second: one still carrying the deleted name must not meet
    choices without it ("Value: ... is not in the list of choices")."""
    from studio.project import on_confirm_delete, on_delete

    studio.store.create("Jane Doe headshots")
    studio.store.create("Ben's wedding")
    picker, pending = on_confirm_delete(studio, "Jane Doe headshots", True)
    assert picker.value is None and "choices" not in picker.constructor_args
    assert studio.store.list() == ["Ben's wedding", "Jane Doe headshots"]
    picker, box, pending = on_delete(studio, pending)
    assert picker.choices == [("Ben's wedding", "Ben's wedding")]
    assert picker.value is None and box is False and pending is None
    assert studio.store.list() == ["Ben's wedding"]


# -- the proof link a client can open ---------------------------------------------------------


def test_the_proof_link_uses_the_share_link_then_the_lan_then_says_it_is_local_only():
    from studio.reach import LOCAL_ONLY, Reach, proof_link

    local = "http://127.0.0.1:7860"
    shared = proof_link("tok", Reach(local, lan=("http://192.168.1.20:7860",), share="https://abc.example"))
    assert shared.url == "https://abc.example/proof/tok/" and "anywhere" in shared.note
    lan = proof_link("tok", Reach(local, lan=("http://192.168.1.20:7860", "http://10.0.0.5:7860")))
    assert lan.url == "http://192.168.1.20:7860/proof/tok/"
    assert "same network" in lan.note and "http://10.0.0.5:7860/proof/tok/" in lan.note
    alone = proof_link("tok", Reach(local))
    assert alone.url == f"{local}/proof/tok/" and alone.note == LOCAL_ONLY
    assert "only on this computer" in LOCAL_ONLY and "--listen" in LOCAL_ONLY and "--share" in LOCAL_ONLY
    # a studio not started by launch: the browser's address, local-only when it is a loopback one
    assert proof_link("tok", None, "http://localhost:7860").note == LOCAL_ONLY
    assert proof_link("tok", None, "http://studio.lan:7860").url == "http://studio.lan:7860/proof/tok/"


def test_listen_finds_the_lan_addresses_and_prints_them():
    from studio.reach import NO_LAN_ADDRESS, lan_hosts, proof_link, served, start_lines

    hosts = lan_hosts(
        ["127.0.0.1", "192.168.1.20", "169.254.3.3", "0.0.0.0", "192.168.1.20", "fe80::1", "10.0.0.5"]
    )
    assert hosts == ["192.168.1.20", "10.0.0.5"]
    reach = served("http://127.0.0.1:7860/", 7860, listen=True, share_url=None, hosts=hosts)
    assert (
        reach.lan == ("http://192.168.1.20:7860", "http://10.0.0.5:7860")
        and reach.local == "http://127.0.0.1:7860"
    )
    assert start_lines(reach) == [
        "On your network: http://192.168.1.20:7860",
        "On your network: http://10.0.0.5:7860",
    ]
    assert served("http://127.0.0.1:7860/", 7860, listen=False, share_url=None, hosts=hosts).lan == ()
    # --listen on a computer without a network address: said at start and beside the link
    alone = served("http://127.0.0.1:7860/", 7860, listen=True, share_url=None, hosts=[])
    assert start_lines(alone) == [NO_LAN_ADDRESS]
    assert proof_link("tok", alone).note == NO_LAN_ADDRESS and "no network address" in NO_LAN_ADDRESS
    assert all(isinstance(host, str) for host in lan_hosts())  # the machine's own, whatever they are


def test_the_photographer_gets_the_link_built_from_the_studios_reach(studio):
    from studio.gallery import proof_status
    from studio.reach import Reach

    project = studio.store.create("Anna Smith")
    ids = add_outputs(project, 2)
    gallery = proofs.publish(project, ids, PASSWORD)
    studio.reach = Reach("http://127.0.0.1:7860", share="https://abc.example")
    text = proof_status(project, "http://127.0.0.1:7860", studio)
    assert f"https://abc.example/proof/{gallery.token}/" in text and "127.0.0.1" not in text
    studio.reach = Reach("http://127.0.0.1:7860")
    assert "only on this computer" in proof_status(project, "http://127.0.0.1:7860", studio)


# -- portraits numbered once, on both sides ---------------------------------------------------


def test_portraits_are_numbered_once_and_keep_their_number(studio):
    project = studio.store.create("anna")
    a, b, c, d = add_outputs(project, 4)
    assert proofs.publish(project, [a, b, c], PASSWORD).numbers == {a: 1, b: 2, c: 3}
    assert proofs.publish(project, [c, d]).numbers == {a: 1, b: 2, c: 3, d: 4}
    proofs.unpublish(project)
    assert proofs.numbers(project) == {a: 1, b: 2, c: 3, d: 4}
    assert proofs.publish(project, [d, a], PASSWORD).numbers[a] == 1


def test_the_client_and_the_photographer_say_the_same_number(studio):
    from starlette.testclient import TestClient

    from studio import proof
    from studio.gallery import picked, proof_status, refresh

    project = studio.store.create("anna")
    a, b, c = add_outputs(project, 3)
    proofs.publish(project, [a, b], PASSWORD)
    gallery = proofs.publish(project, [b, c])  # c is the third portrait ever shown
    client = TestClient(proof.ProofApp(studio.store))
    client.post(f"/proof/{gallery.token}/login", data={"password": PASSWORD})
    page = client.get(f"/proof/{gallery.token}/").text
    assert f"value='{c}'> <b>Portrait 3</b>" in page and f"value='{b}'> <b>Portrait 2</b>" in page
    proofs.record_picks(project, gallery.token, [c], "")
    text = proof_status(project)
    assert "1 favourite(s): portrait 3." in text and c not in text
    assert [caption for _, caption in picked(project)] == ["Portrait 3"]
    assert picked(project)[0][0] == str(project.path(f"outputs/{c}.png"))
    captions = [caption for _, caption in refresh(studio, "anna")[1]]
    assert any(caption.startswith("portrait 3 ·") and "client favourite" in caption for caption in captions)


# -- one tile per portrait, sorted, in words ---------------------------------------------------


def postprocessed(project, parent_id: str, identity: float, created: str) -> str:
    """A post-processed version of ``parent_id``, recorded as `engine.postprocess` records one."""
    from engine.outputs import add_output, get_output

    parent = get_output(project, parent_id)
    record = dataclasses.replace(
        parent, id=f"{parent_id}-pp", file=f"outputs/{parent_id}-pp.png", identity=identity, created=created,
        parent=parent.id, raw=parent.raw or parent.file,
        params={**parent.params, "postprocess": {"restore": "codeformer", "fidelity": 0.7, "upscale": 2}},
    )  # fmt: skip
    add_output(project, np.full((96, 80, 3), 200, np.uint8), record, "a photo, Steps: 50")
    return record.id


def test_a_portrait_and_its_post_processed_copy_are_one_tile_with_two_versions(studio):
    from studio.gallery import on_select, refresh

    project = studio.store.create("anna")
    first, second = add_outputs(project, 2, identity=[0.6, 0.7])
    version = postprocessed(project, first, 0.9, "2026-12-04T08:00:00+00:00")
    _, items, shown_ids, choices, *_ = refresh(studio, "anna")
    assert shown_ids == [first, second]  # one tile each; the restored copy (0.9) puts the first ahead
    assert items[0][0] == str(project.path(f"outputs/{version}.png")) and "2 versions" in items[0][1]
    assert [value for _, value in choices.choices] == [version, second]
    versions, compare, text, download = on_select(
        studio, "anna", shown_ids, gr.SelectData(None, {"index": 0, "value": None})
    )
    assert [label for label, _ in versions.choices] == [
        "Original",
        "Version 2: restored (codeformer), upscaled x2",
    ]
    assert versions.value == version and download == str(project.path(f"outputs/{version}.png"))
    assert [side["orig_name"] for side in compare.value] == [f"{first}.png", f"{version}.png"]


def test_the_gallery_sorts_by_identity_newest_or_seed(studio):
    from studio.gallery import refresh

    project = studio.store.create("anna")
    ids = add_outputs(project, 3, identity=[0.5, 0.9, None], seed=[30, 10, 20])
    assert refresh(studio, "anna", "identity")[2] == [ids[1], ids[0], ids[2]]
    assert refresh(studio, "anna", "newest")[2] == [ids[2], ids[1], ids[0]]
    assert refresh(studio, "anna", "seed")[2] == [ids[1], ids[2], ids[0]]
    postprocessed(project, ids[0], 0.4, "2026-12-04T08:00:00+00:00")
    assert refresh(studio, "anna", "newest")[2][0] == ids[0]


def test_details_are_words_with_the_run_named_and_no_paths(studio):
    from engine.runs import run_labels, short_time, update_run
    from studio.gallery import on_select

    project = studio.store.create("anna")
    update_run(project, "20261202-130000-aa", preset="paper")
    update_run(project, "run-1", preset="fast", status="finished")
    project.update(lambda m: m["trainings"][1].update(started="2026-12-02T14:05:00+00:00"))
    params = {
        "prompt": "a photo of <sks> person", "negative_prompt": "blurry", "sampler": "euler_a", "steps": 30,
        "guidance_scale": 7.5, "unet_lora_scale": 0.9, "text_lora_scale": 0.6, "width": 512, "height": 512,
        "base_model": str(project.root.parent.parent / ".cache" / "sd15"), "model": "sd15",
        "artefact": "trainings/run-1/artefact.safetensors",
    }  # fmt: skip
    ids = add_outputs(project, 1, params=params)
    postprocessed(project, ids[0], 0.8, "2026-12-04T08:00:00+00:00")
    label = run_labels(project)["run-1"]
    local = __import__("datetime").datetime.fromisoformat("2026-12-02T14:05:00+00:00").astimezone()
    assert label == f"Run 2 - {local.day} {local:%b %H:%M} - fast"
    assert short_time("2026-12-02T14:05:00+00:00") == f"{local.day} {local:%b %H:%M}"
    *_, text, _ = on_select(studio, "anna", ids, gr.SelectData(None, {"index": 0, "value": None}))
    for words in ("**Prompt:** a photo of &lt;sks&gt; person", "**Seed:** 0", "euler_a, 30 steps",
                  "**Guidance scale:** 7.5", "UNet 0.9, text encoder 0.6", f"**Training run:** {label}",
                  "face restoration codeformer", f"**Created:** {short_time('2026-12-04T08:00:00+00:00')}"):  # fmt: skip
        assert words in text, words
    assert str(project.root.parent.parent) not in text and "{" not in text


def test_the_exports_folder_is_named_and_opened_only_for_a_browser_on_this_computer(studio, monkeypatch):
    from types import SimpleNamespace

    from studio import gallery

    project = studio.store.create("anna")
    folder = project.path("exports")
    assert str(folder) in gallery.refresh(studio, "anna")[-1]
    assert "Nothing is exported yet" in gallery.on_show_folder(studio, "anna", None)
    folder.mkdir()
    opened = []
    monkeypatch.setattr(gallery, "open_folder", opened.append)

    def request(client: str, host: str) -> SimpleNamespace:
        return SimpleNamespace(client=SimpleNamespace(host=client), headers={"host": host})

    remote = request("192.168.1.30", "192.168.1.20:7860")
    assert "on the studio's computer" in gallery.on_show_folder(studio, "anna", remote) and opened == []
    tunnel = request("127.0.0.1", "abc.example")  # a share link's tunnel connects from this computer
    assert "on the studio's computer" in gallery.on_show_folder(studio, "anna", tunnel) and opened == []
    local = request("127.0.0.1", "127.0.0.1:7860")
    assert "open in your file manager" in gallery.on_show_folder(studio, "anna", local)
    assert opened == [folder]


def test_projects_are_listed_by_the_name_as_typed_and_never_fold_onto_another(studio):
    """The manifest keeps the name as typed; the folder's safe form is never shown (a regression guard:
    this held before issue 16)."""
    from studio.project import on_create, summary

    picker, _ = on_create(studio, "  Jane Doe headshots ")
    assert picker.value == "Jane Doe headshots" and picker.choices == [("Jane Doe headshots",) * 2]
    assert "<h3>Jane Doe headshots</h3>" in summary(studio, "Jane Doe headshots")
    assert studio.project("Jane Doe headshots").root.name == "Jane-Doe-headshots"
    with pytest.raises(gr.Error, match="belongs to project 'Jane Doe headshots'"):
        on_create(studio, "Jane-Doe headshots")
    assert studio.store.list() == ["Jane Doe headshots"]


def test_a_damaged_manifest_whose_versions_loop_still_lists_its_portraits(studio):
    from studio.gallery import portraits

    project = studio.store.create("anna")
    a, b = add_outputs(project, 2)

    def loop(manifest):
        manifest["outputs"][0]["parent"], manifest["outputs"][1]["parent"] = b, a

    project.update(loop)
    assert sorted(len(p.versions) for p in portraits(project)) in ([2], [1, 1])


@pytest.mark.parametrize("fmt", ["a1111", "diffusers"])
def test_an_export_gives_the_lora_the_embeddings_and_the_usage_note_in_either_format(tmp_path, lora, fmt):
    """The note's prompts use the embeddings' words, so every format exports them, and the note is listed."""
    from fixtures_outputs import project_with_run

    from engine.export import USAGE_NOTE
    from studio.gallery import on_export
    from studio.state import Studio

    project = project_with_run(tmp_path / "store", lora.path)
    studio = Studio(ProjectStore(tmp_path / "store"))
    files = [Path(file) for file in on_export(studio, project.name, fmt)]

    names = {file.name for file in files}
    assert USAGE_NOTE in names
    embeddings = [file for file in files if "lora" not in file.name and file.suffix == ".safetensors"]
    assert len(embeddings) == 2
    note = (files[0].parent / USAGE_NOTE).read_text()
    assert all(file.stem in note for file in embeddings)
    assert all(file.is_file() for file in files)


def test_the_generate_tab_names_runs_as_people_say_them(studio):
    from studio.generate import runs

    project = studio.store.create("Jane Doe headshots")
    stamps = ("2026-12-02T14:05:00+00:00", "2026-12-03T09:30:00+00:00")
    project.update(
        lambda manifest: manifest["trainings"].extend(
            {"id": f"2026120{i}-run", "status": "finished", "preset": "fast", "started": stamp}
            for i, stamp in enumerate(stamps, start=2)
        )
    )
    _, picker = runs(studio, project.name)
    labels = dict((value, label) for label, value in picker.choices)
    assert [value for _, value in picker.choices] == ["20261203-run", "20261202-run"]  # newest first
    assert labels["20261202-run"].startswith("Run 1 - ") and labels["20261202-run"].endswith(" - fast")
    assert labels["20261203-run"].startswith("Run 2 - ")
    assert picker.value == "20261203-run"
