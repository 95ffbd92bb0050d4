"""The client's proof gallery: a small read-only web app at ``/proof/<token>/``, apart from the studio.

It is plain HTML served by a few Starlette routes (no Gradio, no script), with its own password
(`engine.proofs`) and its own session cookie, scoped to the gallery's path. A client sees the
portraits the photographer chose, marks favourites and leaves a note; nothing else is served. The
studio's `studio.app.Gatekeeper` hands every ``/proof/`` request to this app and no other request,
so a proof session opens no studio route, no other project's files and no other gallery.
"""

from __future__ import annotations

import collections
import functools
import html
import io
import time
from collections.abc import Callable, Hashable
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from engine import proofs
from engine.store import Project, ProjectStore

PREFIX = "/proof/"
COOKIE = "magicapture_proof"
MAX_FAILURES = 10
FAILURE_WINDOW_S = 600.0
"""At most `MAX_FAILURES` wrong passwords in this many seconds: per gallery, and per address and per
user at the studio's login (`studio.app.Gatekeeper`)."""
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
CSS = """
body {font-family: system-ui, sans-serif; margin: 0; background: #f6f5f2; color: #222;}
header {background: #1f2340; color: #fff; padding: 1.2em 2em; display: flex; justify-content: space-between;
  align-items: center; gap: 1em;}
header h1 {margin: 0; font-size: 1.4em; font-weight: 600;}
header p {margin: .3em 0 0; opacity: .8;}
main {max-width: 1200px; margin: 0 auto; padding: 1.5em 2em 3em;}
.grid {display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 1.2em;}
figure {margin: 0; background: #fff; border-radius: 10px; overflow: hidden; box-shadow: 0 1px 4px #0002;}
figure img {width: 100%; display: block; aspect-ratio: 1; object-fit: cover; background: #ddd;}
figure label {display: flex; align-items: center; gap: .5em; padding: .7em 1em; cursor: pointer;}
figure input {width: 1.2em; height: 1.2em; accent-color: #c2185b;}
figure:has(input:checked) {outline: 3px solid #c2185b;}
textarea {width: 100%; min-height: 6em; font: inherit; padding: .6em; box-sizing: border-box;
  border-radius: 8px; border: 1px solid #bbb;}
button {font: inherit; padding: .6em 1.4em; border-radius: 8px; border: 0; background: #3f4aa8; color: #fff;
  cursor: pointer;}
header button {background: transparent; border: 1px solid #fff8;}
.note {margin-top: 2em;}
.saved {background: #e3f4e4; border: 1px solid #9bd39f; padding: .7em 1em; border-radius: 8px; margin-bottom: 1em;}
.error {background: #fde8e8; border: 1px solid #f3b3b3; padding: .7em 1em; border-radius: 8px;}
.login {max-width: 380px; margin: 12vh auto; background: #fff; padding: 2em; border-radius: 12px;
  box-shadow: 0 1px 6px #0002;}
.login input {width: 100%; font: inherit; padding: .6em; margin: .6em 0 1em; box-sizing: border-box;
  border-radius: 8px; border: 1px solid #bbb;}
"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    """A small self-contained HTML page (no script, strict headers) in the galleries' style."""
    text = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<meta name='robots' content='noindex'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )
    return HTMLResponse(text, status_code=status, headers=HEADERS)


def _not_found() -> HTMLResponse:
    return page(
        "Gallery not found",
        "<div class='login'><h1>Gallery not found</h1><p>This link is not valid any more. "
        "Ask your photographer for a new one.</p></div>",
        404,
    )


def _login_page(name: str, message: str = "", status: int = 200) -> HTMLResponse:
    error = f"<p class='error' id='proof-error'>{html.escape(message)}</p>" if message else ""
    return page(
        f"Proofs for {name}",
        f"<div class='login'><h1>Proofs for {html.escape(name)}</h1>"
        "<p>Enter the password your photographer gave you.</p>"
        f"{error}<form method='post' action='login'>"
        "<label for='password'>Password</label>"
        "<input id='password' name='password' type='password' autocomplete='current-password' required autofocus>"
        "<button type='submit' id='proof-login'>Open the gallery</button></form></div>",
        status,
    )


def _gallery_page(project: Project, gallery: proofs.Gallery, saved: bool) -> HTMLResponse:
    name = project.manifest().get("name", project.name)
    cards = []
    for output in gallery.outputs:
        number = gallery.numbers.get(output, "?")
        ident = html.escape(output, quote=True)
        checked = " checked" if output in gallery.favourites else ""
        cards.append(
            f"<figure><a href='image/{ident}' target='_blank' rel='noopener'>"
            f"<img src='image/{ident}' alt='Portrait {number}' loading='lazy'></a>"
            f"<label><input type='checkbox' name='favourite' value='{ident}'{checked}> "
            f"<b>Portrait {number}</b> · ♥ Favourite</label></figure>"
        )
    banner = ""
    if saved:
        count = len(gallery.favourites)
        banner = (
            f"<p class='saved' id='proof-saved'>Saved: {count} favourite{'s' if count != 1 else ''}"
            f"{' and your note' if gallery.note else ''}. You can change them at any time.</p>"
        )
    body = (
        f"<header><div><h1>Proofs for {html.escape(name)}</h1>"
        "<p>Mark your favourites and leave a note for your photographer.</p></div>"
        "<form method='post' action='logout'><button type='submit'>Sign out</button></form></header>"
        f"<main>{banner}<form method='post' action='picks' id='proof-picks'>"
        f"<div class='grid'>{''.join(cards)}</div>"
        "<div class='note'><label for='note'><b>Note for your photographer</b></label>"
        f"<textarea id='note' name='note' maxlength='{proofs.MAX_NOTE}'>{html.escape(gallery.note)}</textarea>"
        "</div><p><button type='submit' id='proof-save'>Save my choices</button></p></form></main>"
    )
    return page(f"Proofs for {name}", body)


@functools.lru_cache(maxsize=16)
def _clean_image(path: str, mtime_ns: int) -> tuple[bytes, str]:
    """The image without its metadata (prompts, model names): only the pixels go to the client."""
    from PIL import Image

    with Image.open(path) as image:
        kind = "JPEG" if image.format == "JPEG" else "PNG"
        pixels = image.convert("RGB")
    buffer = io.BytesIO()
    pixels.save(buffer, format=kind, **({"quality": 95} if kind == "JPEG" else {"compress_level": 3}))
    return buffer.getvalue(), f"image/{kind.lower()}"


class Throttle:
    """Counts failures per key over a sliding window; a key with ``limit`` recent failures is blocked.

    Keys are anything hashable: a gallery token, ``("address", ip)``, ``("user", name)``. Only
    `record` adds keys, and it drops those whose failures have all aged out, so the memory stays
    bounded. It lives in one event loop (no lock): call `blocked` then `record` without awaiting.
    """

    def __init__(
        self,
        limit: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.failures: dict[Hashable, collections.deque[float]] = {}

    def blocked(self, *keys: Hashable) -> bool:
        return any(self._count(key) >= self.limit for key in keys)

    def record(self, *keys: Hashable) -> None:
        for key in list(self.failures):
            self._count(key)
        now = self.clock()
        for key in keys:
            self.failures.setdefault(key, collections.deque()).append(now)

    def forgive(self, *keys: Hashable) -> None:
        """Take back one failure of each key: an attempt counted in advance turned out right."""
        for key in keys:
            if self.failures.get(key):
                self.failures[key].pop()

    def _count(self, key: Hashable) -> int:
        recent = self.failures.get(key)
        if recent is None:
            return 0
        while recent and recent[0] < self.clock() - self.window_s:
            recent.popleft()
        if not recent:
            del self.failures[key]
        return len(recent)


class ProofApp:
    """The ASGI app of every proof gallery of a project store."""

    def __init__(self, store: ProjectStore):
        self.store = store
        self.throttle = Throttle()
        self.failures = self.throttle.failures
        """Recent wrong passwords per gallery token (the throttle's own record)."""
        self.app = Starlette(
            routes=[
                Route("/proof/{token}/", self.index, methods=["GET"]),
                Route("/proof/{token}/login", self.login, methods=["POST"]),
                Route("/proof/{token}/logout", self.logout, methods=["POST"]),
                Route("/proof/{token}/picks", self.picks, methods=["POST"]),
                Route("/proof/{token}/image/{output}", self.image, methods=["GET"]),
            ]
        )

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)

    def _open(self, request: Request) -> tuple[str, Project | None]:
        token = request.path_params["token"]
        return token, proofs.find(self.store, token)

    @staticmethod
    def _session_ok(request: Request, project: Project, token: str) -> bool:
        return proofs.session_valid(project, token, request.cookies.get(COOKIE))

    async def index(self, request: Request) -> Response:
        token, project = self._open(request)
        if project is None:
            return _not_found()
        if not self._session_ok(request, project, token):
            return _login_page(project.manifest().get("name", project.name))
        return _gallery_page(project, proofs.gallery(project), "saved" in request.query_params)

    async def login(self, request: Request) -> Response:
        token, project = self._open(request)
        if project is None:
            return _not_found()
        name = project.manifest().get("name", project.name)
        if self.throttle.blocked(token):
            return _login_page(name, "Too many wrong passwords; wait ten minutes and try again.", 429)
        password = str((await request.form()).get("password", ""))
        if not proofs.check_password(project, token, password):
            self.throttle.record(token)
            return _login_page(name, "That password is not right; check it and try again.", 401)
        response = RedirectResponse("./", status_code=303, headers=HEADERS)
        response.set_cookie(
            COOKIE,
            proofs.session_value(project, token),
            max_age=proofs.SESSION_SECONDS,
            path=f"{PREFIX}{token}/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        token = request.path_params["token"]
        response = RedirectResponse("./", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=f"{PREFIX}{token}/")
        return response

    async def picks(self, request: Request) -> Response:
        token, project = self._open(request)
        if project is None:
            return _not_found()
        if not self._session_ok(request, project, token):
            return _login_page(project.manifest().get("name", project.name), "Please sign in again.", 401)
        form = await request.form()
        try:
            proofs.record_picks(
                project, token, [str(v) for v in form.getlist("favourite")], str(form.get("note", ""))
            )
        except proofs.ProofError as error:
            return page("Not saved", f"<div class='login'><p class='error'>{html.escape(str(error))}</p>"
                         "<p><a href='./'>Back to the gallery</a></p></div>", 400)  # fmt: skip
        return RedirectResponse("./?saved=1", status_code=303, headers=HEADERS)

    async def image(self, request: Request) -> Response:
        token, project = self._open(request)
        if project is None or not self._session_ok(request, project, token):
            return Response("Not found.", status_code=404, headers=HEADERS)
        path = proofs.output_file(project, token, request.path_params["output"])
        if path is None:
            return Response("Not found.", status_code=404, headers=HEADERS)
        data, media = _clean_image(str(path), Path(path).stat().st_mtime_ns)
        return Response(data, media_type=media, headers={**HEADERS, "Cache-Control": "private, no-cache"})
