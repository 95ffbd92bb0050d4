"""Trust in the studio: nothing leaks before login, logins are throttled, replacing a photo loses
nothing, user errors leave no traceback, and a project is not deleted under a job."""

from __future__ import annotations

import http.client
import logging
import os
import re
import socket
import threading
import urllib.parse
import warnings

import gradio as gr
import pytest
import requests

import app as launcher
from studio.jobs import DONE, FAILED, JobRefused, JobRunner

LOGIN = ("ann", "a-long-studio-password")
CLIENT = "zelda quux portraits"
WAIT_S = 60
"""Bound on any wait for the server or a thread (generous: passes on a slow machine)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def auth_studio(tmp_path):
    """A studio served with a login, holding the project `CLIENT`; stopped even when the test fails."""
    from engine.store import ProjectStore
    from studio.app import LaunchOptions, Studio, launch

    studio = Studio(ProjectStore(tmp_path))
    project = studio.store.create(CLIENT)
    blocks = launch(studio, LaunchOptions(port=free_port(), auth=LOGIN, open_browser=False), block=False)
    try:
        yield project, blocks, blocks.local_url.rstrip("/")
    finally:
        blocks.close()
        studio.runner.close()


def api_names(blocks: gr.Blocks) -> set[str]:
    return {fn.api_name for fn in blocks.fns.values() if fn.api_name}


def named(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, flags=re.IGNORECASE) is not None


def leaks(body: str, project, endpoints: set[str]) -> list[str]:
    """The project names, endpoint names and data paths that ``body`` gives away."""
    found = [word for word in (project.name, "zelda", *sorted(endpoints)) if named(body, word)]
    return found + [path for path in (str(project.root.parent.parent), "projects/") if path in body]


# -- 1: the page served before logging in ----------------------------------------------------


def test_before_login_the_page_names_no_project_endpoint_or_file(auth_studio):
    from studio.app import PUBLIC_ROUTES

    project, blocks, url = auth_studio
    endpoints = api_names(blocks)
    assert {"on_delete", "on_replace", "on_upload"} <= endpoints
    for target in ("/", "/?page=", "/?__theme=dark"):
        answer = requests.get(f"{url}{target}", timeout=WAIT_S)
        assert answer.status_code == 200, target
        assert leaks(answer.text, project, endpoints) == [], target
        assert "name='password'" in answer.text, target
    for route in sorted(PUBLIC_ROUTES):
        answer = requests.get(f"{url}{route}", timeout=WAIT_S, allow_redirects=False)
        assert leaks(answer.text, project, endpoints) == [], route

    browser = requests.Session()
    shown = browser.post(
        f"{url}/login",
        data={"username": LOGIN[0], "password": LOGIN[1]},
        headers={"Accept": "text/html"},
        timeout=WAIT_S,
    )
    assert shown.status_code == 200 and shown.url.rstrip("/") == url
    assert named(shown.text, project.name) and "on_delete" in shown.text

    client = requests.Session()
    assert client.post(f"{url}/login", data={"username": LOGIN[0], "password": LOGIN[1]}, timeout=WAIT_S).ok
    assert "on_delete" in client.get(f"{url}/", timeout=WAIT_S).text


def test_a_wrong_login_from_the_page_shows_the_page_again(auth_studio):
    _, _, url = auth_studio
    answer = requests.post(
        f"{url}/login",
        data={"username": LOGIN[0], "password": "wrong"},
        headers={"Accept": "text/html"},
        timeout=WAIT_S,
    )
    assert answer.status_code == 401
    assert "Incorrect credentials" in answer.text and "name='password'" in answer.text


# -- 12: throttled logins and long share passwords -------------------------------------------


def post_login(url: str, user: str, password: str, source: str) -> int:
    """POST a login like an API client would, from the loopback address ``source``."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=WAIT_S, source_address=(source, 0)
    )
    try:
        body = urllib.parse.urlencode({"username": user, "password": password})
        connection.request("POST", "/login", body, {"Content-Type": "application/x-www-form-urlencoded"})
        return connection.getresponse().status
    finally:
        connection.close()


def test_wrong_studio_logins_are_throttled_per_address_and_per_user(auth_studio):
    from studio.proof import MAX_FAILURES

    _, _, url = auth_studio
    attacker, elsewhere, third = "127.0.0.2", "127.0.0.3", "127.0.0.4"
    for _ in range(MAX_FAILURES):
        assert post_login(url, LOGIN[0], "guess", attacker) == 400
    assert post_login(url, LOGIN[0], LOGIN[1], attacker) == 429, "the right password after 10 wrong ones"
    assert post_login(url, LOGIN[0], LOGIN[1], elsewhere) == 429, "the same user from another address"
    assert post_login(url, "bob", "guess", elsewhere) == 400, "another user from another address"
    assert post_login(url, "bob", "guess", attacker) == 429, "another user from the same address"
    assert post_login(url, "bob", "guess", third) == 400


def browser_login(session: requests.Session, url: str, password: str) -> requests.Response:
    return session.post(
        f"{url}/login",
        data={"username": LOGIN[0], "password": password},
        headers={"Accept": "text/html"},
        timeout=WAIT_S,
    )


def test_a_browser_that_logged_in_before_is_not_locked_out_by_a_strangers_guesses(auth_studio):
    """Behind a share link every visitor comes from one address, and anyone may type the user name:
    a stranger's wrong guesses block both, but not the photographer's browser, which logged in
    before and carries that login's cookie. Its own wrong guesses are still limited, and a made-up
    cookie is no way around the block."""
    from studio.logins import COOKIE
    from studio.proof import MAX_FAILURES

    _, _, url = auth_studio
    photographer = requests.Session()
    assert browser_login(photographer, url, LOGIN[1]).status_code == 200
    assert COOKIE in photographer.cookies
    for cookie in [c for c in photographer.cookies if c.name.startswith("access-token")]:
        photographer.cookies.clear(cookie.domain, cookie.path, cookie.name)  # the session ended
    assert "on_delete" not in photographer.get(f"{url}/", timeout=WAIT_S).text

    for _ in range(MAX_FAILURES):
        assert post_login(url, LOGIN[0], "guess", "127.0.0.1") == 400
    assert post_login(url, LOGIN[0], LOGIN[1], "127.0.0.1") == 429
    stranger = requests.Session()
    stranger.cookies.set(COOKIE, "made-up-token")
    assert browser_login(stranger, url, LOGIN[1]).status_code == 429

    back = browser_login(photographer, url, LOGIN[1])
    assert back.status_code == 200 and "on_delete" in back.text, "locked out by someone else's guesses"
    for cookie in [c for c in photographer.cookies if c.name.startswith("access-token")]:
        photographer.cookies.clear(cookie.domain, cookie.path, cookie.name)
    for _ in range(MAX_FAILURES):
        assert browser_login(photographer, url, "own typo").status_code == 401
    assert browser_login(photographer, url, LOGIN[1]).status_code == 429


def test_a_trusted_browser_token_is_for_its_user_expires_and_the_oldest_is_forgotten(monkeypatch):
    from studio import logins

    now = [1000.0]
    browsers = logins.TrustedBrowsers(clock=lambda: now[0])
    header = browsers.trust("ann").decode()
    assert "HttpOnly" in header and "SameSite=Lax" in header and f"Max-Age={logins.MAX_AGE_S}" in header
    token = header.split(";")[0].split("=", 1)[1]
    scope = {"client": ("127.0.0.9", 1), "headers": [(b"cookie", f"a=b; {logins.COOKIE}={token}".encode())]}
    assert browsers.attempt_keys(scope, "ann") == (("browser", token),)
    assert browsers.attempt_keys(scope, "bob") == (("address", "127.0.0.9"), ("user", "bob"))
    now[0] += logins.MAX_AGE_S
    assert browsers.attempt_keys(scope, "ann") == (("address", "127.0.0.9"), ("user", "ann"))

    monkeypatch.setattr(logins, "MAX_BROWSERS", 2)
    first = browsers.trust("ann")
    browsers.trust("ann")
    browsers.trust("ann")
    assert len(browsers.given) == 2 and first.decode().split(";")[0].split("=", 1)[1] not in browsers.given


def test_the_throttle_forgets_failures_after_its_window_and_takes_back_right_ones():
    from studio.proof import Throttle

    now = [0.0]
    throttle = Throttle(limit=3, window_s=600.0, clock=lambda: now[0])
    for _ in range(3):
        assert not throttle.blocked(("user", "ann"), ("address", "1.2.3.4"))
        throttle.record(("user", "ann"), ("address", "1.2.3.4"))
    assert throttle.blocked(("user", "ann")) and throttle.blocked(("address", "1.2.3.4"))
    assert not throttle.blocked(("user", "bob")) and ("user", "bob") not in throttle.failures
    now[0] = 601.0
    assert not throttle.blocked(("user", "ann"))
    throttle.record(("user", "ann"))
    throttle.forgive(("user", "ann"))
    assert not throttle.blocked(("user", "ann")) and not throttle.failures.get(("user", "ann"))
    throttle.record(("address", "5.6.7.8"))
    assert ("address", "1.2.3.4") not in throttle.failures, "keys whose failures aged out are dropped"


def keep_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore after the test what `app.configure_environment` sets."""
    for key in (
        "GRADIO_TEMP_DIR",
        "GRADIO_EXAMPLES_CACHE",
        "GRADIO_ANALYTICS_ENABLED",
        "HF_HUB_DISABLE_TELEMETRY",
    ):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("where", ["flag", "environment"])
def test_a_short_share_password_is_refused_at_start_up(where, tmp_path, monkeypatch, capsys):
    import studio.app

    keep_environment(monkeypatch)
    launched = []
    monkeypatch.setattr(studio.app, "launch", lambda *args, **kwargs: launched.append(args))
    argv = ["--share", "--no-browser", "--data-dir", str(tmp_path / "data")]
    if where == "flag":
        argv += ["--auth", "ann:eleven-char"]
        monkeypatch.delenv(launcher.AUTH_ENV, raising=False)
    else:
        monkeypatch.setenv(launcher.AUTH_ENV, "ann:eleven-char")
    assert launcher.main(argv) == 2
    error = capsys.readouterr().err
    assert "12 characters" in error and "--auth generate" in error
    assert launched == [] and not (tmp_path / "data").exists()


def test_a_generated_password_is_long_enough_to_share(tmp_path, monkeypatch):
    import studio.app

    keep_environment(monkeypatch)
    launched = []
    monkeypatch.setattr(studio.app, "launch", lambda studio, options: launched.append(options))
    argv = ["--share", "--auth", "generate", "--no-browser", "--data-dir", str(tmp_path / "data")]
    assert launcher.main(argv) == 0
    assert len(launched) == 1 and launched[0].share and len(launched[0].auth[1]) >= 12


# -- 9: "Replace selected" ---------------------------------------------------------------------


@pytest.fixture
def three_references(tmp_path):
    """A studio whose project ``anna`` has three style references (ref0, ref1, ref2)."""
    from engine.demo.portraits import make_project
    from engine.store import ProjectStore
    from studio.app import Studio

    project = make_project(tmp_path, name="anna", sources=1, references=3)
    studio = Studio(ProjectStore(tmp_path))
    studio.face_kit = lambda: None  # the refused file fails before any face model is needed
    return studio, project


def reference_ids(project) -> list[str]:
    from engine.photos import photo_records

    return [record.id for record in photo_records(project, "reference")]


def test_replacing_a_reference_with_a_refused_photo_keeps_the_original(three_references, tmp_path):
    from studio.photos import on_replace

    studio, project = three_references
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_text("these are words, not pixels")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        on_replace(studio, "reference", "anna", "ref0", str(bad))
    assert reference_ids(project) == ["ref0", "ref1", "ref2"]
    assert project.path("photos", "reference", "ref0", "crop.png").is_file()
    assert [item.filename for item in studio.refusals.get("anna")] == ["not-a-photo.jpg"]
    assert any("is kept" in str(warning.message) for warning in shown)


def test_replacing_a_reference_with_an_accepted_photo_removes_the_original(
    three_references, tmp_path, monkeypatch
):
    import engine.intake
    from engine.photos import PhotoRecord
    from studio.photos import on_replace

    studio, project = three_references

    def accept(project, data, filename, role, kit):
        record = PhotoRecord(id="new", role=role, filename=filename)
        project.update(lambda manifest: manifest["images"].append(record.to_json()))
        return engine.intake.Accepted(record)

    monkeypatch.setattr(engine.intake, "add_photo", accept)
    good = tmp_path / "good.jpg"
    good.write_bytes(b"accepted by the stand-in intake")
    values = on_replace(studio, "reference", "anna", "ref0", str(good))
    assert reference_ids(project) == ["ref1", "ref2", "new"]
    assert not project.path("photos", "reference", "ref0").exists()
    assert values[-1] is None, "the selection is cleared"


# -- 10: user errors get one line in the log, bugs keep their traceback ----------------------


def failing(error: BaseException):
    def work(job):
        raise error

    return work


def test_a_job_failing_with_a_user_error_logs_one_line_and_a_bug_its_traceback(caplog):
    from engine.config import ConfigError
    from engine.store import StorageFull
    from engine.training import TrainingError

    runner = JobRunner()
    user_errors = [
        TrainingError("Training run-1 has no photos left; add them again in step 2."),
        StorageFull("The disk holding /data is full; free some space and resume."),
        ConfigError("lr must be between 1e-6 and 1e-2; got 5."),
    ]
    with caplog.at_level(logging.WARNING, logger="studio.jobs"):
        jobs = [runner.submit("train", "p", f"job {i}", failing(e)) for i, e in enumerate(user_errors)]
        bug = runner.submit("train", "p", "bug", failing(KeyError("step")))
        assert all(runner.wait(job, timeout=WAIT_S) for job in [*jobs, bug])
    runner.close()
    assert [job.status for job in [*jobs, bug]] == [FAILED] * 4
    for job, error in zip(jobs, user_errors, strict=True):
        lines = [r for r in caplog.records if job.title in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None, job.title
        assert str(error) in lines[0].getMessage() and "\n" not in lines[0].getMessage()
        assert job.error == str(error)
    [bug_line] = [r for r in caplog.records if "bug" in r.getMessage()]
    assert bug_line.exc_info is not None and bug_line.exc_info[0] is KeyError


def test_a_handler_user_error_shows_its_sentence_and_logs_no_traceback(tmp_path, caplog, monkeypatch):
    import engine.intake
    from engine.store import ProjectStore
    from studio.app import Studio, sentences_for_users
    from studio.gallery import on_zip
    from studio.photos import on_remove
    from studio.state import bind

    studio = Studio(ProjectStore(tmp_path))
    studio.store.create("anna")
    zip_all = sentences_for_users(bind(on_zip, studio))
    remove = sentences_for_users(bind(on_remove, studio, "source"))
    with caplog.at_level(logging.WARNING, logger="studio"):
        with pytest.raises(gr.Error) as refused:
            zip_all("anna", [])
        assert refused.value.print_exception is False
        assert "There are no portraits to zip yet." in refused.value.message
        with pytest.raises(gr.Error) as store_error:
            remove("anna", "no-such-photo")
        assert store_error.value.print_exception is False
        assert "has no photo with id 'no-such-photo'" in store_error.value.message
    messages = [r.getMessage() for r in caplog.records]
    assert any("There are no portraits to zip yet." in m for m in messages)
    assert any("no-such-photo" in m for m in messages)
    assert all(r.exc_info is None for r in caplog.records)

    def broken(project, photo_id):
        raise KeyError("crop")

    monkeypatch.setattr(engine.intake, "remove_photo", broken)
    with pytest.raises(KeyError):
        remove("anna", "ref0")


# -- 7 (studio side): no delete while a job holds the project ---------------------------------


@pytest.fixture
def anna_studio(tmp_path):
    from engine.store import ProjectStore
    from studio.app import Studio

    studio = Studio(ProjectStore(tmp_path))
    studio.store.create("anna")
    try:
        yield studio
    finally:
        studio.runner.close()


def test_a_project_is_not_deleted_while_its_job_is_queued_or_running(anna_studio):
    from studio.project import on_delete

    studio = anna_studio
    release, started = threading.Event(), threading.Event()

    def blocker(job):
        started.set()
        release.wait(WAIT_S)

    running = studio.runner.submit("generate", "anna", "Portraits of anna", blocker)
    queued = studio.runner.submit("references", "anna", "Style references for anna", lambda job: None)
    assert started.wait(WAIT_S)
    with pytest.warns(UserWarning, match="Portraits of anna is running"):
        on_delete(studio, "anna")
    assert "anna" in studio.store.list()
    release.set()
    assert studio.runner.wait(running, timeout=WAIT_S) and studio.runner.wait(queued, timeout=WAIT_S)
    on_delete(studio, "anna")
    assert "anna" not in studio.store.list()


def test_no_job_starts_for_a_project_while_it_is_being_deleted(anna_studio, monkeypatch):
    from studio.project import on_delete

    studio = anna_studio
    deleting, release = threading.Event(), threading.Event()
    delete_files = studio.store.delete

    def slow_delete(name):
        deleting.set()
        assert release.wait(WAIT_S)
        delete_files(name)

    monkeypatch.setattr(studio.store, "delete", slow_delete)
    worker = threading.Thread(target=on_delete, args=(studio, "anna"))
    worker.start()
    try:
        assert deleting.wait(WAIT_S)
        with pytest.raises(JobRefused, match="anna is being deleted"):
            studio.runner.submit("train", "anna", "Training of anna", lambda job: None, key="train:anna")
        other = studio.runner.submit("train", "ben", "Training of ben", lambda job: None)
        assert studio.runner.wait(other, timeout=WAIT_S) and other.status == DONE
    finally:
        release.set()
        worker.join(WAIT_S)
    assert not worker.is_alive() and "anna" not in studio.store.list()
    after = studio.runner.submit("train", "anna", "Training of anna", lambda job: None)
    assert studio.runner.wait(after, timeout=WAIT_S)


def _page_load(blocks: gr.Blocks):
    """The page-load handler that sets the project picker."""
    [load] = [
        fn
        for fn in blocks.fns.values()
        if any(event == "load" for _, event in fn.targets)
        and [getattr(block, "elem_id", None) for block in fn.outputs] == ["project-picker"]
    ]
    return load.fn


def test_a_late_page_load_answer_does_not_close_the_first_project_created(tmp_path):
    """On a busy machine the page's load answer, computed while the store was empty, can land after
    the user's first "Create project" (seen in a browser test under load: the picker emptied and the
    new project closed). With nothing to open it changes nothing; a later tab lists and opens it."""
    from engine.store import ProjectStore
    from studio.app import Studio, build

    studio = Studio(ProjectStore(tmp_path / "home"))
    load = _page_load(build(studio))
    answered_before_the_create = load()
    studio.store.create("Sam XL")
    assert answered_before_the_create == gr.skip()
    later = load()
    assert later.value == "Sam XL" and [value for _, value in later.choices] == ["Sam XL"]


def test_a_page_built_with_projects_since_deleted_gets_an_empty_picker(tmp_path):
    from engine.store import ProjectStore
    from studio.app import Studio, build

    studio = Studio(ProjectStore(tmp_path / "home"))
    studio.store.create("Old client")
    load = _page_load(build(studio))
    studio.store.delete("Old client")
    emptied = load()
    assert emptied.value is None and list(emptied.choices) == []
