"""Names as the user types them, made safe as one path component, and paths kept inside their root."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from engine.store.errors import InvalidName

_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}
MAX_NAME = 80
"""Most characters of a name's folder form; longer names are refused, never cut."""
MAX_NAME_BYTES = 160
"""Most bytes of a name's folder form in UTF-8; longer names are refused, never cut.

One path component holds 255 bytes (ext4, APFS; NTFS's 255 UTF-16 units are never more than the
UTF-8 bytes). The rest is room for what the app adds to a name within one component: a deleted
project's ``.deleting-`` and random tag (19 bytes), an export's ``-portraits-YYYYMMDD-HHMMSS.zip``
(30) or ``-lora-diffusers.safetensors`` (27), an embedding's ``-<token>.safetensors``, each inside
an atomic write's ``.`` and ``.XXXXXXXX.tmp`` (14).
"""


def safe_name(name: str) -> str:
    """Turn a user-given name into one path component, or raise `InvalidName`.

    Keeps letters, digits, ``-``, ``_``, ``.`` and spaces (folded to ``-``); refuses empty names,
    ``.``/``..``, NUL, path separators, Windows reserved device names and names longer than
    `MAX_NAME` characters or `MAX_NAME_BYTES` bytes in UTF-8.
    """
    if not isinstance(name, str) or "\x00" in name:
        raise InvalidName("Names may not contain NUL characters.")
    if "/" in name or "\\" in name:
        raise InvalidName(f"Names may not contain path separators: {name!r}.")
    text = unicodedata.normalize("NFKC", name).strip()
    text = re.sub(r"\s+", "-", text)
    text = re.sub(r"[^\w.\-]", "", text, flags=re.UNICODE).strip(".-")
    if not text:
        raise InvalidName(f"{name!r} has no usable characters; use letters, digits, '-' or '_'.")
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        raise InvalidName(f"{name!r} is a reserved device name on Windows; choose another.")
    if len(text) > MAX_NAME:
        raise InvalidName(
            f"Names may have at most {MAX_NAME} characters (letters, digits, '-', '_' and '.'); "
            f"{name[:40]!r}... has {len(text)}. Choose a shorter name."
        )
    size = len(text.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise InvalidName(
            f"{name[:40]!r}... is too long for a folder name: it takes {size} bytes and at most "
            f"{MAX_NAME_BYTES} fit (letters such as 'é' or '漢' take two to four bytes each). "
            "Choose a shorter name."
        )
    return text


def same_name(first: str, second: str) -> bool:
    """Whether two names are the same as typed (Unicode composition and outer spaces aside)."""
    return typed_name(first) == typed_name(second)


def typed_name(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip()


def inside(root: Path, *parts: str) -> Path:
    """Join ``parts`` under ``root`` and refuse any result that escapes it."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if path != root and root not in path.parents:
        raise InvalidName(f"Path {'/'.join(parts)!r} leaves {root}.")
    return path
