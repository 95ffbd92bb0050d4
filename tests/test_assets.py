"""engine.assets against a real HTTP server on 127.0.0.1 that each test starts."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
import time
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine import assets
from engine.assets import Asset, download

PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()

Route = Callable[[BaseHTTPRequestHandler], None]


class LoopbackServer:
    """A threaded HTTP server whose paths run the behaviours a test registers."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.requests.append((self.path, self.headers.get("Range")))
                route = state.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                else:
                    route(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def ranges(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler: BaseHTTPRequestHandler, data: bytes, *, honour_range: bool = True) -> None:
    """Answer with ``data``, or the requested byte range of it (206), like a file server."""
    requested = handler.headers.get("Range")
    if requested and honour_range:
        start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
        if start >= len(data):
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(data)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body = data[start:]
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
        body = data
        handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serving(data: bytes, *, honour_range: bool = True, delay: float = 0.0) -> Route:
    def route(handler: BaseHTTPRequestHandler) -> None:
        time.sleep(delay)
        send(handler, data, honour_range=honour_range)

    return route


def cut_once(data: bytes, cut: int, *, stall: float = 0.0) -> Route:
    """First request: promise all of ``data`` but stop after ``cut`` bytes (then hang up, or first
    stall for ``stall`` seconds); later requests: serve it."""
    calls = []

    def route(handler: BaseHTTPRequestHandler) -> None:
        calls.append(1)
        if len(calls) > 1:
            send(handler, data)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[:cut])
        handler.wfile.flush()
        time.sleep(stall)
        handler.close_connection = True

    return route


def status(code: int) -> Route:
    return lambda handler: handler.send_error(code)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "assets"
    monkeypatch.setenv(assets.ASSETS_ENV, str(folder))
    for name in assets.OFFLINE_ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    return folder


@pytest.fixture
def server():
    loopback = LoopbackServer()
    yield loopback
    loopback.close()


def register(monkeypatch: pytest.MonkeyPatch, *urls: str, **fields: object) -> Asset:
    values: dict[str, object] = {
        "name": "tiny",
        "filename": "tiny.bin",
        "urls": urls,
        "sha256": SHA,
        "size": len(PAYLOAD),
        "licence": "MIT",
        "commercial_ok": True,
        "kind": "test",
        "description": "a tiny test weight",
        "home": "https://example.org/tiny",
    }
    values.update(fields)
    asset = Asset(**values)
    monkeypatch.setitem(assets.REGISTRY, asset.name, asset)
    return asset


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/tiny.bin"


def leftovers(cache: Path) -> list[Path]:
    partial = cache / assets.PARTIAL_DIR
    return sorted(partial.iterdir()) if partial.exists() else []


def make_zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def test_good_download_is_verified_and_cached(cache, server, monkeypatch):
    server.routes["/tiny.bin"] = serving(PAYLOAD)
    register(monkeypatch, server.url("/tiny.bin"))
    monkeypatch.setattr(download, "CHUNK", 16_384)
    seen: list[tuple[int, int | None]] = []

    path = assets.asset_path("tiny", progress=lambda done, total: seen.append((done, total)))

    assert path == cache / "tiny.bin"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(cache) == []
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(seen) > 1 and all(a[0] < b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert assets.asset_path("tiny") == path
    assert len(server.requests) == 1  # the second call used the cache


@pytest.mark.parametrize("stall", [0.0, 1.0], ids=["closed", "stalled"])
def test_interrupted_transfer_keeps_the_partial_file_and_resumes(cache, server, monkeypatch, stall):
    cut = 70_000
    server.routes["/tiny.bin"] = cut_once(PAYLOAD, cut, stall=stall)
    register(monkeypatch, server.url("/tiny.bin"))
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)

    with pytest.raises(assets.AssetInterrupted, match="run the download again to resume") as caught:
        assets.asset_path("tiny")

    part = cache / assets.PARTIAL_DIR / "tiny.bin.part"
    assert str(part) in str(caught.value)
    assert not (cache / "tiny.bin").exists()
    kept = part.stat().st_size
    assert 0 < kept <= cut

    path = assets.asset_path("tiny")

    assert path.read_bytes() == PAYLOAD
    assert server.ranges("/tiny.bin") == [None, f"bytes={kept}-"]
    assert leftovers(cache) == []


def test_server_that_ignores_range_restarts_from_the_beginning(cache, server, monkeypatch):
    server.routes["/tiny.bin"] = serving(PAYLOAD, honour_range=False)
    register(monkeypatch, server.url("/tiny.bin"))
    part = cache / assets.PARTIAL_DIR / "tiny.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\xff" * 1000)  # a stale partial that must not end up in the file

    path = assets.asset_path("tiny")

    assert server.ranges("/tiny.bin") == ["bytes=1000-"]
    assert path.read_bytes() == PAYLOAD


def test_refused_range_restarts_from_the_beginning(cache, server, monkeypatch):
    server.routes["/tiny.bin"] = serving(PAYLOAD)
    register(monkeypatch, server.url("/tiny.bin"), size=None)
    part = cache / assets.PARTIAL_DIR / "tiny.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)  # complete, but the size is unknown, so it is asked for again

    assert assets.asset_path("tiny").read_bytes() == PAYLOAD
    assert server.ranges("/tiny.bin") == [f"bytes={len(PAYLOAD)}-", None]  # 416, then the whole file


def test_complete_partial_file_is_checked_and_installed_without_the_network(cache, monkeypatch):
    register(monkeypatch, closed_port_url())
    part = cache / assets.PARTIAL_DIR / "tiny.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD)

    assert assets.asset_path("tiny").read_bytes() == PAYLOAD
    assert leftovers(cache) == []


def test_wrong_hash_is_rejected_and_nothing_is_kept(cache, server, monkeypatch):
    bad = bytes(reversed(PAYLOAD))
    server.routes["/tiny.bin"] = serving(bad)
    register(monkeypatch, server.url("/tiny.bin"))

    with pytest.raises(assets.AssetHashMismatch, match="it was deleted") as caught:
        assets.asset_path("tiny")

    assert hashlib.sha256(bad).hexdigest() in str(caught.value)
    assert not (cache / "tiny.bin").exists()
    assert leftovers(cache) == []
    assert not (cache / assets.HASHES_FILE).exists()

    server.routes["/tiny.bin"] = serving(PAYLOAD)
    assert assets.asset_path("tiny").read_bytes() == PAYLOAD
    assert server.ranges("/tiny.bin")[-1] is None  # started afresh, nothing resumed from the bad file


def test_wrong_size_is_rejected(cache, server, monkeypatch):
    server.routes["/tiny.bin"] = serving(PAYLOAD[:-10])
    register(monkeypatch, server.url("/tiny.bin"))

    with pytest.raises(assets.AssetSizeMismatch, match=f"{len(PAYLOAD) - 10} bytes.*{len(PAYLOAD)}"):
        assets.asset_path("tiny")

    assert not (cache / "tiny.bin").exists()
    assert leftovers(cache) == []


def test_wrong_size_without_content_length_is_caught_after_the_transfer(cache, server, monkeypatch):
    def no_length(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(PAYLOAD + b"extra")
        handler.close_connection = True

    server.routes["/tiny.bin"] = no_length
    register(monkeypatch, server.url("/tiny.bin"))

    with pytest.raises(assets.AssetSizeMismatch, match="it was not kept"):
        assets.asset_path("tiny")

    assert not (cache / "tiny.bin").exists()
    assert leftovers(cache) == []


def test_server_error_names_the_status(cache, server, monkeypatch):
    server.routes["/tiny.bin"] = status(500)
    register(monkeypatch, server.url("/tiny.bin"))

    with pytest.raises(assets.AssetServerError, match="HTTP 500") as caught:
        assets.asset_path("tiny")

    assert caught.value.status == 500
    assert "magicapture models import tiny" in str(caught.value)
    assert not (cache / "tiny.bin").exists()


def test_no_network_says_so_and_how_to_import_by_hand(cache, monkeypatch):
    url = closed_port_url()
    register(monkeypatch, url)

    with pytest.raises(assets.AssetNetworkError, match="no source could be reached") as caught:
        assets.asset_path("tiny")

    message = str(caught.value)
    assert url in message and "magicapture models import tiny PATH" in message
    assert not (cache / "tiny.bin").exists()


def test_failed_sources_fall_through_to_the_next_one(cache, server, monkeypatch):
    server.routes["/broken"] = status(503)
    server.routes["/tiny.bin"] = serving(PAYLOAD)
    register(monkeypatch, closed_port_url(), server.url("/broken"), server.url("/tiny.bin"))

    assert assets.asset_path("tiny").read_bytes() == PAYLOAD
    assert [path for path, _ in server.requests] == ["/broken", "/tiny.bin"]


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "MAGICAPTURE_OFFLINE", None])
def test_offline_message_names_the_file_the_folder_and_the_source(cache, server, monkeypatch, switch):
    server.routes["/tiny.bin"] = serving(PAYLOAD)
    register(monkeypatch, server.url("/tiny.bin"))
    if switch:
        monkeypatch.setenv(switch, "1")

    with pytest.raises(assets.AssetMissing) as caught:
        assets.asset_path("tiny", download=switch is not None)

    message = str(caught.value)
    assert "tiny.bin" in message
    assert str(cache / "tiny.bin") in message
    assert server.url("/tiny.bin") in message
    assert "magicapture models import tiny PATH" in message
    assert server.requests == []


def test_offline_message_for_an_archive_names_the_folder_and_its_files(cache, monkeypatch):
    monkeypatch.setenv("MAGICAPTURE_OFFLINE", "1")
    with pytest.raises(assets.AssetMissing) as caught:
        assets.asset_path("buffalo_l")
    message = str(caught.value)
    assert "buffalo_l.zip" in message
    assert f"{cache / 'buffalo_l'} holds det_10g.onnx, w600k_r50.onnx" in message


def test_import_with_the_right_hash_installs_the_file(cache, tmp_path, monkeypatch):
    register(monkeypatch, closed_port_url())
    source = tmp_path / "downloaded.bin"
    source.write_bytes(PAYLOAD)

    path = assets.import_asset("tiny", source)

    assert path == cache / "tiny.bin" and path.read_bytes() == PAYLOAD
    assert source.read_bytes() == PAYLOAD  # the user's file is copied, not moved
    assert assets.asset_path("tiny", download=False) == path
    assert leftovers(cache) == []


def test_import_with_the_wrong_hash_is_refused(cache, tmp_path, monkeypatch):
    register(monkeypatch, closed_port_url())
    source = tmp_path / "downloaded.bin"
    source.write_bytes(PAYLOAD[::-1])

    with pytest.raises(assets.AssetHashMismatch):
        assets.import_asset("tiny", source)

    assert not (cache / "tiny.bin").exists()
    assert leftovers(cache) == []


def test_import_of_a_missing_file_says_so(cache, tmp_path, monkeypatch):
    register(monkeypatch, closed_port_url())
    with pytest.raises(assets.AssetError, match="There is no file at"):
        assets.import_asset("tiny", tmp_path / "nothing.bin")


def test_archive_is_unpacked_flat_into_a_folder_named_after_the_asset(cache, server, monkeypatch):
    archive = make_zip(
        {"pack/det.onnx": b"detector", "pack/rec.onnx": b"recogniser", "__MACOSX/._det.onnx": b"x"}
    )
    server.routes["/pack.zip"] = serving(archive)
    register(
        monkeypatch,
        server.url("/pack.zip"),
        name="pack",
        filename="pack.zip",
        sha256=hashlib.sha256(archive).hexdigest(),
        size=len(archive),
        archive_members=("det.onnx", "rec.onnx"),
    )

    folder = assets.asset_path("pack")

    assert folder == cache / "pack"
    assert sorted(p.name for p in folder.iterdir()) == ["det.onnx", "rec.onnx"]
    assert (folder / "rec.onnx").read_bytes() == b"recogniser"
    assert not list(cache.glob("*.zip")) and leftovers(cache) == []
    assert [s.present for s in assets.list_assets() if s.name == "pack"] == [True]


def test_archive_without_a_required_member_is_corrupt(cache, server, monkeypatch):
    archive = make_zip({"det.onnx": b"detector"})
    server.routes["/pack.zip"] = serving(archive)
    register(
        monkeypatch,
        server.url("/pack.zip"),
        name="pack",
        filename="pack.zip",
        sha256=None,
        size=None,
        archive_members=("det.onnx", "rec.onnx"),
    )

    with pytest.raises(assets.AssetCorrupt, match="it lacks rec.onnx"):
        assets.asset_path("pack")

    assert not (cache / "pack").exists()
    assert leftovers(cache) == []
    assert not (cache / assets.HASHES_FILE).exists()  # a bad archive is not trusted


def test_damaged_archive_is_corrupt_and_deleted(cache, server, monkeypatch):
    server.routes["/pack.zip"] = serving(b"PK\x03\x04 this is not really a zip file")
    register(
        monkeypatch,
        server.url("/pack.zip"),
        name="pack",
        filename="pack.zip",
        sha256=None,
        size=None,
        archive_members=("det.onnx",),
    )

    with pytest.raises(assets.AssetCorrupt, match="cannot be used"):
        assets.asset_path("pack")

    assert not (cache / "pack").exists()
    assert leftovers(cache) == []
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == []


def test_commercial_mode_refuses_non_commercial_assets(cache, monkeypatch):
    register(monkeypatch, closed_port_url(), name="nc", commercial_ok=False, licence="Research only")
    cache.mkdir()
    (cache / "tiny.bin").write_bytes(PAYLOAD)

    with pytest.raises(assets.NonCommercialAsset, match="Research only"):
        assets.asset_path("nc", commercial=True)
    assert assets.asset_path("nc") == cache / "tiny.bin"

    for name in ("buffalo_l", "codeformer"):
        with pytest.raises(assets.NonCommercialAsset, match="non-commercial"):
            assets.asset_path(name, commercial=True)


def test_unknown_hash_is_trusted_on_first_use_then_enforced(cache, server, monkeypatch, tmp_path):
    server.routes["/tiny.bin"] = serving(PAYLOAD)
    register(monkeypatch, server.url("/tiny.bin"), sha256=None, size=None)

    assets.asset_path("tiny")

    recorded = json.loads((cache / assets.HASHES_FILE).read_text())
    assert recorded["tiny"]["sha256"] == SHA
    assert recorded["tiny"]["size"] == len(PAYLOAD)

    other = tmp_path / "other.bin"
    other.write_bytes(PAYLOAD[::-1])
    with pytest.raises(assets.AssetHashMismatch, match="recorded when it was first installed"):
        assets.import_asset("tiny", other)
    assert (cache / "tiny.bin").read_bytes() == PAYLOAD  # the good file stays

    same = tmp_path / "same.bin"
    same.write_bytes(PAYLOAD)
    assert assets.import_asset("tiny", same).read_bytes() == PAYLOAD


def test_two_concurrent_downloads_fetch_the_file_once(cache, server, monkeypatch):
    server.routes["/tiny.bin"] = serving(PAYLOAD, delay=0.3)
    register(monkeypatch, server.url("/tiny.bin"))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(assets.asset_path("tiny"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert results == [cache / "tiny.bin"] * 2
    assert len(server.requests) == 1


def test_licence_notice_names_only_non_commercial_assets():
    notice = assets.licence_notice(["buffalo_l", "gfpgan_v1.4", "codeformer", "buffalo_l"])
    assert notice is not None
    assert "buffalo_l" in notice and "codeformer" in notice and "gfpgan" not in notice
    assert notice.count("buffalo_l") == 1
    assert notice.endswith(".") and notice.count(". ") == 0
    assert assets.licence_notice(["gfpgan_v1.4", "yunet", "sface"]) is None
    with pytest.raises(assets.UnknownAsset, match="no model asset named 'nope'"):
        assets.licence_notice(["nope"])


def test_list_assets_reports_presence_and_licences(cache, monkeypatch):
    register(monkeypatch, closed_port_url())
    rows = {row.name: row for row in assets.list_assets()}
    assert set(assets.REGISTRY) == set(rows)
    assert rows["tiny"].present is False and rows["tiny"].path == cache / "tiny.bin"
    assert rows["codeformer"].commercial_ok is False and rows["codeformer"].size == 376_637_898

    cache.mkdir()
    (cache / "tiny.bin").write_bytes(PAYLOAD)
    assert {row.name: row for row in assets.list_assets()}["tiny"].present is True


def test_default_folder_sits_beside_the_hugging_face_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv(assets.ASSETS_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert assets.assets_dir() == (tmp_path / "hf" / "magicapture-assets").resolve()


def test_registry_entries_are_complete():
    for name, asset in assets.REGISTRY.items():
        assert asset.name == name and "/" not in asset.filename
        assert asset.urls and all(url.startswith("https://") for url in asset.urls)
        assert asset.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", asset.sha256)
        assert asset.size is None or asset.size > 0
        assert asset.licence and asset.description and asset.home.startswith("https://")
        assert not asset.is_archive or asset.filename.endswith(".zip")
    assert {n for n, a in assets.REGISTRY.items() if not a.commercial_ok} == {"buffalo_l", "codeformer"}
