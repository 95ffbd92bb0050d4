"""Build the studio's Blocks and launch them (share, auth, listen, file-serving rules).

The flow is one tab per step: Project -> Photos -> Train -> Generate -> Gallery, plus Settings.
Everything the tabs show comes from the project store and the job runner, so a reloaded tab (or
a second one) sees the same state. Nothing here imports torch: the engine does, when asked.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from studio import gallery, generate, photos, project, settings, train
from studio.jobs import is_user_error, one_line
from studio.logins import TrustedBrowsers, request_cookies
from studio.proof import Throttle, page
from studio.reach import served, start_lines
from studio.state import Studio, bind

logger = logging.getLogger(__name__)

TITLE = "MagiCapture Studio"
STEPS = (
    ("project", "1 · Project"),
    ("photos", "2 · Photos"),
    ("train", "3 · Train"),
    ("generate", "4 · Generate"),
    ("gallery", "5 · Gallery"),
    ("settings", "⚙ Settings"),
)
CSS = """
.mc-banner {padding: .6em 1em; border-radius: 8px; font-weight: 600;}
.mc-demo {background: #fff4d6; color: #7a5300; border: 1px solid #f0c96a;}
.mc-fallback {background: #fde8e8; color: #8a1c1c; border: 1px solid #f3b3b3;}
.mc-licence {font-weight: 400; font-size: .9em; background: #eef1fb; color: #27306b; border: 1px solid #c4cbef;}
.mc-status {display: flex; gap: .6em; flex-wrap: wrap; align-items: center; font-size: .92em;}
.mc-chip {padding: .2em .7em; border-radius: 999px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary);}
.mc-progress {height: 14px; border-radius: 7px; background: var(--border-color-primary); overflow: hidden;}
.mc-progress > div {height: 100%; background: var(--color-accent); transition: width .4s;}
.mc-empty {padding: 1.5em; text-align: center; opacity: .75; border: 2px dashed var(--border-color-primary);
  border-radius: 10px;}
.mc-refused {color: #8a1c1c;}
.mc-queue li {margin: .15em 0;}
"""


def header_html(studio: Studio) -> str:
    """The status line above the tabs: device, which models are real, stand-ins or fallbacks, the job queue."""
    chips = [f"<span class='mc-chip'>{studio.device}</span>"]
    chips.append(f"<span class='mc-chip' id='base-chip'>{html.escape(settings.base_chip(studio))}</span>")
    models = settings.models_in_use(studio)  # the model list in Settings says the same
    css, mark = ("mc-chip mc-fallback", "⚠ ") if models.fallbacks and not models.standins else ("mc-chip", "")
    chips.append(f"<span class='{css}'>{mark}{html.escape(models.face_line())}</span>")
    running = studio.runner.running()
    queued = studio.runner.queued()
    if running is not None:
        chips.append(f"<span class='mc-chip'>● running: {html.escape(running.title)}</span>")
    if queued:
        chips.append(f"<span class='mc-chip'>{len(queued)} job(s) waiting</span>")
    if running is None and not queued:
        chips.append("<span class='mc-chip'>✔ no job running</span>")
    return f"<div class='mc-status'>{''.join(chips)}</div>"


def licence_html(studio: Studio) -> str:
    """The one notice on model licences: which weights are non-commercial, or that commercial use is
    on; in demo mode, first that the stand-ins in use have no terms."""
    from engine.assets import demo_standins, licence_notice
    from engine.preflight import assets_in_use

    if studio.settings.commercial:
        return (
            "<div class='mc-banner mc-licence' id='licence-notice'>Commercial use is on: only models whose "
            "licence allows it are used (OpenCV YuNet and SFace for faces, GFPGAN for restoration); "
            "CodeFormer is refused.</div>"
        )
    notice = licence_notice(
        assets_in_use(commercial=False, restore="codeformer"),
        alternatives=True,
        standins=demo_standins(),
    )
    return (
        f"<div class='mc-banner mc-licence' id='licence-notice'>{html.escape(notice or '')} "
        "(⚙ Settings → Commercial use.)</div>"
    )


def initial_project(studio: Studio) -> str | None:
    """The project a new or reloaded tab opens on: the running job's, else the latest changed."""
    running = studio.runner.running()
    names = studio.store.list()
    if running is not None and running.project in names:
        return running.project
    if not names:
        return None
    return max(names, key=lambda name: studio.store.open(name).path("manifest.json").stat().st_mtime)


def on_load(studio: Studio, listed: list[str]):
    """The picker of a new or reloaded tab: the store's projects, `initial_project` open.

    ``listed`` is what the page was built with. With no project to open and that list still right,
    it changes nothing: on a busy machine its answer can arrive after the user's first "Create
    project", and an empty picker would close the project just created.
    """
    names = studio.store.list()
    if not names and not listed:
        return gr.skip()
    return gr.Dropdown(choices=names, value=initial_project(studio))


def build(studio: Studio) -> gr.Blocks:
    """The whole studio as one Blocks app."""
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
        with gr.Row(equal_height=True):
            gr.Markdown(
                f"# {TITLE}\nStudio portraits of one person in a reference style, on your own computer."
            )
            listed = studio.store.list()
            current = gr.Dropdown(
                listed,
                value=None,
                label="Open project",
                info="One project per client or subject.",
                allow_custom_value=False,
                scale=0,
                min_width=260,
                elem_id="project-picker",
            )
        if studio.demo is not None:
            gr.HTML(
                "<div class='mc-banner mc-demo' id='demo-banner'>Demo mode: tiny random models. "
                "Training and generation run in seconds on the CPU and make noise-like pictures; "
                "the flow is the real one.</div>"
            )
        status = gr.HTML(header_html(studio), elem_id="status-line")
        licence = gr.HTML(licence_html(studio), elem_id="licence-box")
        timer = gr.Timer(1.0)
        with gr.Tabs(selected="project") as tabs:
            with gr.Tab(STEPS[0][1], id="project"):
                project.build(studio, current, tabs)
            with gr.Tab(STEPS[1][1], id="photos") as photos_tab:
                photos.build(studio, current, tabs, photos_tab, timer)
            with gr.Tab(STEPS[2][1], id="train") as train_tab:
                train.build(studio, current, tabs, timer, train_tab)
            with gr.Tab(STEPS[3][1], id="generate") as generate_tab:
                generate.build(studio, current, tabs, timer, generate_tab)
            with gr.Tab(STEPS[4][1], id="gallery") as gallery_tab:
                gallery.build(studio, current, gallery_tab)
            with gr.Tab(STEPS[5][1], id="settings"):
                settings.build(studio)

        timer.tick(
            lambda: (header_html(studio), licence_html(studio)),
            None,
            [status, licence],
            show_progress="hidden",
            queue=False,
        )
        blocks.load(bind(on_load, studio, listed), None, current, show_progress="hidden")
    for block_fn in blocks.fns.values():
        if block_fn.fn is not None:
            block_fn.fn = sentences_for_users(block_fn.fn)
    return blocks


def sentences_for_users(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an event handler: a user error reaches the browser as its sentence and the log as one line.

    Gradio prints a traceback for every exception a handler raises, `gr.Error` included, unless told
    not to. User errors (`gr.Error` and `studio.jobs.is_user_error`) are not bugs: they get no
    traceback. Any other exception is a bug and goes on unchanged, traceback and all.
    """

    @functools.wraps(handler)
    def quiet(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error as error:
            logger.warning("Refused: %s", one_line(str(error.message)))
            error.print_exception = False
            raise
        except Exception as error:
            if not is_user_error(error):
                raise
            logger.warning("Refused: %s", one_line(str(error)))
            raise gr.Error(str(error), print_exception=False) from error

    return quiet


# -- serving rules -------------------------------------------------------------------------

FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/", "/file=", "/file/")
REFUSED_ROUTES = (
    "/gradio_api/proxy=",
    "/proxy=",
    "/gradio_api/run-history/",
    "/gradio_api/vibe-",
    "/gradio_api/undo-vibe",
)
PUBLIC_ROUTES = {
    "/",
    "/login",
    "/login/",
    "/logout",
    "/favicon.ico",
    "/theme.css",
    "/gradio_api/theme.css",
    "/robots.txt",
    "/manifest.json",
    "/gradio_api/login_check",
    "/gradio_api/login_check/",
    "/gradio_api/app_id",
    "/gradio_api/app_id/",
    "/gradio_api/startup-events",
}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
"""The login page and the app's own front-end files: served before login."""
PROOF_PREFIX = "/proof/"
"""Client proof galleries: served by `studio.proof` alone, with their own passwords."""
LOGIN_ROUTES = ("/login", "/login/")
LOGIN_MESSAGE = "Log in with the user name and password given when MagiCapture Studio was started."
MAX_LOGIN_BYTES = 16_384
THROTTLED = (
    "Too many wrong logins from this address, for this username or from this browser; wait ten minutes "
    "and try again."
)


def login_page(message: str = "", status: int = 200) -> HTMLResponse:
    """The page served at ``/`` before login: a plain form that names no project, endpoint or file."""
    error = f"<p class='error' id='login-error'>{html.escape(message)}</p>" if message else ""
    return page(
        TITLE,
        f"<div class='login'><h1>{TITLE}</h1><p>{LOGIN_MESSAGE}</p>{error}"
        "<form method='post' action='login'>"
        "<label for='username'>Username</label>"
        "<input id='username' name='username' autocomplete='username' required autofocus>"
        "<label for='password'>Password</label>"
        "<input id='password' name='password' type='password' autocomplete='current-password' required>"
        "<button type='submit' id='studio-login'>Login</button></form></div>",
        status,
    )


class Gatekeeper:
    """ASGI middleware: files only from the data root, a login on every other route, proofs apart.

    Gradio already checks both; this is the single, auditable place that decides for the studio:
    a file request must name an existing file inside ``root`` (after resolving ``..`` and links),
    URLs are never fetched, and with auth on only the login page is served without a session: ``/``
    is then `login_page`, not Gradio's page (which embeds every endpoint and the project names).
    Wrong logins are throttled per client address and per user name (`studio.proof.Throttle`), or
    per browser for one that logged in before (`studio.logins`).
    Every request under ``/proof/`` goes to the client proof galleries (`studio.proof`), which check
    their own passwords, and never reaches the studio; a proof session is no studio login.
    """

    def __init__(self, app, root: str):
        from engine.store import ProjectStore
        from studio.proof import ProofApp

        self.app = app
        self.root = Path(root).resolve()
        self.proof = ProofApp(ProjectStore(self.root))
        self.logins = Throttle()
        self.browsers = TrustedBrowsers()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path == PROOF_PREFIX.rstrip("/") or path.startswith(PROOF_PREFIX):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await self.proof(scope, receive, send)
        if scope["type"] == "http" and self.auth_on(scope):
            if path in LOGIN_ROUTES and scope["method"] == "POST":
                return await self.login(scope, receive, send)
            if path == "/" and not self.logged_in(scope):
                return await login_page()(scope, receive, send)
        refusal = self.refusal(path, scope)
        if refusal is not None:
            status, text = refusal
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await PlainTextResponse(text, status_code=status)(scope, receive, send)
        return await self.app(scope, receive, send)

    async def login(self, scope, receive, send) -> None:
        """Hand a login to Gradio unless its keys (`TrustedBrowsers.attempt_keys`) have too many recent failures.

        The attempt counts as a failure before Gradio checks it (so parallel guesses cannot slip
        past the limit) and is taken back when it succeeds. A browser posting the login page's form
        gets a page back: the studio on success, the form with the reason otherwise.
        """
        body = await read_body(receive, MAX_LOGIN_BYTES)
        if body is None:
            return await PlainTextResponse("The login form is too large.", status_code=413)(
                scope, receive, send
            )
        user = await form_user(scope, body)
        keys = self.browsers.attempt_keys(scope, user)
        browser = wants_html(scope)
        if self.logins.blocked(*keys):
            response = (
                login_page(THROTTLED, 429) if browser else PlainTextResponse(THROTTLED, status_code=429)
            )
            return await response(scope, receive, send)
        self.logins.record(*keys)
        answer = Answer(None if browser else send)
        await self.app(scope, replay(body, receive), answer)
        if answer.status == 200:
            self.logins.forgive(*keys)
        if browser:
            await self.login_result(scope, answer, user)(scope, receive, send)

    def login_result(self, scope, answer: Answer, user: str) -> Response:
        """The page a browser gets after posting the form: the studio (with the session cookie and a
        trusted-browser cookie, `studio.logins`) or the form."""
        if answer.status != 200:
            return login_page("Incorrect credentials: check the username and password and try again.", 401)
        response = RedirectResponse("./" if scope["path"] == "/login" else "../", status_code=303)
        response.raw_headers += [
            (name, value) for name, value in answer.headers if name.lower() == b"set-cookie"
        ]
        response.raw_headers.append((b"set-cookie", self.browsers.trust(user)))
        return response

    def refusal(self, path: str, scope) -> tuple[int, str] | None:
        if self.auth_on(scope) and not self.public(path) and not self.logged_in(scope):
            return 401, "Not logged in."
        if path.startswith(REFUSED_ROUTES):
            return 403, "Not served by MagiCapture Studio."
        for prefix in FILE_ROUTES:
            if path.startswith(prefix):
                return None if self.servable(path[len(prefix) :]) else (403, "File not allowed.")
        return None

    @staticmethod
    def auth_on(scope) -> bool:
        return getattr(scope.get("app"), "auth", None) is not None

    @staticmethod
    def public(path: str) -> bool:
        return path in PUBLIC_ROUTES or path.startswith(PUBLIC_PREFIXES)

    @staticmethod
    def logged_in(scope) -> bool:
        app = scope.get("app")
        cookies = request_cookies(scope)
        tokens = getattr(app, "tokens", {})
        cookie_id = getattr(app, "cookie_id", "")
        candidates = (
            cookies.get(f"access-token-{cookie_id}"),
            cookies.get(f"access-token-unsecure-{cookie_id}"),
        )
        return any(token and token in tokens for token in candidates)

    def servable(self, target: str) -> bool:
        if not target or "://" in target or target.lower().startswith(("http:", "https:", "data:", "file:")):
            return False
        try:
            path = Path(target).resolve()
        except (OSError, ValueError):
            return False
        return (path == self.root or self.root in path.parents) and path.is_file()


class Answer:
    """An ASGI ``send`` that notes the response's status and headers, passing messages on to ``send`` if given."""

    def __init__(self, send=None):
        self.send = send
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        if self.send is not None:
            await self.send(message)


async def read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """An ASGI ``receive`` that gives ``body`` once, then defers to ``receive`` (for the disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def again():
        return pending.pop() if pending else await receive()

    return again


async def form_user(scope, body: bytes) -> str:
    """The user name of a login form (URL-encoded or multipart), as Gradio reads it; "" if there is none."""
    try:
        async with Request(scope, replay(body, _no_more)).form() as form:
            user = form.get("username", "")
    except (HTTPException, ValueError):
        return ""
    return user.strip() if isinstance(user, str) else ""


async def _no_more():
    return {"type": "http.disconnect"}


def wants_html(scope) -> bool:
    """Whether the request comes from a browser expecting a page (the login form), not from a script."""
    return any(name == b"accept" and b"text/html" in value for name, value in scope.get("headers", []))


@dataclass(frozen=True)
class LaunchOptions:
    port: int | None = None
    share: bool = False
    listen: bool = False
    auth: tuple[str, str] | None = None
    open_browser: bool = True


def launch(studio: Studio, options: LaunchOptions, *, block: bool = True) -> gr.Blocks:
    """Serve the studio; with ``block`` wait until Ctrl+C. Files are served from the data root only."""
    if options.share and options.auth is None:
        raise ValueError("Sharing needs a login: pass auth.")
    root = str(studio.store.root.resolve())
    blocks = build(studio)
    blocks.queue(default_concurrency_limit=4)
    studio.warm_up()
    blocks.launch(
        server_name="0.0.0.0" if options.listen else "127.0.0.1",
        server_port=options.port,
        share=options.share,
        auth=options.auth,
        auth_message=LOGIN_MESSAGE,
        inbrowser=options.open_browser,
        allowed_paths=[root],
        app_kwargs={"middleware": [Middleware(Gatekeeper, root=root)]},
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        run_history=False,
        ssr_mode=False,
        mcp_server=False,
        enable_monitoring=False,
        footer_links=[],
        max_file_size="60mb",
        theme=gr.themes.Soft(primary_hue="indigo"),
        css=CSS,
    )
    studio.reach = served(
        blocks.local_url, blocks.server_port, listen=options.listen, share_url=blocks.share_url
    )
    print(f"MagiCapture Studio is running at {blocks.local_url}", flush=True)
    for line in start_lines(studio.reach):
        print(line, flush=True)
    if block:
        try:
            blocks.block_thread()
        finally:
            studio.runner.close()
    return blocks
