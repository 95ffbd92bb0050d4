"""Client proof galleries: publishing, passwords, sessions, picks, and what the link can and cannot reach."""

from __future__ import annotations

import io
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from engine import proofs
from engine.store import ProjectStore

PASSWORD = "client-pass-1"


def add_outputs(project, count: int) -> list[str]:
    """``count`` generated-looking outputs (PNG with a parameters text chunk) in the project."""
    from engine.outputs import OutputRecord, add_output

    ids = []
    for index in range(count):
        output_id = f"out-{project.name}-{index}"
        image = np.full((48, 40, 3), 40 * index, np.uint8)
        record = OutputRecord(
            id=output_id, file=f"outputs/{output_id}.png", seed=index, params={"prompt": "<sks> secret prompt"},
            run="run-1", identity=0.5, created="2025-01-01T00:00:00+00:00",
        )  # fmt: skip
        add_output(project, image, record, "a photo of <sks> person, Steps: 50")
        ids.append(output_id)
    return ids


@pytest.fixture
def store(tmp_path) -> ProjectStore:
    return ProjectStore(tmp_path / "data")


# -- the gallery in the manifest -------------------------------------------------------------


def test_passwords_are_kept_as_salted_scrypt_hashes():
    first, second = proofs.hash_password(PASSWORD), proofs.hash_password(PASSWORD)
    assert (
        first["algorithm"] == "scrypt" and first["salt"] != second["salt"] and first["hash"] != second["hash"]
    )
    assert PASSWORD not in str(first)
    assert proofs.password_matches(first, PASSWORD) and proofs.password_matches(second, PASSWORD)
    assert not proofs.password_matches(first, PASSWORD + "x")
    assert not proofs.password_matches({}, PASSWORD)


def test_publishing_needs_a_password_and_known_outputs(store):
    project = store.create("Anna Smith")
    ids = add_outputs(project, 3)
    with pytest.raises(proofs.ProofError, match="password before publishing"):
        proofs.publish(project, ids[:2])
    with pytest.raises(proofs.ProofError, match="at least 8 characters"):
        proofs.publish(project, ids[:2], "short")
    with pytest.raises(proofs.ProofError, match="no portrait 'nope'"):
        proofs.publish(project, ["nope"], PASSWORD)
    with pytest.raises(proofs.ProofError, match="at least one portrait"):
        proofs.publish(project, [], PASSWORD)
    gallery = proofs.publish(project, [ids[2], ids[0], ids[2]], PASSWORD)
    assert gallery.outputs == (ids[2], ids[0])
    assert proofs.TOKEN_PATTERN.match(gallery.token)
    stored = project.manifest()["proof"]
    assert PASSWORD not in str(stored) and stored["password"]["algorithm"] == "scrypt"
    assert proofs.find(store, gallery.token) == project
    assert proofs.find(store, "x" * 32) is None and proofs.find(store, "../../etc") is None


def test_republishing_keeps_the_link_and_a_new_password_ends_old_sessions(store):
    project = store.create("anna")
    ids = add_outputs(project, 3)
    gallery = proofs.publish(project, ids[:2], PASSWORD)
    session = proofs.session_value(project, gallery.token)
    assert proofs.session_valid(project, gallery.token, session)
    again = proofs.publish(project, ids[1:])
    assert again.token == gallery.token and again.outputs == tuple(ids[1:])
    assert proofs.check_password(project, gallery.token, PASSWORD)
    assert proofs.session_valid(project, gallery.token, session), "same password: the client stays in"
    proofs.publish(project, ids[1:], "a-new-password")
    assert not proofs.session_valid(project, gallery.token, session)
    assert not proofs.check_password(project, gallery.token, PASSWORD)
    assert proofs.check_password(project, gallery.token, "a-new-password")


def test_sessions_are_signed_per_gallery_and_expire(store):
    anna, ben = store.create("anna"), store.create("ben")
    a = proofs.publish(anna, add_outputs(anna, 1), PASSWORD)
    b = proofs.publish(ben, add_outputs(ben, 1), PASSWORD)
    session = proofs.session_value(anna, a.token)
    assert proofs.session_valid(anna, a.token, session)
    assert not proofs.session_valid(ben, b.token, session), "one gallery's cookie opens no other"
    assert not proofs.session_valid(anna, a.token, session[:-1] + ("0" if session[-1] != "0" else "1"))
    expires = int(session.split(".")[0])
    assert not proofs.session_valid(anna, a.token, session, at=expires + 1)
    assert not proofs.session_valid(anna, a.token, None)
    forged = f"{expires + 10**6}.{session.split('.')[1]}"
    assert not proofs.session_valid(anna, a.token, forged)


def test_picks_land_in_the_manifest_and_survive_closing_the_link(store):
    project = store.create("anna")
    ids = add_outputs(project, 4)
    gallery = proofs.publish(project, ids[:3], PASSWORD)
    with pytest.raises(proofs.ProofError, match="not in this gallery"):
        proofs.record_picks(project, gallery.token, [ids[3]], "")
    with pytest.raises(proofs.ProofError, match="too long"):
        proofs.record_picks(project, gallery.token, [], "x" * (proofs.MAX_NOTE + 1))
    proofs.record_picks(project, gallery.token, [ids[2], ids[0]], "  Love the second one!  ")
    picks = project.manifest()["proof"]["picks"]
    assert picks["favourites"] == [ids[0], ids[2]] and picks["note"] == "Love the second one!"
    assert picks["updated"]
    proofs.publish(project, ids[1:3])
    assert proofs.picks(project)["favourites"] == [ids[2]], "favourites of hidden portraits are dropped"
    proofs.unpublish(project)
    assert proofs.gallery(project) is None and proofs.find(store, gallery.token) is None
    assert proofs.picks(project)["note"] == "Love the second one!"
    with pytest.raises(proofs.ProofError, match="no longer published"):
        proofs.record_picks(project, gallery.token, [], "")


def test_only_the_chosen_outputs_are_files_of_the_gallery(store):
    project = store.create("anna")
    ids = add_outputs(project, 3)
    gallery = proofs.publish(project, ids[:2], PASSWORD)
    assert proofs.output_file(project, gallery.token, ids[0]) == project.path("outputs", f"{ids[0]}.png")
    assert proofs.output_file(project, gallery.token, ids[2]) is None
    assert proofs.output_file(project, gallery.token, "../manifest.json") is None
    assert proofs.output_file(project, "another-token-aaaaaaaaaaaaa", ids[0]) is None


# -- the link against a running studio ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A studio with a login, two projects with outputs and a published gallery each."""
    from studio.app import LaunchOptions, Studio, launch

    root = tmp_path_factory.mktemp("proof-served").resolve()
    store = ProjectStore(root)
    anna, ben = store.create("Anna Smith"), store.create("Ben")
    anna_ids, ben_ids = add_outputs(anna, 3), add_outputs(ben, 2)
    anna_gallery = proofs.publish(anna, anna_ids[:2], PASSWORD)
    ben_gallery = proofs.publish(ben, ben_ids, "ben-password-2")
    studio = Studio(store)
    options = LaunchOptions(port=free_port(), auth=("photographer", "studio-pass"), open_browser=False)
    blocks = launch(studio, options, block=False)
    url = blocks.local_url.rstrip("/")
    yield {
        "url": url, "root": root, "anna": anna, "anna_ids": anna_ids, "anna_token": anna_gallery.token,
        "ben": ben, "ben_ids": ben_ids, "ben_token": ben_gallery.token,
    }  # fmt: skip
    blocks.close()


def client_login(served, password: str = PASSWORD) -> requests.Session:
    session = requests.Session()
    answer = session.post(
        f"{served['url']}/proof/{served['anna_token']}/login", data={"password": password}, timeout=10
    )
    assert answer.status_code == (200 if password == PASSWORD else 401), answer.text[:300]
    return session


def test_the_link_asks_for_its_password_and_shows_only_the_chosen_portraits(served):
    url, token, ids = served["url"], served["anna_token"], served["anna_ids"]
    page = requests.get(f"{url}/proof/{token}/", timeout=10)
    assert page.status_code == 200 and "Enter the password" in page.text and "out-" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert requests.get(f"{url}/proof/{token}", timeout=10, allow_redirects=False).status_code in (307, 308)
    wrong = requests.post(f"{url}/proof/{token}/login", data={"password": "studio-pass"}, timeout=10)
    assert wrong.status_code == 401 and "not right" in wrong.text

    session = requests.Session()
    answer = session.post(
        f"{url}/proof/{token}/login", data={"password": PASSWORD}, timeout=10, allow_redirects=False
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert f"Path=/proof/{token}/" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    gallery = session.get(f"{url}/proof/{token}/", timeout=10).text
    assert "Proofs for Anna Smith" in gallery
    assert set(re.findall(r"src='image/([^']+)'", gallery)) == {ids[0], ids[1]}

    image = session.get(f"{url}/proof/{token}/image/{ids[0]}", timeout=10)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    decoded = Image.open(io.BytesIO(image.content))
    assert decoded.size == (40, 48) and "parameters" not in decoded.info, "no prompt or settings leave"
    for hidden in (ids[2], served["ben_ids"][0], "..%2Fmanifest.json", "../../manifest.json"):
        assert session.get(f"{url}/proof/{token}/image/{hidden}", timeout=10).status_code == 404, hidden
    assert requests.get(f"{url}/proof/{token}/image/{ids[0]}", timeout=10).status_code == 404, "no cookie"


def test_the_client_marks_favourites_and_leaves_a_note(served):
    url, token, ids = served["url"], served["anna_token"], served["anna_ids"]
    session = client_login(served)
    answer = session.post(
        f"{url}/proof/{token}/picks",
        data={"favourite": [ids[1], ids[0]], "note": "Both, please!"},
        timeout=10,
    )
    assert answer.status_code == 200 and "Saved: 2 favourites and your note" in answer.text
    picks = served["anna"].manifest()["proof"]["picks"]
    assert picks["favourites"] == [ids[0], ids[1]] and picks["note"] == "Both, please!"
    refused = session.post(f"{url}/proof/{token}/picks", data={"favourite": ids[2]}, timeout=10)
    assert refused.status_code == 400
    anonymous = requests.post(f"{url}/proof/{token}/picks", data={"favourite": ids[0]}, timeout=10)
    assert anonymous.status_code == 401
    assert served["anna"].manifest()["proof"]["picks"]["favourites"] == [ids[0], ids[1]]


def test_a_proof_session_opens_nothing_else(served):
    url, root = served["url"], served["root"]
    session = client_login(served)
    cookies = session.cookies.get_dict()
    output = root / "projects" / "Anna-Smith" / "outputs" / f"{served['anna_ids'][0]}.png"
    other = root / "projects" / "Ben" / "outputs" / f"{served['ben_ids'][0]}.png"
    for path in ("/config", "/gradio_api/info", f"/gradio_api/file={output}", f"/gradio_api/file={other}",
                 "/gradio_api/queue/join", "/gradio_api/upload"):  # fmt: skip
        answer = requests.get(f"{url}{path}", cookies=cookies, timeout=10, allow_redirects=False)
        assert answer.status_code == 401, (path, answer.status_code)
    studio_login = requests.post(
        f"{url}/login", data={"username": "photographer", "password": PASSWORD}, timeout=10
    )
    assert studio_login.status_code == 400, "the gallery password is no studio password"
    ben = f"{url}/proof/{served['ben_token']}/"
    assert "Enter the password" in requests.get(ben, cookies=cookies, timeout=10).text
    assert requests.post(f"{ben}login", data={"password": PASSWORD}, timeout=10).status_code == 401
    assert requests.get(f"{url}/proof/{'a' * 32}/", timeout=10).status_code == 404
    assert requests.get(f"{url}/proof/", timeout=10).status_code == 404


def test_the_studio_login_opens_no_gallery(served):
    session = requests.Session()
    assert session.post(
        f"{served['url']}/login", data={"username": "photographer", "password": "studio-pass"}, timeout=10
    ).ok
    assert session.get(f"{served['url']}/config", timeout=10).status_code == 200
    page = session.get(f"{served['url']}/proof/{served['anna_token']}/", timeout=10)
    assert "Enter the password" in page.text


def test_wrong_passwords_are_throttled(tmp_path):
    from starlette.testclient import TestClient

    from studio import proof

    store = ProjectStore(tmp_path)
    project = store.create("anna")
    gallery = proofs.publish(project, add_outputs(project, 1), PASSWORD)
    client = TestClient(proof.ProofApp(store))
    for _ in range(proof.MAX_FAILURES):
        assert client.post(f"/proof/{gallery.token}/login", data={"password": "nope"}).status_code == 401
    blocked = client.post(f"/proof/{gallery.token}/login", data={"password": PASSWORD})
    assert blocked.status_code == 429 and "wait ten minutes" in blocked.text
    app = proof.ProofApp(store)
    app.failures[gallery.token] = __import__("collections").deque([time.monotonic() - 601] * 20)
    assert (
        TestClient(app).post(f"/proof/{gallery.token}/login", data={"password": PASSWORD}).status_code == 200
    )


def test_the_photographer_sees_the_link_and_the_picks(store):
    from studio.gallery import proof_status

    project = store.create("anna")
    ids = add_outputs(project, 2)
    assert "No client gallery" in proof_status(project)
    gallery = proofs.publish(project, ids, PASSWORD)
    text = proof_status(project, "http://studio.local:7860")
    assert f"http://studio.local:7860/proof/{gallery.token}/" in text
    proofs.record_picks(project, gallery.token, [ids[1]], "<b>bold</b> note")
    text = proof_status(project)
    assert (
        "1 favourite(s): portrait 2." in text
        and ids[1] not in text
        and "&lt;b&gt;bold&lt;/b&gt; note" in text
    )


def test_nothing_under_proof_reaches_gradio(tmp_path):
    """The gatekeeper hands every /proof/ request to the proof app, never to the app behind it."""
    from starlette.testclient import TestClient

    from studio.app import Gatekeeper

    reached = []

    async def studio_app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"studio"})

    client = TestClient(Gatekeeper(studio_app, str(tmp_path)))
    for path in ("/proof/", "/proof", "/proof/x/%2e%2e/%2e%2e/config", "/proof/abc/gradio_api/info"):
        assert client.get(path).text != "studio", path
    assert client.get("/something").text == "studio"
    assert reached == ["/something"]


def test_the_gallery_page_escapes_what_it_shows(store):
    from starlette.testclient import TestClient

    from studio import proof

    project = store.create("<img src=x onerror=alert(1)>")
    gallery = proofs.publish(project, add_outputs(project, 1), PASSWORD)
    page = TestClient(proof.ProofApp(store)).get(f"/proof/{gallery.token}/").text
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert Path(proof.__file__).read_text().count("<script") == 0, "the gallery runs no script at all"
