"""Projects on disk: safe names, atomic writes and a locked JSON manifest.

Every file the app writes goes through this package. A project is a folder under the data root
holding ``manifest.json`` plus sub-folders (``photos/``, ``trainings/``, ``outputs/``...).
Writes land in a temporary file in the same folder and are moved into place with ``os.replace``,
so a reader never sees half a file; manifest updates hold a file lock so two browser tabs or two
processes cannot interleave. Each update keeps the manifest it replaces as ``manifest.prev.json``,
which is read (with a `ManifestRecovered` warning) when ``manifest.json`` does not parse.

A project is opened by the name it was created with (kept in the manifest), never by another name
that happens to give the same folder: ``"a b"`` does not open project ``"a-b"``.

One module a job: `names` (safe names, paths inside a root), `files` (atomic writes, folder swaps,
hashes), `projects` (`Project`, `ProjectStore`, the manifest), `errors`.
"""

from engine.store.errors import (
    InvalidName,
    ManifestRecovered,
    NameTaken,
    ProjectBusy,
    StorageFull,
    StoreError,
)
from engine.store.files import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
    full_disk_as_storage_full,
    replace_folder,
)
from engine.store.names import MAX_NAME, MAX_NAME_BYTES, inside, safe_name, same_name
from engine.store.projects import (
    HOME_ENV,
    MANIFEST,
    PREVIOUS,
    Project,
    ProjectStore,
    data_root,
    now,
    parse_manifest,
)

__all__ = [
    "HOME_ENV",
    "MANIFEST",
    "MAX_NAME",
    "MAX_NAME_BYTES",
    "PREVIOUS",
    "InvalidName",
    "ManifestRecovered",
    "NameTaken",
    "Project",
    "ProjectBusy",
    "ProjectStore",
    "StorageFull",
    "StoreError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "data_root",
    "file_sha256",
    "full_disk_as_storage_full",
    "inside",
    "now",
    "parse_manifest",
    "replace_folder",
    "safe_name",
    "same_name",
]
