"""The HTTP transfer of an asset into its partial file: sources tried in order, resumed with a
``Range`` request after an interruption, progress reported as it goes."""

from __future__ import annotations

import errno
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from engine.assets.errors import AssetInterrupted, AssetNetworkError, AssetServerError, AssetSizeMismatch
from engine.assets.registry import Asset, manual_hint
from engine.store import StorageFull

CHUNK = 1 << 20
TIMEOUT_S = 30

Progress = Callable[[int, int | None], None]
"""Called as ``progress(done_bytes, total_bytes)``; ``total_bytes`` is ``None`` when unknown."""


class _SourceFailed(Exception):
    """One source could not be used; the caller tries the next one."""

    def __init__(self, url: str, reason: str, status: int | None = None):
        super().__init__(reason)
        self.url, self.reason, self.status = url, reason, status


def fetch_from_any(asset: Asset, part: Path, progress: Progress | None) -> None:
    """Stream ``asset`` into ``part`` from the first of its sources that answers; the error names them all."""
    failures: list[_SourceFailed] = []
    for url in asset.urls:
        try:
            _fetch(asset, url, part, progress)
            return
        except _SourceFailed as failure:
            failures.append(failure)
    tried = "; ".join(f"{f.url}: {f.reason}" for f in failures)
    statuses = [f.status for f in failures if f.status is not None]
    if len(statuses) == len(failures):
        raise AssetServerError(
            f"Could not download {asset.filename}: the server answered with an error ({tried}). "
            + manual_hint(asset),
            statuses[-1],
        )
    raise AssetNetworkError(
        f"Could not download {asset.filename}: no source could be reached ({tried}). " + manual_hint(asset)
    )


def _fetch(asset: Asset, url: str, part: Path, progress: Progress | None) -> None:
    """Stream ``url`` into ``part``, resuming what is there when the server allows it."""
    response, done, total = _open(url, part)
    with response:
        if asset.size is not None and total is not None and total != asset.size:
            part.unlink(missing_ok=True)
            raise AssetSizeMismatch(
                f"{urlsplit(url).netloc} offers {asset.filename} with {total} bytes, but it should have "
                f"{asset.size}; nothing was kept. The source may have changed: " + manual_hint(asset)
            )
        bar = None
        if progress is None:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=total, initial=done, unit="B", unit_scale=True, desc=asset.filename, disable=None
            )

            def progress(now: int, _total: int | None) -> None:
                bar.update(now - bar.n)

        try:
            with open(part, "ab" if done else "wb") as handle:
                while True:
                    try:
                        chunk = response.read1(CHUNK)  # what has arrived, so a stall loses nothing
                    except (OSError, http.client.HTTPException) as error:
                        raise _interrupted(
                            asset, url, part, done, total, str(error) or type(error).__name__
                        ) from error
                    if not chunk:
                        break
                    _write(handle, chunk, part)
                    done += len(chunk)
                    progress(done, total)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done < total:
        raise _interrupted(asset, url, part, done, total, "the connection closed early")


def _open(url: str, part: Path) -> tuple[http.client.HTTPResponse, int, int | None]:
    """Open ``url`` asking for the bytes after ``part``; return the response, its offset and the file size.

    A server that ignores ``Range`` (200), refuses it (416) or answers another range makes the
    download start again from byte 0.
    """
    have = part.stat().st_size if part.exists() else 0
    try:
        response = _request(url, have)
    except _SourceFailed as failure:
        if failure.status != 416 or not have:
            raise
        part.unlink()
        have, response = 0, _request(url, 0)
    if response.status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if start == have:
            return response, have, total
        response.close()
        part.unlink(missing_ok=True)
        if not have:
            raise _SourceFailed(url, "the server sent part of the file when asked for all of it")
        response = _request(url, 0)
        if response.status != 200:
            response.close()
            raise _SourceFailed(url, f"unexpected HTTP {response.status} for the whole file")
    length = response.headers.get("Content-Length", "")
    return response, 0, int(length) if length.isdigit() else None


def _request(url: str, start: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": "magicapture-studio"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        error.close()
        raise _SourceFailed(url, f"HTTP {error.code} {error.reason}", error.code) from error
    except urllib.error.URLError as error:
        raise _SourceFailed(url, str(error.reason)) from error
    except (OSError, http.client.HTTPException) as error:
        raise _SourceFailed(url, str(error) or type(error).__name__) from error


def _content_range(value: str) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` into (START, TOTAL); unknown parts are ``None``."""
    unit, _, spec = value.strip().partition(" ")
    span, _, total = spec.partition("/")
    start = span.partition("-")[0]
    if unit != "bytes" or not start.isdigit():
        return None, None
    return int(start), int(total) if total.isdigit() else None


def _write(handle: BinaryIO, chunk: bytes, part: Path) -> None:
    try:
        handle.write(chunk)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull(
                f"The disk holding {part.parent} is full; free some space and run the download again "
                "(it resumes where it stopped)."
            ) from error
        raise


def _interrupted(
    asset: Asset, url: str, part: Path, done: int, total: int | None, reason: str
) -> AssetInterrupted:
    of = f" of {total}" if total is not None else ""
    return AssetInterrupted(
        f"The download of {asset.filename} from {urlsplit(url).netloc} stopped after {done}{of} bytes "
        f"({reason}). The partial file is kept in {part}; run the download again to resume it."
    )
