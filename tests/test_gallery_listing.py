"""The Gallery's listing follows the project picker, and only a change of project lists again: Gradio
fires the picker's change event again and again for the same project, and each listing sent the saved
proof choice back over the portraits the photographer had just ticked."""

from __future__ import annotations

import gradio as gr
import pytest
from test_gallery_ux import add_outputs


@pytest.fixture
def studio(tmp_path):
    from engine.store import ProjectStore
    from studio.state import Studio

    return Studio(ProjectStore(tmp_path / "data"))


def test_the_picker_changing_to_the_listed_project_leaves_the_ticks_alone(studio):
    from studio.gallery import LISTING, on_project

    ids = add_outputs(studio.store.create("anna"), 2)
    add_outputs(studio.store.create("ben"), 1)

    *listing, listed = on_project(studio, "anna", "identity", None)
    assert listed == "anna" and len(listing) == LISTING
    assert sorted(value for _, value in listing[3].choices) == sorted(ids)
    assert listing[3].value == []  # nothing published yet

    again = on_project(studio, "anna", "identity", listed)
    assert again[-1] == "anna"
    assert all(update == gr.skip() for update in again[:-1])

    *other, listed = on_project(studio, "ben", "identity", listed)
    assert listed == "ben" and len(other[3].choices) == 1
    *none, listed = on_project(studio, None, "identity", listed)
    assert listed is None and none[3].choices == []


def test_a_visit_of_the_tab_or_another_sort_keeps_the_unpublished_ticks(studio):
    from studio.gallery import on_project, relist

    ids = add_outputs(studio.store.create("anna"), 3)
    *_, listed = on_project(studio, "anna", "identity", None)
    ticked = [ids[2], ids[0]]  # what the photographer ticked, nothing published

    for order in ("identity", "seed"):
        listing = relist(studio, "anna", order, ticked, listed)
        assert sorted(value for _, value in listing[3].choices) == sorted(ids)
        assert listing[3].value == ticked
    # a portrait gone from the listing is no longer ticked; another project's listing starts from its own
    assert relist(studio, "anna", "identity", [*ticked, "gone"], listed)[3].value == ticked
    add_outputs(studio.store.create("ben"), 1)
    assert relist(studio, "ben", "identity", ticked, listed)[3].value == []
