"""The gallery and the client (issue 16): proof links a client can reach, portraits numbered once,
one tile per portrait, readable details, run names, and the Project tab's delete."""

from __future__ import annotations

import gradio as gr
import pytest

from engine.store import ProjectStore


@pytest.fixture
def studio(tmp_path):
    from studio.state import Studio

    return Studio(ProjectStore(tmp_path))


def test_delete_without_the_box_ticked_warns_and_changes_nothing(studio):
    from studio.project import on_confirm_delete, on_delete

    studio.store.create("Jane Doe headshots")
    with pytest.warns(UserWarning, match="Tick the box"):
        picker, pending = on_confirm_delete(studio, "Jane Doe headshots", False)
    # nothing is sent back (no red "Error" badge on the box) and the project stays
    assert isinstance(picker, type(gr.skip())) and pending is None
    assert on_delete(studio, pending)[0] == gr.skip()
    assert studio.store.list() == ["Jane Doe headshots"]


def test_delete_empties_the_picker_before_its_choices_lose_the_name(studio):
    """Timers send the picker's value every second: one still carrying the deleted name must not meet
    choices without it ("Value: ... is not in the list of choices")."""
    from studio.project import on_confirm_delete, on_delete

    studio.store.create("Jane Doe headshots")
    studio.store.create("Ben's wedding")
    picker, pending = on_confirm_delete(studio, "Jane Doe headshots", True)
    assert picker.value is None and "choices" not in picker.constructor_args
    assert studio.store.list() == ["Ben's wedding", "Jane Doe headshots"]
    picker, box, pending = on_delete(studio, pending)
    assert picker.choices == [("Ben's wedding", "Ben's wedding")]
    assert picker.value is None and box is False and pending is None
    assert studio.store.list() == ["Ben's wedding"]
