"""Client proof galleries: a read-only link to chosen outputs of a project, with its own password.

The gallery lives in the project manifest under ``"proof"``::

    {"token": ..., "password": {scrypt parameters, salt, hash}, "secret": ..., "outputs": [ids],
     "published": time, "numbers": {id: number}, "picks": {"favourites": [ids], "note": ..., "updated": time}}

``token`` names the link (``/proof/<token>/``), ``secret`` signs the client's session cookies (a new
password gives a new secret, which ends every open session), ``numbers`` gives each portrait ever
shown its number ("portrait 2" for the client and the photographer alike: given once, never reused)
and ``picks`` is what the client chose.
Passwords are kept only as salted scrypt hashes. Unpublishing removes the token, password and
secret, so the link stops working; the chosen outputs, their numbers and the picks stay in the manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.outputs import get_output
from engine.store import StoreError, now

if TYPE_CHECKING:
    from pathlib import Path

    from engine.store import Project, ProjectStore

KEY = "proof"
MIN_PASSWORD = 8
MAX_NOTE = 4000
SESSION_SECONDS = 14 * 24 * 3600
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
"""scrypt cost: about 16 MiB and a few tens of milliseconds per check."""
TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


class ProofError(StoreError):
    """A proof gallery cannot be published or updated as asked; the message says why."""


@dataclass(frozen=True)
class Gallery:
    """A published proof gallery as stored in the manifest."""

    token: str
    outputs: tuple[str, ...]
    favourites: tuple[str, ...]
    note: str
    published: str
    picks_updated: str | None
    numbers: dict[str, int] = field(default_factory=dict)
    """Each shown portrait's number, as both the client and the photographer see it."""


def hash_password(password: str) -> dict[str, Any]:
    """A salted scrypt hash of ``password`` with its parameters (JSON-ready)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **SCRYPT)
    return {"algorithm": "scrypt", **SCRYPT, "salt": salt.hex(), "hash": digest.hex()}


def password_matches(stored: dict[str, Any], password: str) -> bool:
    """Whether ``password`` gives the stored hash (compared in constant time)."""
    try:
        digest = hashlib.scrypt(
            password.encode("utf-8"),
            salt=bytes.fromhex(stored["salt"]),
            n=int(stored["n"]),
            r=int(stored["r"]),
            p=int(stored["p"]),
            dklen=32,
        )
        return hmac.compare_digest(digest.hex(), stored["hash"])
    except (KeyError, TypeError, ValueError):
        return False


def _output_ids(manifest: dict[str, Any]) -> list[str]:
    return [entry["id"] for entry in manifest.get("outputs", [])]


def _gallery(record: dict[str, Any] | None) -> Gallery | None:
    if not record or not record.get("token"):
        return None
    picks = record.get("picks") or {}
    return Gallery(
        token=record["token"],
        outputs=tuple(record.get("outputs", [])),
        favourites=tuple(picks.get("favourites", [])),
        note=picks.get("note", ""),
        published=record.get("published", ""),
        picks_updated=picks.get("updated"),
        numbers=dict(record.get("numbers") or {}),
    )


def gallery(project: Project) -> Gallery | None:
    """The project's published gallery, or None."""
    return _gallery(project.manifest().get(KEY))


def picks(project: Project) -> dict[str, Any]:
    """The client's latest picks (``favourites``, ``note``, ``updated``), kept after unpublishing."""
    return dict((project.manifest().get(KEY) or {}).get("picks") or {})


def numbers(project: Project) -> dict[str, int]:
    """The number of every portrait ever shown in the project's gallery (kept after unpublishing)."""
    return dict((project.manifest().get(KEY) or {}).get("numbers") or {})


def _numbered(numbers: dict[str, int], output_ids: list[str]) -> dict[str, int]:
    """``numbers`` with the next free numbers given to the outputs that have none, in order."""
    numbered = dict(numbers)
    for output in output_ids:
        if output not in numbered:
            numbered[output] = max(numbered.values(), default=0) + 1
    return numbered


def publish(project: Project, output_ids: list[str], password: str | None = None) -> Gallery:
    """Publish (or update) the project's proof gallery showing ``output_ids``, in that order.

    A first publication needs a ``password``; later calls keep the link, and keep the password
    unless a new one is given (which signs every client out). The client's picks stay, except
    favourites of outputs no longer shown. Each portrait keeps the number it was first shown with.
    """
    chosen = list(dict.fromkeys(output_ids))
    if not chosen:
        raise ProofError("Choose at least one portrait to show in the client gallery.")
    if password is not None and len(password) < MIN_PASSWORD:
        raise ProofError(f"The gallery password needs at least {MIN_PASSWORD} characters.")

    def change(manifest: dict[str, Any]) -> Gallery:
        unknown = [output for output in chosen if output not in _output_ids(manifest)]
        if unknown:
            raise ProofError(
                f"Project {project.name!r} has no portrait {unknown[0]!r}; refresh the gallery and choose again."
            )
        record = dict(manifest.get(KEY) or {})
        if not record.get("token"):
            if password is None:
                raise ProofError("Give the client gallery a password before publishing it.")
            record["token"] = secrets.token_urlsafe(24)
        if password is not None:
            record["password"] = hash_password(password)
            record["secret"] = secrets.token_hex(32)
        record["outputs"] = chosen
        record["numbers"] = _numbered(record.get("numbers") or {}, chosen)
        record["published"] = now()
        kept = record.get("picks") or {}
        if kept.get("favourites"):
            record["picks"] = {**kept, "favourites": [f for f in kept["favourites"] if f in chosen]}
        manifest[KEY] = record
        return _gallery(record)

    return project.update(change)


def unpublish(project: Project) -> None:
    """Close the link: the token, password and secret are removed; the picks stay."""

    def change(manifest: dict[str, Any]) -> None:
        record = manifest.get(KEY)
        if record:
            manifest[KEY] = {key: record[key] for key in ("outputs", "numbers", "picks") if key in record}

    project.update(change)


def find(store: ProjectStore, token: str) -> Project | None:
    """The project whose published gallery has ``token``, or None."""
    if not TOKEN_PATTERN.match(token or ""):
        return None
    for name in store.list():
        project = store.open(name)
        try:
            record = project.manifest().get(KEY) or {}
        except StoreError:
            continue
        stored = record.get("token")
        if stored and hmac.compare_digest(stored, token):
            return project
    return None


def check_password(project: Project, token: str, password: str) -> bool:
    """Whether ``password`` opens the gallery ``token`` of ``project``."""
    record = project.manifest().get(KEY) or {}
    if not record.get("token") or not hmac.compare_digest(record["token"], token):
        return False
    return password_matches(record.get("password") or {}, password)


def _signature(secret: str, token: str, expires: int) -> str:
    return hmac.new(bytes.fromhex(secret), f"{token}.{expires}".encode(), hashlib.sha256).hexdigest()


def session_value(project: Project, token: str, *, at: float | None = None) -> str:
    """A signed session cookie value for gallery ``token`` (valid `SESSION_SECONDS`)."""
    record = project.manifest()[KEY]
    expires = int((time.time() if at is None else at) + SESSION_SECONDS)
    return f"{expires}.{_signature(record['secret'], token, expires)}"


def session_valid(project: Project, token: str, value: str | None, *, at: float | None = None) -> bool:
    """Whether cookie ``value`` is a live session of gallery ``token`` (signed with its current secret)."""
    record = project.manifest().get(KEY) or {}
    if not value or not record.get("secret") or record.get("token") != token:
        return False
    expires, _, signature = value.partition(".")
    if not expires.isdigit() or int(expires) < (time.time() if at is None else at):
        return False
    return hmac.compare_digest(signature, _signature(record["secret"], token, int(expires)))


def output_file(project: Project, token: str, output_id: str) -> Path | None:
    """The image file of ``output_id`` if gallery ``token`` shows it, else None."""
    record = project.manifest().get(KEY) or {}
    if record.get("token") != token or output_id not in record.get("outputs", []):
        return None
    output = get_output(project, output_id)
    if output is None:
        return None
    path = project.path(output.file)
    return path if path.is_file() else None


def record_picks(project: Project, token: str, favourites: list[str], note: str) -> Gallery:
    """Save the client's favourites (among the shown outputs) and note in the manifest."""
    note = note.strip()
    if len(note) > MAX_NOTE:
        raise ProofError(f"The note is too long: keep it under {MAX_NOTE} characters.")

    def change(manifest: dict[str, Any]) -> Gallery:
        record = manifest.get(KEY) or {}
        if record.get("token") != token:
            raise ProofError("This gallery is no longer published; ask the photographer for a new link.")
        shown = record.get("outputs", [])
        unknown = [f for f in favourites if f not in shown]
        if unknown:
            raise ProofError("A favourite is not in this gallery any more; reload the page and choose again.")
        record["picks"] = {
            "favourites": [f for f in shown if f in favourites],
            "note": note,
            "updated": now(),
        }
        manifest[KEY] = record
        return _gallery(record)

    return project.update(change)
