"""Bad invocations of the ``magicapture`` command: one line on stderr, exit status 2, no traceback.

Each invocation is the installed console script in its own process, with a private data root and
no network. The processes run with a capped data segment, so a command that reads a device or a
damaged header without a bound fails here instead of exhausting the machine's memory.
"""

from __future__ import annotations

import ast
import json
import os
import resource
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

from engine import cli, preflight
from engine.cli import commands
from engine.config import preset
from engine.errors import UserError
from engine.models import ModelLoadError
from engine.store import ProjectStore

COMMAND = Path(sys.executable).with_name("magicapture")
ENGINE = Path(__file__).resolve().parent.parent / "engine"
MEMORY_CAP = 3 * 2**30
"""Data segment of each command: ample for the command, far below what an unbounded read takes."""
TIMEOUT = 120
LONG_NAME = "client-" + "x" * 200


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP, MEMORY_CAP))


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """``magicapture ARGS`` in ``folder`` with its own data root; a timeout counts as a failed run."""
    env = {
        **os.environ,
        "MAGICAPTURE_HOME": str(folder / "home"),
        "MAGICAPTURE_ASSETS": str(folder / "assets"),
        "MAGICAPTURE_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(folder / "cache"),
    }
    try:
        return subprocess.run(
            [str(COMMAND), *args],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            preexec_fn=_cap_memory,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        return subprocess.CompletedProcess(args, -1, str(error.stdout or ""), f"timed out: {error}")


def _text_file_named_safetensors(path: Path) -> Path:
    """A text file whose first 8 bytes, read as a safetensors header length, declare exabytes."""
    path.write_text("These are notes, not a model.\n")
    return path


def _sparse_safetensors(path: Path, header_bytes: int, size: int) -> Path:
    """A sparse file that declares a ``header_bytes`` long safetensors header and is ``size`` bytes long."""
    with open(path, "wb") as handle:
        handle.write(header_bytes.to_bytes(8, "little"))
        handle.truncate(size)
    return path


def _assert_one_clean_line(done: subprocess.CompletedProcess) -> str:
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-3000:]
    assert done.returncode == 2, (done.returncode, output[-3000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# The table -------------------------------------------------------------------------------------

CASES: list[tuple[str, Sequence[str], str]] = [
    ("missing project", ["train", "nobody"], "nobody"),
    ("missing photo path", ["prepare", "anna", "missing.jpg", "--role", "source"], "missing.jpg"),
    ("folder as a photo", ["prepare", "anna", "folder", "--role", "source"], "folder"),
    ("device as a photo", ["prepare", "anna", "/dev/zero", "--role", "source"], "/dev/zero"),
    ("pipe as a photo", ["prepare", "anna", "pipe", "--role", "source"], "pipe"),
    ("photo over the size limit", ["prepare", "anna", "huge.jpg", "--role", "source"], "huge.jpg"),
    ("project name that leaves the store", ["prepare", "../outside", "photo.jpg", "--role", "source"], "outside"),
    ("photo without --role", ["prepare", "anna", "photo.jpg"], "--role"),
    ("text file as --base", ["train", "anna", "--base", "notes.safetensors"], "notes.safetensors"),
    ("unknown device", ["train", "anna", "--set", "device=quantum"], "quantum"),
    ("setting without a value", ["train", "anna", "--set", "phase1_steps"], "phase1_steps"),
    ("unknown setting", ["train", "anna", "--set", "speed=11"], "speed"),
    ("setting out of range", ["train", "anna", "--set", "phase1_steps=-5"], "phase1_steps"),
    ("unknown preset", ["train", "anna", "--preset", "turbo"], "turbo"),
    ("unknown profile", ["train", "anna", "--profile", "3gb"], "3gb"),
    ("resume with nothing to resume", ["train", "anna", "--resume"], "resume"),
    ("too-long project name", ["train", LONG_NAME], LONG_NAME[:20]),
    ("generate with no trained run", ["generate", "anna"], "anna"),
    ("generate from a damaged artefact", ["generate", "anna", "--run", "junk.safetensors"], "junk.safetensors"),
    ("zero images", ["generate", "anna", "--n", "0"], "--n"),
    ("images not a number", ["generate", "anna", "--n", "many"], "--n"),
    ("non-commercial restorer with --commercial", ["generate", "anna", "--commercial", "--restore", "codeformer"], "codeformer"),
    ("export with no run", ["export", "anna"], "anna"),
    ("eval of a missing project", ["eval", "nobody"], "nobody"),
    ("delete of a missing project", ["projects", "delete", "nobody"], "nobody"),
    ("repair of a missing project", ["projects", "repair", "nobody"], "nobody"),
    ("create without a name", ["projects", "create"], "NAME"),
    ("unknown asset", ["models", "download", "nope"], "nope"),
    ("import without a path", ["models", "import", "bisenet"], "PATH"),
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with an empty project ``anna``, and the bad files the table names."""
    folder = tmp_path_factory.mktemp("bad-invocations")
    ProjectStore(folder / "home").create("anna")
    (folder / "folder").mkdir()
    os.mkfifo(folder / "pipe")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a photo")
    with open(folder / "huge.jpg", "wb") as handle:
        handle.truncate(200 * 2**20)
    _text_file_named_safetensors(folder / "notes.safetensors")
    (folder / "junk.safetensors").write_bytes(b"junk")
    return folder


@dataclass(frozen=True)
class TableRun:
    outcomes: dict[str, subprocess.CompletedProcess]
    store_before: dict[str, bytes]
    store_after: dict[str, bytes]


@pytest.fixture(scope="module")
def table(workspace: Path) -> TableRun:
    """Every invocation of the table, run a few at a time, and the store's files before and after."""
    projects = workspace / "home" / "projects"
    before = _snapshot(projects)
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda case: _run(workspace, *case[1]), CASES))
    return TableRun(
        {case[0]: outcome for case, outcome in zip(CASES, done, strict=True)}, before, _snapshot(projects)
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("case", "args", "named"), CASES, ids=[case[0] for case in CASES])
def test_a_bad_invocation_exits_2_with_one_line_and_no_traceback(
    table: TableRun, case: str, args: Sequence[str], named: str
) -> None:
    line = _assert_one_clean_line(table.outcomes[case])
    assert named in line, line


def test_bad_invocations_change_nothing_in_the_store(table: TableRun) -> None:
    assert table.store_after == table.store_before


# One test per bug ------------------------------------------------------------------------------


def test_a_device_given_as_a_photo_is_refused_without_reading_it(tmp_path: Path) -> None:
    """``prepare p /dev/zero`` read the device until the memory ran out."""
    done = _run(tmp_path, "prepare", "p", "/dev/zero", "--role", "source")
    line = _assert_one_clean_line(done)
    assert "/dev/zero is a device, not a photo file" in line, line
    assert ProjectStore(tmp_path / "home").list() == []


def test_a_text_file_given_as_base_is_refused_by_its_header(tmp_path: Path) -> None:
    """A text file as ``--base`` died with ``MemoryError`` in the pre-flight size check."""
    _text_file_named_safetensors(tmp_path / "notes.safetensors")
    ProjectStore(tmp_path / "home").create("anna")
    done = _run(tmp_path, "train", "anna", "--base", "notes.safetensors")
    line = _assert_one_clean_line(done)
    assert "notes.safetensors is not a readable .safetensors file" in line, line


def test_the_size_check_reads_no_header_past_the_file_or_the_cap(tmp_path: Path) -> None:
    """The pre-flight size check reads the declared header length whatever it is."""
    notes = _text_file_named_safetensors(tmp_path / "notes.safetensors")
    with pytest.raises(preflight.PreflightError, match="header"):
        preflight.model_size(str(notes))
    huge = _sparse_safetensors(tmp_path / "huge.safetensors", 150 * 2**20, 200 * 2**20)
    with pytest.raises(preflight.PreflightError, match="150 MB header"):
        preflight.model_size(str(huge))


def test_a_single_file_base_reads_no_header_past_the_cap(tmp_path: Path) -> None:
    """The single-file loader read any header that fits in the file, however large."""
    from engine.models import load_base

    huge = _sparse_safetensors(tmp_path / "huge.safetensors", 150 * 2**20, 200 * 2**20)
    with pytest.raises(ModelLoadError, match="150 MB header"):
        load_base(huge, device="cpu")


def test_a_user_error_is_one_line_that_names_the_log_holding_its_traceback(tmp_path: Path) -> None:
    """A missing photo path ended in a ``FileNotFoundError`` traceback and exit status 1."""
    ProjectStore(tmp_path / "home").create("anna")
    done = _run(tmp_path, "prepare", "anna", "missing.jpg", "--role", "source")
    line = _assert_one_clean_line(done)
    log = tmp_path / "home" / "logs" / "cli.log"
    assert "missing.jpg" in line and str(log) in line, line
    text = log.read_text("utf-8")
    assert "Traceback" in text and "PhotoFileError" in text and "prepare anna missing.jpg" in text


def test_a_second_resume_of_a_running_run_is_one_line(tmp_path: Path) -> None:
    """``train --resume`` of a run that another process trains ended in a ``TrainingError`` traceback."""
    project = ProjectStore(tmp_path / "home").create("anna")
    run = project.path("trainings", "run-1")
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    state = {"config": preset("fast").to_dict(), "phase": 1, "step": 1}
    (run / "checkpoints" / "step-1" / "state.json").write_text(json.dumps(state))
    project.update(lambda manifest: manifest["trainings"].append({"id": "run-1", "status": "running"}))
    with FileLock(str(run / ".lock"), timeout=0):
        done = _run(tmp_path, "train", "anna", "--resume")
    line = _assert_one_clean_line(done)
    assert "run-1 is already running" in line, line


def test_a_bug_is_one_line_that_names_the_log(
    isolated_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Any other exception escaped ``main`` as a raw traceback."""

    def broken(args: object) -> None:
        raise RuntimeError("an internal mistake")

    monkeypatch.setattr(commands, "cmd_projects", broken)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["projects", "list"])
    assert stopped.value.code not in (0, 2, None)
    [line] = capsys.readouterr().err.splitlines()
    log = isolated_home / "logs" / "cli.log"
    assert "RuntimeError" in line and "an internal mistake" in line and str(log) in line, line
    assert "Traceback" in log.read_text("utf-8")


def test_the_log_is_moved_aside_once_it_is_full(isolated_home: Path, capsys: pytest.CaptureFixture) -> None:
    log = isolated_home / "logs" / "cli.log"
    log.parent.mkdir(parents=True)
    log.write_text("x" * (cli.LOG_LIMIT + 1))
    with pytest.raises(SystemExit):
        cli.main(["projects", "delete", "nobody"])
    assert (isolated_home / "logs" / "cli.log.1").stat().st_size == cli.LOG_LIMIT + 1
    assert "nobody" in log.read_text("utf-8") and log.stat().st_size < cli.LOG_LIMIT
    assert str(log) in capsys.readouterr().err


def test_every_engine_error_class_is_a_user_error_of_the_command() -> None:
    """An engine error that is not a user error (a `UserError`) would be reported as a bug."""
    classes = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
                classes.append((f"{path.name}:{node.name}", node.name, bases))
    known = {"UserError"}
    while True:  # a subclass of a user error is one too
        grown = known | {name for _, name, bases in classes if bases & known}
        if grown == known:
            break
        known = grown
    missing = [
        where
        for where, name, bases in classes
        if ("Exception" in bases or any(base.endswith("Error") for base in bases)) and name not in known
    ]
    assert not missing, missing


def test_user_errors_are_told_from_bugs() -> None:
    from studio.jobs import is_user_error

    assert is_user_error(preflight.PreflightError("x")) and not is_user_error(KeyError("step"))
    assert isinstance(preflight.PreflightError("x"), UserError)


def test_a_prepare_whose_photos_are_all_refused_leaves_no_new_project(tmp_path: Path) -> None:
    """``prepare`` created the project before looking at the photos and kept it when all were refused."""
    (tmp_path / "note.jpg").write_text("not an image")
    done = _run(tmp_path, "prepare", "newcomer", "note.jpg", "--role", "source")
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stderr
    store = ProjectStore(tmp_path / "home")
    assert store.list() == [] and not (store.projects_dir / "newcomer").exists()
    assert "refused note.jpg" in done.stdout
    assert "newcomer" in done.stderr.splitlines()[-1] and "not created" in done.stderr.splitlines()[-1]

    store.create("anna")
    done = _run(tmp_path, "prepare", "anna", "note.jpg", "--role", "source")
    assert done.returncode == 2 and store.list() == ["anna"], done.stderr


def test_projects_repair_rebuilds_a_manifest_that_does_not_parse(tmp_path: Path) -> None:
    """The command had no ``projects repair`` action."""
    store = ProjectStore(tmp_path / "home")
    manifest = store.create("anna").root / "manifest.json"
    manifest.write_text("{ not json")
    done = _run(tmp_path, "projects", "repair", "anna")
    assert done.returncode == 0, done.stderr
    assert "anna" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert json.loads(manifest.read_text("utf-8"))["name"] == "anna"
