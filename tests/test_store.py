from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import pytest

from engine.store import (
    InvalidName,
    ProjectStore,
    StorageFull,
    StoreError,
    atomic_path,
    atomic_write_bytes,
    data_root,
    inside,
    safe_name,
)


def test_data_root_follows_the_environment(isolated_home):
    assert data_root() == isolated_home.resolve()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Jane Doe", "Jane-Doe"), ("wedding_2026", "wedding_2026"), ("  ..hidden", "hidden"), ("Zoë", "Zoë")],
)
def test_safe_name_keeps_readable_names(name, expected):
    assert safe_name(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../etc", "path separators"),
        ("/abs/path", "path separators"),
        ("a\\b", "path separators"),
        ("evil\x00name", "NUL"),
        ("..", "no usable characters"),
        ("", "no usable characters"),
        ("CON", "reserved device name"),
        ("lpt1.txt", "reserved device name"),
    ],
)
def test_safe_name_refuses_escapes_and_reserved_names(name, reason):
    with pytest.raises(InvalidName, match=reason):
        safe_name(name)


def test_inside_refuses_paths_that_leave_the_root(tmp_path):
    assert inside(tmp_path, "a", "b.png") == (tmp_path / "a" / "b.png").resolve()
    for parts in (("..", "x"), ("/etc/passwd",), ("a", "..", "..", "x")):
        with pytest.raises(InvalidName, match="leaves"):
            inside(tmp_path, *parts)


def test_inside_refuses_symlinks_out_of_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidName):
        inside(root, "link", "secret")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_disk_full_names_the_folder_and_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "image.png"
    atomic_write_bytes(target, b"previous")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StorageFull, match=str(target.parent)):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"previous"
    assert [p.name for p in target.parent.iterdir()] == ["image.png"]


def test_projects_create_open_list_delete():
    store = ProjectStore()
    project = store.create("Client: Ann Lee")
    assert project.name == "Client: Ann Lee" and project.root.name == "Client-Ann-Lee"
    assert store.list() == ["Client: Ann Lee"]
    assert store.open("Client: Ann Lee").root == project.root
    assert project.manifest()["name"] == "Client: Ann Lee"
    with pytest.raises(StoreError, match="already exists"):
        store.create("Client: Ann Lee")
    store.delete("Client: Ann Lee")
    assert store.list() == []
    with pytest.raises(StoreError, match="no project named"):
        store.open("Client: Ann Lee")


def test_project_paths_stay_inside_the_project():
    project = ProjectStore().create("p")
    with pytest.raises(InvalidName):
        project.path("..", "other", "manifest.json")


def test_failed_update_leaves_the_manifest_unchanged():
    project = ProjectStore().create("p")
    before = project.manifest()

    def broken(manifest):
        manifest["images"].append({"id": "x"})
        raise ValueError("boom")

    with pytest.raises(ValueError):
        project.update(broken)
    assert project.manifest() == before


def test_concurrent_updates_lose_nothing():
    project = ProjectStore().create("p")

    def add(i: int) -> None:
        for j in range(10):
            project.update(lambda m, i=i, j=j: m["images"].append({"id": f"{i}-{j}"}))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = [image["id"] for image in project.manifest()["images"]]
    assert sorted(ids) == sorted(f"{i}-{j}" for i in range(4) for j in range(10))
    json.loads((project.root / "manifest.json").read_text())


def test_damaged_manifest_is_reported():
    project = ProjectStore().create("p")
    Path(project.root / "manifest.json").write_text("{not json")
    Path(project.root / "manifest.prev.json").write_text("{not json either")
    with pytest.raises(StoreError, match="damaged"):
        project.manifest()
