"""engine.evaluate on a hand-built project: real PNG files, manifest entries and stand-in models.

The face kit is the real detector and recogniser code on the demo kit's stand-in weights: the SCRFD
stand-in finds a "face" at a bright square on a dark image, the ArcFace stand-in embeds it, and the
elliptical fallback parser gives the face region. So each expected number below is known by
construction (same pixels, same face -> cosine 1; no bright square -> no face -> CSIM 0). The
independent recogniser (SFace) comes from the demo kit's asset folder, offline.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fixtures_metrics import pattern
from PIL import Image

from engine import metrics
from engine.artefact import save_artefact
from engine.demo.faces import _save, arcface_standin, build_face_assets, scrfd_standin
from engine.demo.scoring import build_scoring_assets
from engine.evaluate import EvaluationError, evaluate_project, protocol, run_settings
from engine.faces import FaceKit, face_mask, load_face_kit
from engine.faces.detect import ScrfdDetector
from engine.faces.fallback import EllipseParser
from engine.faces.identity import ArcFaceScorer
from engine.outputs import OutputRecord
from engine.store import Project, ProjectStore

TRAINED = "CSIM (ArcFace, trained against)"
INDEPENDENT = "CSIM (SFace, independent)"
CONFIGS = {
    "r1": {"preset": "paper", "ar_weight": 2.5, "seed": 0, "device": "cuda"},
    "r2": {"preset": "paper", "ar_weight": 0.0, "seed": 0, "device": "cpu"},
}


def face_image(seed: int) -> np.ndarray:
    """A dark pattern with a white square: the stand-in detector's face."""
    image = pattern(seed) // 2
    image[40:72, 48:80] = 255
    return image


@pytest.fixture(autouse=True)
def stand_in_assets(face_assets, monkeypatch):
    """The demo kit's asset folder, offline: where the independent recogniser (SFace) is found."""
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(face_assets))
    monkeypatch.setenv("MAGICAPTURE_OFFLINE", "1")
    return face_assets


@pytest.fixture(scope="module")
def kit(tmp_path_factory) -> FaceKit:
    folder = tmp_path_factory.mktemp("face-standins")
    _save(scrfd_standin(), folder / "det_10g.onnx")
    _save(arcface_standin(), folder / "w600k_r50.onnx")
    return FaceKit(
        detector=ScrfdDetector(folder / "det_10g.onnx"),
        parser=EllipseParser(),
        scorer=ArcFaceScorer(folder / "w600k_r50.onnx"),
    )


@pytest.fixture(scope="module")
def models(tiny_scoring):
    return metrics.load_clip(tiny_scoring.clip, device="cpu"), metrics.load_aesthetic_head(
        tiny_scoring.aesthetic
    )


def _png(project: Project, relative: str, array: np.ndarray) -> str:
    path = project.path(relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return relative


def _photo(project: Project, kit: FaceKit, role: str, photo_id: str, crop: np.ndarray) -> dict:
    """A manifest record like intake's: crop, face-region mask, the face box and landmarks in the crop."""
    face = kit.detector.detect(crop)[0]
    mask = face_mask(kit.parser.parse(crop, face)).astype(np.uint8) * 255
    folder = f"photos/{role}/{photo_id}"
    return {
        "id": photo_id,
        "role": role,
        "status": "accepted",
        "crop": _png(project, f"{folder}/crop.png", crop),
        "mask": _png(project, f"{folder}/mask.png", mask),
        "bbox": list(face.bbox),
        "landmarks": face.landmarks.tolist(),
    }


def _output(key: str, file: str, run: str, **fields) -> dict:
    """A manifest entry for an output, as `engine.outputs.add_output` writes it."""
    record = OutputRecord(key, file, seed=1, params={"seed": 1}, run=run, identity=None, created="", **fields)
    return record.to_json()


@pytest.fixture
def project(kit) -> Project:
    """Sources: two copies of face A. Reference: face R. Run r1: A and a faceless image; run r2: R."""
    project = ProjectStore().create("eval test")
    source, reference = face_image(1), face_image(2)
    images = [
        _photo(project, kit, "source", "s1", source),
        _photo(project, kit, "source", "s2", source),
        _photo(project, kit, "reference", "ref1", reference),
    ]
    generated = {"o1": ("r1", source), "o2": ("r1", pattern(3) // 2), "o3": ("r2", reference)}
    outputs = [
        _output(key, _png(project, f"outputs/{key}.png", image), run)
        for key, (run, image) in generated.items()
    ]
    trainings = []
    for run, config in CONFIGS.items():
        artefact = f"trainings/{run}/final.safetensors"
        save_artefact(project.path(artefact), {}, {}, {"<sks>": torch.zeros(4)}, {"config": config})
        trainings.append({"id": run, "preset": "paper", "status": "finished", "artefact": artefact})

    def fill(manifest: dict) -> None:
        manifest.update(images=images, outputs=outputs, trainings=trainings)

    project.update(fill)
    return project


def test_scores_every_run_against_the_projects_photos(project, kit, models):
    clip, head = models
    report = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)

    r1, r2 = report.runs
    assert (r1.run, r1.n, r1.faces, r2.run, r2.n, r2.faces) == ("r1", 2, 1, "r2", 1, 1)
    by_id = {image.output: image for image in report.images}
    assert by_id["o1"].csim == pytest.approx(1.0, abs=1e-5)  # the source face itself
    assert by_id["o2"].csim == 0.0 and not by_id["o2"].face  # no face: identity not recognisable
    assert r1.csim == pytest.approx(0.5, abs=1e-5)
    assert by_id["o3"].style == pytest.approx(1.0, abs=1e-5)  # the reference itself, same face mask
    assert by_id["o1"].style < 1 - 1e-4
    expected = metrics.aesthetic_score(metrics.clip_embeddings(clip, [face_image(2)]), head)[0]
    assert r2.aesthetic == pytest.approx(expected, abs=1e-5)
    assert r1.aesthetic == pytest.approx((by_id["o1"].aesthetic + by_id["o2"].aesthetic) / 2)
    assert report.notes == []


def test_batches_do_not_change_the_scores(project, kit, models, monkeypatch):
    clip, head = models
    whole = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)
    monkeypatch.setattr(protocol, "BATCH", 2)
    batched = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)
    assert [i.output for i in batched.images] == ["o1", "o2", "o3"]
    for a, b in zip(whole.images, batched.images, strict=True):
        assert (a.face, a.csim) == (b.face, b.csim)
        assert a.style == pytest.approx(b.style, abs=1e-6) and a.aesthetic == pytest.approx(
            b.aesthetic, abs=1e-6
        )


def test_the_table_compares_runs_by_the_settings_that_differ(project, kit, models):
    clip, head = models
    report = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)

    rows = report.table()
    assert [list(row) for row in rows] == [
        ["run", "preset", "ar_weight", "n", "faces", TRAINED, INDEPENDENT, "style", "aesthetic"]
    ] * 2
    assert [(row["run"], row["ar_weight"]) for row in rows] == [("r1", 2.5), ("r2", 0.0)]
    text = report.markdown()
    assert f"| run | preset | ar_weight | n | faces | {TRAINED} | {INDEPENDENT} | style | aesthetic |" in text
    assert "| r1 | paper | 2.5 | 2 | 1 | 0.500 | 0.500 |" in text
    assert "| r2 | paper | 0 | 1 | 1 |" in text and "CLIP: " in text


def test_the_report_is_saved_in_the_project(project, kit, models):
    clip, head = models
    first = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)
    second = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)

    assert first.path.parent == project.path("evaluations") == second.path.parent
    assert first.path != second.path  # two evaluations in the same second keep both files
    saved = json.loads(first.path.read_text("utf-8"))
    assert saved["table"] == json.loads(json.dumps(first.table()))
    assert [image["output"] for image in saved["images"]] == ["o1", "o2", "o3"]
    assert saved["runs"][0]["settings"]["device"] == "cuda"
    assert not list(project.path("evaluations").glob(".*.tmp"))


def test_run_filter_and_what_cannot_be_evaluated(project, kit, models):
    clip, head = models
    only = evaluate_project(project, ["r2"], face_kit=kit, clip=clip, aesthetic=head)
    assert [run.run for run in only.runs] == ["r2"]
    assert only.compared_settings() == ["preset"]  # one run: nothing differs, the preset still shows
    with pytest.raises(EvaluationError, match="no generated images from run.*r9"):
        evaluate_project(project, ["r9"], face_kit=kit, clip=clip, aesthetic=head)
    empty = ProjectStore().create("empty")
    with pytest.raises(EvaluationError, match="no generated images to evaluate"):
        evaluate_project(empty, face_kit=kit, clip=clip, aesthetic=head)

    def exclude_references(manifest: dict) -> None:
        for record in manifest["images"]:
            if record["role"] == "reference":
                record["status"] = "excluded"  # only accepted photos count, as in training

    project.update(exclude_references)
    with pytest.raises(EvaluationError, match="no reference photos"):
        evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)


def test_missing_files_and_a_kit_without_recogniser_are_reported(project, kit, models):
    clip, head = models
    project.path("outputs", "o2.png").unlink()
    fallback = FaceKit(detector=kit.detector, parser=kit.parser, scorer=None, fallbacks=("recogniser",))
    report = evaluate_project(project, face_kit=fallback, clip=clip, aesthetic=head)

    assert [run.n for run in report.runs] == [1, 1]
    assert all(run.csim is None for run in report.runs)
    assert all(run.csim_independent is not None for run in report.runs)  # SFace still measures
    assert any("1 generated image file(s) are missing" in note for note in report.notes)
    assert f"{TRAINED} unavailable: no face recogniser is installed" in "\n".join(report.notes)
    assert any("Approximate offline face models" in note for note in report.notes)
    assert "| r1 | paper | 2.5 | 1 | 1 | unavailable | 1.000 |" in report.markdown()


def test_a_head_for_another_clip_is_refused(project, kit, models):
    clip, _ = models
    state = {f"layers.{i}.weight": torch.ones(1 if i == 7 else 2, 2) for i in (0, 2, 4, 6, 7)}
    state |= {f"layers.{i}.bias": torch.zeros(1 if i == 7 else 2) for i in (0, 2, 4, 6, 7)}
    with pytest.raises(EvaluationError, match="expects 2-wide CLIP embeddings"):
        evaluate_project(project, face_kit=kit, clip=clip, aesthetic=metrics.build_aesthetic_head(state))


def test_run_settings_come_from_the_artefact_else_the_preset(project):
    def add_runs(manifest: dict) -> None:
        manifest["trainings"] += [
            {"id": "stopped", "preset": "fast", "status": "stopped"},
            {"id": "damaged", "preset": "released", "artefact": "trainings/damaged/final.safetensors"},
        ]

    project.update(add_runs)
    project.path("trainings", "damaged").mkdir(parents=True)
    project.path("trainings", "damaged", "final.safetensors").write_bytes(b"not a safetensors file")
    settings = run_settings(project, ["r1", "stopped", "damaged", "unknown"])
    assert settings == {
        "r1": CONFIGS["r1"],
        "stopped": {"preset": "fast"},
        "damaged": {"preset": "released"},
        "unknown": {},
    }


def test_post_processed_outputs_are_averaged_apart(project, kit, models):
    clip, head = models
    post = _output(
        "o4", _png(project, "outputs/o4.png", face_image(1)), "r1", parent="o1", raw="outputs/o1.png"
    )
    project.update(lambda manifest: manifest["outputs"].append(post))
    report = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)

    assert [(run.run, run.post, run.n) for run in report.runs] == [
        ("r1", False, 2),
        ("r2", False, 1),
        ("r1", True, 1),
    ]
    assert report.runs[2].csim == pytest.approx(1.0, abs=1e-5)
    assert [(row["run"], row["post"]) for row in report.table()] == [
        ("r1", "no"),
        ("r2", "no"),
        ("r1", "yes"),
    ]
    assert "| run | post | preset | ar_weight |" in report.markdown()


def test_loads_every_model_from_the_asset_cache_in_demo_mode(tmp_path, monkeypatch):
    """No models passed in: the face kit, CLIP and head come from a demo asset cache, offline."""
    from skimage import data

    assets = tmp_path / "assets"
    build_face_assets(assets)
    build_scoring_assets(assets)
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(assets))
    portrait = data.astronaut()  # the demo kit detects with Haar cascades, which need a real face
    project = ProjectStore().create("demo")
    kit = load_face_kit()
    images = [
        _photo(project, kit, "source", "s1", portrait),
        _photo(project, kit, "reference", "r1", portrait[:, ::-1]),
    ]
    outputs = [
        _output("a", _png(project, "outputs/a.png", portrait), "run-1"),
        _output("b", _png(project, "outputs/b.png", pattern(7, 256)), "run-1"),
    ]
    project.update(lambda manifest: manifest.update(images=images, outputs=outputs))

    report = evaluate_project(project)
    (run,) = report.runs
    assert (run.run, run.n, run.faces, run.settings) == ("run-1", 2, 1, {})
    assert run.csim == pytest.approx(0.5, abs=1e-5)
    assert -1 <= run.style <= 1 and np.isfinite(run.aesthetic)
    assert report.models["clip"] == str(assets / metrics.CLIP_FOLDER)
    assert run.csim_independent == pytest.approx(0.5, abs=1e-5)
    assert (report.models["faces"], report.models["independent"]) == ("haar, bisenet, arcface", "sface")
    assert report.notes == ["Approximate offline face models in use (detector); numbers are rough."]
    assert "| run-1 | 2 | 1 | 0.500 | 0.500 |" in report.markdown()


def test_identity_is_scored_by_the_trained_and_an_independent_recogniser(project, kit, models, face_assets):
    """ArcFace is what the identity loss trains against; SFace (from the asset cache) scores apart."""
    from engine.faces.identity import SFaceScorer

    clip, head = models
    report = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)

    rows = report.table()
    assert list(rows[0]) == [
        "run",
        "preset",
        "ar_weight",
        "n",
        "faces",
        TRAINED,
        INDEPENDENT,
        "style",
        "aesthetic",
    ]
    by_id = {image.output: image for image in report.images}
    assert by_id["o1"].csim_independent == pytest.approx(1.0, abs=1e-5)  # the source face itself
    assert by_id["o2"].csim_independent == 0.0  # no face
    sface = SFaceScorer(face_assets / "face_recognition_sface_2021dec.onnx")
    source, other = face_image(1), face_image(2)
    face_a, face_r = kit.detector.detect(source)[0], kit.detector.detect(other)[0]
    expected = metrics.csim(sface.embed(other, face_r), sface.embed(source, face_a)[None])
    assert by_id["o3"].csim_independent == pytest.approx(expected, abs=1e-5)
    assert by_id["o3"].csim_independent != pytest.approx(by_id["o3"].csim, abs=1e-3)  # another network
    assert rows[0][INDEPENDENT] == pytest.approx(0.5, abs=1e-5)
    text = report.markdown()
    assert f"| n | faces | {TRAINED} | {INDEPENDENT} | style | aesthetic |" in text
    assert report.models["independent"] == "sface"
    saved = report.to_json()
    assert saved["table"][1][INDEPENDENT] == pytest.approx(expected, abs=1e-5)
    assert [(c["label"], c["unavailable"]) for c in saved["identity"]] == [
        (TRAINED, None),
        (INDEPENDENT, None),
    ]


def test_a_missing_independent_recogniser_is_reported_not_fatal(project, kit, models, tmp_path, monkeypatch):
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(tmp_path / "no-assets"))  # empty, and offline
    clip, head = models
    report = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)

    assert report.table()[0][TRAINED] == pytest.approx(0.5, abs=1e-5)  # the trained one still measures
    assert all(row[INDEPENDENT] is None for row in report.table())
    (note,) = [note for note in report.notes if note.startswith(INDEPENDENT)]
    assert "unavailable" in note and "offline mode is on" in note  # the registry's reason
    assert "| r1 | paper | 2.5 | 2 | 1 | 0.500 | unavailable |" in report.markdown()
    assert report.models["independent"] == "unavailable"


def test_in_commercial_mode_sface_is_trained_against_and_arcface_is_refused(
    project, kit, models, face_assets
):
    """The commercial kit's loss trains against SFace; the independent one would be non-commercial ArcFace.

    The asset folder holds the buffalo_l stand-in, but its licence forbids commercial use.
    """
    from engine.faces.identity import SFaceScorer

    clip, head = models
    commercial = FaceKit(
        detector=kit.detector,
        parser=kit.parser,
        scorer=SFaceScorer(face_assets / "face_recognition_sface_2021dec.onnx"),
        commercial=True,
    )
    report = evaluate_project(project, face_kit=commercial, clip=clip, aesthetic=head)

    row = report.table()[0]
    assert "CSIM (SFace, trained against)" in row and row["CSIM (ArcFace, independent)"] is None
    assert row["CSIM (SFace, trained against)"] == pytest.approx(0.5, abs=1e-5)
    (note,) = [n for n in report.notes if n.startswith("CSIM (ArcFace, independent)")]
    assert "non-commercial use only" in note


def test_the_report_says_how_each_runs_method_went(project, kit, models):
    """Issue 15 item 1: `magicapture eval` said nothing of the tokens' attention or the detector's hits."""
    from engine.events import EventLog, MethodReport

    log = EventLog(project.path("trainings", "r1", "events.jsonl"))
    log.append(MethodReport(phase=2, global_step=5, attention={"<sks>": 0.5}))
    log.append(
        MethodReport(
            phase=2, global_step=10, attention={"<sks>": 0.004}, attention_start={"<sks>": 0.02},
            outside_share={"<sks>": 0.25}, face_found={"composed t0-199": [3, 4]}, detection_rate=0.75,
        )
    )  # fmt: skip
    clip, head = models
    report = evaluate_project(project, face_kit=kit, clip=clip, aesthetic=head)
    assert list(report.training) == ["r1"] and report.training["r1"].global_step == 10
    text = report.markdown()
    assert (
        "- r1: <sks> attention 4.00e-03 (20% of its phase-2 start 2.00e-02), 25% of it outside its region"
        in text
    )
    assert "faces found in 75% of 4 identity estimates" in text
    assert report.to_json()["training"]["r1"]["detection_rate"] == 0.75
