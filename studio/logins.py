"""Studio logins: which failure counts an attempt adds to, and browsers trusted by an earlier login.

Wrong logins are counted per client address and per user name (`studio.proof.Throttle`), so a
stranger's guesses would also block the photographer: anyone may type the user name, and behind a
share link every visitor has the same address. A browser that logs in gets a cookie (`COOKIE`)
holding a random token; its later attempts as that user count under that token alone, so no one
else's failures block it while its own are still limited. Tokens live in this process: after a
restart, a browser is trusted again from its next login.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

COOKIE = "magicapture-trusted"
MAX_AGE_S = 30 * 24 * 3600
MAX_BROWSERS = 256
"""Trusted browsers kept; the oldest is forgotten first."""

Key = tuple[str, str]


def request_cookies(scope) -> dict[str, str]:
    """The cookies an ASGI request carries, by name."""
    cookies = {}
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, item = part.strip().partition("=")
                cookies[key] = item
    return cookies


class TrustedBrowsers:
    """The tokens of browsers that logged in, each with its user name and when it was given."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.given: dict[str, tuple[str, float]] = {}

    def attempt_keys(self, scope, user: str) -> tuple[Key, ...]:
        """The throttle keys of a login as ``user``: the browser's token when it is trusted for that
        user, else the client address and the user name."""
        token = request_cookies(scope).get(COOKIE, "")
        holder, since = self.given.get(token, ("", 0.0))
        if token and holder == user and self.clock() - since < MAX_AGE_S:
            return (("browser", token),)
        return (("address", (scope.get("client") or ("?",))[0]), ("user", user))

    def trust(self, user: str) -> bytes:
        """A new token for a browser that logged in as ``user``: the ``Set-Cookie`` header value."""
        while len(self.given) >= MAX_BROWSERS:
            del self.given[next(iter(self.given))]
        token = secrets.token_urlsafe(32)
        self.given[token] = (user, self.clock())
        return f"{COOKIE}={token}; Max-Age={MAX_AGE_S}; Path=/; HttpOnly; SameSite=Lax".encode("latin-1")
