"""The studio without a browser: job runner, start-up, serving rules and auth against a running app."""

from __future__ import annotations

import inspect
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
import requests

import app as launcher
from engine.events import Finished, PhaseStarted, PreviewSaved, StepDone
from studio.jobs import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobRefused, JobRunner

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- job runner ----------------------------------------------------------------------------


def test_runner_runs_jobs_one_at_a_time_in_order():
    runner = JobRunner()
    active, peak, order = [0], [0], []
    lock = threading.Lock()

    def work(job):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        order.append(job.title)
        with lock:
            active[0] -= 1
        return job.title

    jobs = [runner.submit("train", f"p{i}", f"job {i}", work) for i in range(4)]
    assert all(runner.wait(job, timeout=10) for job in jobs)
    assert peak[0] == 1
    assert order == ["job 0", "job 1", "job 2", "job 3"]
    assert [job.status for job in jobs] == [DONE] * 4
    assert jobs[2].result == "job 2"


def test_runner_refuses_a_second_job_with_the_same_key_and_says_why():
    runner = JobRunner()
    release = threading.Event()
    first = runner.submit("train", "anna", "Training of anna", lambda job: release.wait(10), key="train:anna")
    with pytest.raises(JobRefused, match="Training of anna is already"):
        runner.submit("train", "anna", "Training of anna", lambda job: None, key="train:anna")
    other = runner.submit("train", "ben", "Training of ben", lambda job: None, key="train:ben")
    assert other.status == QUEUED
    release.set()
    assert runner.wait(other, timeout=10)
    assert first.status == DONE and other.status == DONE
    again = runner.submit("train", "anna", "Training of anna", lambda job: None, key="train:anna")
    assert runner.wait(again, timeout=10) and again.status == DONE


def test_runner_cancels_queued_and_running_jobs():
    runner = JobRunner()
    started = threading.Event()

    def long_work(job):
        started.set()
        while not job.cancel.wait(0.01):
            pass
        raise RuntimeError("stopped because cancelled")

    running = runner.submit("train", "p", "long", long_work)
    waiting = runner.submit("generate", "p", "waiting", lambda job: pytest.fail("a cancelled job ran"))
    assert started.wait(10)
    assert running.status == RUNNING
    assert runner.cancel(waiting.id) and waiting.status == CANCELLED
    assert runner.cancel(running.id)
    assert runner.wait(running, timeout=10)
    assert running.status == CANCELLED and running.error is None
    assert not runner.cancel(running.id)


def test_a_failing_job_keeps_its_message_and_the_runner_goes_on():
    runner = JobRunner()

    def broken(job):
        raise ValueError("The photos of project p are gone; add them again.")

    failed = runner.submit("train", "p", "broken", broken)
    after = runner.submit("train", "p", "after", lambda job: 42)
    assert runner.wait(after, timeout=10)
    assert failed.status == FAILED
    assert failed.error == "The photos of project p are gone; add them again."
    assert after.status == DONE and after.result == 42
    assert runner.jobs()[0] is after


def test_two_train_clicks_on_one_project_queue_one_and_refuse_the_other(tmp_path):
    from engine.config import preset
    from engine.store import ProjectStore
    from studio.app import Studio
    from studio.train import submit_training

    studio = Studio(ProjectStore(tmp_path))
    project = studio.store.create("anna")
    release = threading.Event()
    blocker = studio.runner.submit("generate", "other", "Portraits of other", lambda job: release.wait(10))
    first = submit_training(studio, project, preset("fast"))
    assert first.status == QUEUED
    with pytest.raises(JobRefused, match="Training of anna is already waiting in the queue"):
        submit_training(studio, project, preset("fast"))
    studio.runner.cancel(first.id)
    release.set()
    assert studio.runner.wait(blocker, timeout=10)
    assert first.status == CANCELLED


# -- the live training view ----------------------------------------------------------------


def training_events(tmp_path: Path) -> list:
    return [
        PhaseStarted(phase=1, steps=4, description="Phase 1: learning the two tokens"),
        *[
            StepDone(
                phase=1,
                step=i,
                phase_steps=4,
                global_step=i,
                total_steps=8,
                losses={"source": 0.5 / i, "total": 1.0 / i},
                lr=1e-3,
                it_per_s=2.0,
                eta_s=(8 - i) / 2.0,
            )
            for i in (1, 2, 3)
        ],
        PreviewSaved(
            phase=1,
            global_step=3,
            prompt="a photo of <sks> person in the style of <style1>",
            images=[str(tmp_path / "seed-0.png")],
            attention_maps={
                "<sks>": [str(tmp_path / "seed-0-identity.png")],
                "<style1>": [str(tmp_path / "s.png")],
            },
        ),
    ]


def test_fold_shows_progress_losses_previews_and_attention(tmp_path):
    from studio.train import fold, loss_frame, progress_html

    view = fold(training_events(tmp_path))
    assert (view.state, view.phase, view.step, view.total) == ("running", 1, 3, 8)
    assert view.eta_s == 2.5
    frame = loss_frame(view)
    assert sorted(frame["term"].unique()) == ["source", "total"]
    assert len(frame) == 6
    assert [caption for _, caption in view.attention] == ["<sks> · step 3", "<style1> · step 3"]
    assert view.previews[0][0] == str(tmp_path / "seed-0.png")
    page = progress_html(view, None)
    assert "step 3 / 8" in page and "ETA 2 s" in page and "width:37.5%" in page
    done = fold([*training_events(tmp_path), Finished(artefact="x", seconds=75)])
    assert done.state == "done" and "1 min 15 s" in done.message


def _step(step: int, loss: float) -> StepDone:
    return StepDone(
        phase=1, step=step, phase_steps=4, global_step=step, total_steps=4,
        losses={"total": loss}, lr=1e-3, it_per_s=1.0, eta_s=4.0 - step,
    )  # fmt: skip


def test_a_resumed_run_replaces_the_repeated_steps_in_the_loss_curve():
    from studio.train import fold, loss_frame

    # Crashed after step 3 with its checkpoint at step 2; the resume repeats step 3 and goes on.
    view = fold([_step(1, 0.9), _step(2, 0.8), _step(3, 0.7), _step(3, 0.6), _step(4, 0.5)])
    frame = loss_frame(view)
    assert frame["step"].tolist() == [1, 2, 3, 4]
    assert frame["value"].tolist() == pytest.approx([0.9, 0.8, 0.6, 0.5])


def test_a_resume_job_shows_its_run_history_before_its_own_steps(tmp_path, monkeypatch):
    import engine.training
    from engine.config import preset
    from engine.events import EventLog, Failed
    from engine.store import ProjectStore
    from studio.app import Studio
    from studio.train import latest_view, loss_frame, submit_training

    studio = Studio(ProjectStore(tmp_path))
    project = studio.store.create("anna")
    log = EventLog(project.path("trainings", "run-1", "events.jsonl"))
    for event in (_step(1, 0.9), _step(2, 0.8), _step(3, 0.7), Failed(message="killed", error="OSError")):
        log.append(event)
    resumed = []

    def train(project, config, *, on_event, cancel, resume, face_kit):
        resumed.append(resume)
        for event in (_step(3, 0.6), _step(4, 0.5)):
            log.append(event)  # the engine writes its log before it calls back
            on_event(event)
        return tmp_path / "final.safetensors"

    monkeypatch.setattr(engine.training, "resume_available", lambda project: "run-1")
    monkeypatch.setattr(engine.training, "train", train)
    monkeypatch.setattr(Studio, "face_kit", lambda self: None)
    job = submit_training(studio, project, preset("fast"), resume=True)
    assert studio.runner.wait(job, timeout=10)
    view, shown_job = latest_view(studio, "anna")
    assert shown_job is job and resumed == ["run-1"]
    assert view.state == "done" and view.step == 4
    assert loss_frame(view)["value"].tolist() == pytest.approx([0.9, 0.8, 0.6, 0.5])


def test_replay_from_disk_matches_the_live_view(tmp_path):
    from engine.events import EventLog
    from studio.train import fold, replay

    log = EventLog(tmp_path / "events.jsonl")
    events = training_events(tmp_path)
    for event in events:
        log.append(event)
    assert replay(tmp_path / "events.jsonl") == fold(events)


# -- start-up ------------------------------------------------------------------------------


def test_importing_the_studio_does_not_import_torch():
    code = "import sys, app, studio.app; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_share_without_auth_refuses_to_start_and_says_how_to_log_in(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != launcher.AUTH_ENV}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import app, sys; sys.exit(app.main())",
            "--share",
            "--no-browser",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--auth USER:PASSWORD" in result.stderr and launcher.AUTH_ENV in result.stderr
    assert not (tmp_path / "projects").exists()


def test_auth_comes_from_the_flag_or_the_environment():
    assert launcher.resolve_auth("ann:secret", {}) == (("ann", "secret"), False)
    assert launcher.resolve_auth(None, {launcher.AUTH_ENV: "bo:pw:with:colons"}) == (
        ("bo", "pw:with:colons"),
        False,
    )
    assert launcher.resolve_auth(None, {}) == (None, False)
    (user, password), generated = launcher.resolve_auth("generate", {})
    assert generated and user and len(password) >= 12
    with pytest.raises(launcher.AuthError, match="USER:PASSWORD"):
        launcher.resolve_auth("no-colon", {})


# -- serving rules against a running app ---------------------------------------------------


def start_studio(root: Path, auth: tuple[str, str] | None = None):
    from engine.store import ProjectStore
    from studio.app import LaunchOptions, Studio, launch

    studio = Studio(ProjectStore(root))
    blocks = launch(studio, LaunchOptions(port=free_port(), auth=auth, open_browser=False), block=False)
    return studio, blocks, blocks.local_url.rstrip("/")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served").resolve()
    studio, blocks, url = start_studio(root)
    project = studio.store.create("anna")
    yield root, project, url
    blocks.close()


@pytest.fixture(scope="module")
def served_with_auth(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-auth").resolve()
    studio, blocks, url = start_studio(root, auth=("ann", "s3cret-pw"))
    studio.store.create("anna")
    yield root, blocks, url
    blocks.close()


def outside_paths(root: Path) -> list[str]:
    depth = "/..".join([""] * (len(root.parts) + 2))
    return [
        "/etc/passwd",
        f"{root}{depth}/etc/passwd",
        f"{root}/projects/../../../../../../../../etc/passwd",
        f"{root}/projects/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "../../../../../../../../etc/passwd",
        "//etc/passwd",
        str(ROOT / "pyproject.toml"),
        str(Path(launcher.__file__).resolve()),
        f"{root}/projects/evil-link/passwd",
    ]


def test_files_are_served_only_from_the_data_root(served):
    root, project, url = served
    (project.root / "evil-link").symlink_to("/etc", target_is_directory=True)
    inside = project.root / "manifest.json"
    answer = requests.get(f"{url}/gradio_api/file={inside}", timeout=10)
    assert answer.status_code == 200 and '"anna"' in answer.text
    for path in outside_paths(root):
        for route in ("/gradio_api/file=", "/gradio_api/file/", "/file="):
            answer = requests.get(f"{url}{route}{path}", timeout=10)
            assert answer.status_code in (403, 404), (route, path, answer.status_code)
            assert "root:" not in answer.text


def test_urls_are_never_fetched_or_proxied(served):
    _, _, url = served
    for target in (
        "/gradio_api/file=http://127.0.0.1:1/x.png",
        "/gradio_api/file=https://example.org/a.png",
        "/gradio_api/proxy=https://example.org/a.png",
    ):
        answer = requests.get(f"{url}{target}", timeout=10)
        assert answer.status_code == 403, target


def test_the_gatekeeper_resolves_links_and_dots(tmp_path):
    from studio.app import Gatekeeper

    root = tmp_path / "root"
    (root / "projects" / "a").mkdir(parents=True)
    (root / "projects" / "a" / "ok.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "projects" / "a" / "link.txt").symlink_to(tmp_path / "secret.txt")
    gate = Gatekeeper(None, str(root))
    assert gate.servable(str(root / "projects" / "a" / "ok.png"))
    assert not gate.servable(str(root / "projects" / "a" / "link.txt"))
    assert not gate.servable(str(root / "projects" / ".." / ".." / "secret.txt"))
    assert not gate.servable(str(root / "projects" / "a"))
    assert not gate.servable("")


def app_routes(routes, prefix: str = ""):
    """(path, methods) of every route, including those of routers included with a prefix."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from app_routes(inner.routes, prefix + route.include_context.prefix)
        elif getattr(route, "path", None) is not None:
            yield prefix + route.path, getattr(route, "methods", None) or {"GET"}


def concrete(path: str, file: Path) -> str:
    """A request path for a route pattern: placeholders filled with harmless values."""
    path = path.replace("{path_or_url:path}", str(file))
    return re.sub(r"\{[^}]+\}", "1", path)


def test_with_auth_every_route_needs_the_login(served_with_auth):
    from studio.app import Gatekeeper

    root, blocks, url = served_with_auth
    manifest = root / "projects" / "anna" / "manifest.json"
    checked = set()
    for path, methods in app_routes(blocks.server_app.routes):
        if Gatekeeper.public(path) or Gatekeeper.public(path.split("{")[0]):
            continue
        method = "GET" if "GET" in methods else sorted(methods)[0]
        answer = requests.request(
            method, f"{url}{concrete(path, manifest)}", timeout=10, allow_redirects=False
        )
        assert answer.status_code == 401, (method, path, answer.status_code)
        checked.add(path)
    assert {"/config", "/gradio_api/info", "/gradio_api/upload", "/gradio_api/queue/join"} <= checked
    assert len(checked) > 30

    session = requests.Session()
    assert (
        session.post(f"{url}/login", data={"username": "ann", "password": "wrong"}, timeout=10).status_code
        == 400
    )
    assert session.post(f"{url}/login", data={"username": "ann", "password": "s3cret-pw"}, timeout=10).ok
    assert session.get(f"{url}/config", timeout=10).status_code == 200
    answer = session.get(f"{url}/gradio_api/file={manifest}", timeout=10)
    assert answer.status_code == 200 and '"anna"' in answer.text
    assert session.get(f"{url}/gradio_api/file=/etc/passwd", timeout=10).status_code == 403


# -- the layout ----------------------------------------------------------------------------


def needs_event_data(fn) -> bool:
    return any(
        p.annotation in ("gr.SelectData", gr.SelectData) for p in inspect.signature(fn).parameters.values()
    )


def test_every_refresh_returns_one_value_per_output(tmp_path):
    """Call each event that only reads the open project (and its last-seen state) like the browser would."""
    from engine.store import ProjectStore
    from studio.app import Studio, build

    studio = Studio(ProjectStore(tmp_path))
    studio.store.create("anna")
    blocks = build(studio)
    picker = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "project-picker")
    called = 0
    for block_fn in blocks.fns.values():
        inputs = block_fn.inputs
        events = {event for _, event in block_fn.targets}
        if not events <= {"tick", "change", "select"} or not inputs or inputs[0] is not picker:
            continue
        if any(not isinstance(i, gr.State) for i in inputs[1:]) or needs_event_data(block_fn.fn):
            continue
        for name in ("anna", None):
            result = block_fn.fn(name, *[None] * (len(inputs) - 1))
            if len(block_fn.outputs) > 1:
                assert len(result) == len(block_fn.outputs), block_fn.name
        called += 1
    assert called >= 8


@pytest.mark.slow
def test_style_references_painted_from_a_prompt_become_photos_or_refusals(tmp_path, monkeypatch):
    from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit
    from engine.photos import photo_records
    from engine.store import ProjectStore
    from studio.app import Studio
    from studio.photos import submit_references

    kit = build_demo_kit(default_kit_folder())
    for name in ("MAGICAPTURE_ASSETS", "MAGICAPTURE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    use_demo_kit(kit)
    studio = Studio(ProjectStore(tmp_path), demo=kit)
    project = studio.store.create("anna")
    with pytest.raises(gr.Error, match="Describe the style"):
        submit_references(studio, project, "  ", 2)
    job = submit_references(studio, project, "studio headshot, grey backdrop", 2)
    assert studio.runner.wait(job, timeout=300)
    assert job.status == DONE, job.error
    assert len(job.result) == 2
    shown = len(photo_records(project, "reference")) + len(studio.refusals.get("anna"))
    assert shown == 2, "each painted reference is either added or listed with the reason it was refused"


def test_the_training_view_shows_the_identity_curve_and_chooses_the_best_checkpoint(tmp_path, monkeypatch):
    import engine.training
    from engine.events import EventLog
    from engine.store import ProjectStore
    from engine.training import PreviewCheckpoint, TrainingError
    from studio.app import Studio, build
    from studio.train import IDENTITY_TITLE, on_use

    studio = Studio(ProjectStore(tmp_path))
    project = studio.store.create("anna")
    project.update(lambda m: m.setdefault("trainings", []).append({"id": "run-1", "status": "finished"}))
    log = EventLog(project.path("trainings", "run-1", "events.jsonl"))
    for step, scores in ((3, [0.2, None]), (6, [0.7, 0.5]), (9, [None, None]), (12, [0.4, 0.4])):
        mean = [s for s in scores if s is not None]
        images = [str(tmp_path / f"step-{step}-seed-{i}.png") for i in range(2)]
        log.append(
            PreviewSaved(
                phase=2,
                global_step=step,
                prompt="p",
                images=images,
                attention_maps={},
                identity=scores,
                identity_mean=sum(mean) / len(mean) if mean else None,
            )
        )
    calls = []

    def use_preview(project, run, step):
        calls.append((run, step))
        if step == 12:
            raise TrainingError("Training run-1 is running; choose its checkpoint once it has finished.")
        project.update(lambda m: m["trainings"][0].update(artefact_step=step))
        return tmp_path

    best = PreviewCheckpoint(6, 0.6, tmp_path)
    monkeypatch.setattr(
        engine.training, "best_preview", lambda project, run: best if run == "run-1" else None
    )
    monkeypatch.setattr(engine.training, "use_preview", use_preview)

    blocks = build(studio)
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    assert IDENTITY_TITLE in by_id["identity-curve-heading"].value

    shown = on_use(studio, "anna", best=True)
    assert calls == [("run-1", 6)]
    points = shown.identity_plot.value["data"]
    assert [step for step, _ in points] == [3, 6, 12]
    assert [score for _, score in points] == pytest.approx([0.2, 0.6, 0.4])
    assert "step 6, identity 0.600" in shown.best_text
    assert "uses **the checkpoint of step 6**" in shown.best_text
    assert shown.best_images.visible
    assert [item["image"]["path"] for item in shown.best_images.value] == [
        str(tmp_path / f"step-6-seed-{i}.png") for i in (0, 1)
    ]
    shown = on_use(studio, "anna", best=False)
    assert calls[-1] == ("run-1", None)
    assert "uses **the final weights**" in shown.best_text
    best = PreviewCheckpoint(12, 0.4, tmp_path)
    with pytest.warns(UserWarning, match="is running"):
        shown = on_use(studio, "anna", best=True)
    assert "uses **the final weights**" in shown.best_text


@pytest.mark.slow
def test_the_tiny_identity_decoder_is_offered_under_advanced_and_a_demo_run_trains_with_it(
    tmp_path, monkeypatch
):
    from engine.artefact import load_artefact
    from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit
    from engine.demo.portraits import make_project
    from engine.store import ProjectStore
    from studio.app import Studio, build
    from studio.train import ADVANCED, advanced_values, make_config, submit_training

    kit = build_demo_kit(default_kit_folder())
    for name in ("MAGICAPTURE_ASSETS", "MAGICAPTURE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    use_demo_kit(kit)
    project = make_project(tmp_path, name="anna", embedding_dim=512)  # the demo kit's ArcFace size
    studio = Studio(ProjectStore(tmp_path), demo=kit)
    blocks = build(studio)
    menu = next(
        b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "advanced-identity_decoder"
    )
    assert isinstance(menu, gr.Dropdown) and [c[1] for c in menu.choices] == ["vae", "tiny"]
    assert menu.value == "tiny"  # the default

    chosen = {"phase1_steps": 1, "phase2_steps": 2, "preview_every": 0, "identity_decoder": "tiny"}
    config = make_config(studio, "fast", "auto", advanced_values(tuple(chosen.get(k) for k in ADVANCED)))
    assert (config.identity_decoder, config.tiny_decoder_model) == ("tiny", str(kit.tiny_decoder))
    job = submit_training(studio, project, config)
    assert studio.runner.wait(job, timeout=300)
    assert job.status == DONE, job.error
    run = project.manifest()["trainings"][-1]["id"]
    settings = load_artefact(project.path("trainings", run, "final.safetensors")).metadata["config"]
    assert settings["identity_decoder"] == "tiny"


def test_the_training_view_plots_token_attention_and_shows_the_methods_warnings():
    """Issue 15 item 1: the tokens' attention level was logged nowhere; a collapse went unseen."""
    from engine.events import MethodReport, MethodWarning
    from studio.train import attention_frame, fold, progress_html

    events = [
        PhaseStarted(phase=2, steps=20, description="LoRA and embeddings"),
        MethodReport(
            phase=2, global_step=10, attention={"<sks>": 0.02, "<style1>": 0.03},
            outside_share={"<sks>": 0.5, "<style1>": 0.25}, face_found={"composed t0-199": [3, 4]},
            detection_rate=0.75, skipped_steps=2, steps=10,
        ),
        MethodReport(phase=2, global_step=20, attention={"<sks>": 0.001, "<style1>": 0.03}),
        MethodWarning(check="attention_collapse <sks>", global_step=20, message="Set ar_loss=outside_share."),
        Finished(artefact="final.safetensors", seconds=3.0),
    ]  # fmt: skip
    view = fold(events)
    frame = attention_frame(view)
    assert frame.values.tolist() == [
        [10, "<sks>", 0.02], [10, "<style1>", 0.03], [20, "<sks>", 0.001], [20, "<style1>", 0.03]
    ]  # fmt: skip
    assert "Set ar_loss=outside_share." in view.warnings  # shown after the run too
    shown = progress_html(fold(events[:2]), None)
    assert "&lt;sks&gt; 50% outside its region" in shown
    assert "faces found in 75% of 4 identity estimates" in shown and "2 of 10 steps skipped" in shown
    assert "Set ar_loss=outside_share." in progress_html(view, None)
