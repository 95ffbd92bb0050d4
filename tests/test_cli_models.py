"""``magicapture models list`` says per model whether it is missing, real weights, or one of the demo
kit's stand-ins (random weights in the real format): the kit's asset folder carries the
``DEMO_STANDIN`` marker that `engine.faces` recognises it by."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import cli
from engine.assets import REGISTRY

STANDIN = "demo stand-in (random weights)"
REAL = "real weights"


def listing(capsys: pytest.CaptureFixture) -> dict[str, str]:
    """``magicapture models list``, in this process: each asset's row by name."""
    cli.main(["models", "list"])
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        name = line.split(" ", 1)[0]
        if name in REGISTRY:
            rows[name] = line
    assert set(rows) == set(REGISTRY), rows
    return rows


def test_the_demo_kits_models_are_listed_as_stand_ins(
    assets_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    """The face stand-ins of the demo kit: each present one says so; the rest are missing."""
    rows = listing(capsys)
    for name in ("buffalo_l", "bisenet", "yunet", "sface"):
        assert STANDIN in rows[name] and REAL not in rows[name], rows[name]
    for name in ("gfpgan_v1.4", "codeformer"):  # not among the face stand-ins
        assert "missing" in rows[name] and STANDIN not in rows[name], rows[name]


def test_under_the_demo_kit_the_licence_notice_says_the_stand_ins_have_no_terms(
    assets_copy: Path, capsys: pytest.CaptureFixture
) -> None:
    from engine.assets.registry import DEMO_STANDINS_LEAD

    cli.main(["models", "list"])
    [notice] = [line for line in capsys.readouterr().out.splitlines() if "These model weights" in line]
    assert notice.startswith(DEMO_STANDINS_LEAD) and "buffalo_l" in notice, notice


def test_a_model_in_a_users_own_folder_is_listed_as_real_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A cache without the demo marker holds what the user downloaded or imported."""
    folder = tmp_path / "assets"
    folder.mkdir()
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(folder))
    (folder / REGISTRY["bisenet"].filename).write_bytes(b"weights the user put here")
    rows = listing(capsys)
    assert REAL in rows["bisenet"] and STANDIN not in rows["bisenet"], rows["bisenet"]
    assert all("missing" in row for name, row in rows.items() if name != "bisenet"), rows
