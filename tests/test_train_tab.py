"""The Train tab follows the project picker, and only a change of project draws it again: Gradio's
browser code fires the picker's change event again and again with the same project (a burst as tabs
open and update), and each firing read the project's run, photos and pre-flight estimate afresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pytest

import studio.train
from engine.store import ProjectStore
from studio.state import Studio


@pytest.fixture
def tab(tmp_path: Path) -> Studio:
    studio = Studio(ProjectStore(tmp_path / "data"))
    studio.store.create("anna")
    studio.store.create("ben")
    return studio


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the expensive reads the Train tab makes, one entry a call."""
    calls: list[str] = []
    for name in ("latest_view", "estimate_text"):
        real = getattr(studio.train, name)

        def counted(*args: Any, _real=real, _name=name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(studio.train, name, counted)
    return calls


def picker_handlers(blocks: gr.Blocks) -> tuple[Any, list[Any]]:
    """The project picker and the Train tab's handlers of its change event."""
    picker = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "project-picker")
    handlers = [
        block_fn
        for block_fn in blocks.fns.values()
        if (picker._id, "change") in block_fn.targets and block_fn.fn.__module__ == "studio.train"
    ]
    return picker, handlers


def skipped(value: Any) -> bool:
    """Whether ``value`` is Gradio's "send nothing" (`gr.skip`)."""
    return isinstance(value, dict) and value == gr.skip()


def fire(handler: Any, picker: Any, name: str | None, states: dict[int, Any]) -> list[Any]:
    """Call ``handler`` as Gradio does for the picker showing ``name``: the other inputs at their
    values, the session's states as its last handlers left them (updated from the outputs)."""
    values = [name if block is picker else states.get(block._id, block.value) for block in handler.inputs]
    result = handler.fn(*values)
    result = list(result) if len(handler.outputs) > 1 else [result]
    for block, value in zip(handler.outputs, result, strict=True):
        if isinstance(block, gr.State) and not skipped(value):
            states[block._id] = value
    return result


def test_a_refired_change_of_the_same_project_leaves_the_train_tab_alone(tab, work):
    from studio.app import build

    picker, handlers = picker_handlers(build(tab))
    assert handlers, "the Train tab no longer follows the project picker"
    states: dict[int, Any] = {}

    for handler in handlers:
        fire(handler, picker, "anna", states)
    assert "latest_view" in work and "estimate_text" in work
    work.clear()

    for handler in handlers:
        again = fire(handler, picker, "anna", states)
        sent = [block for block, value in zip(handler.outputs, again, strict=True) if not skipped(value)]
        assert all(isinstance(block, gr.State) for block in sent), f"{handler.name} drew the tab again"
    assert work == [], "a re-fired change of the same project read the project again"

    for handler in handlers:
        fire(handler, picker, "ben", states)
    assert "latest_view" in work and "estimate_text" in work, "another project was not drawn"


def test_the_handler_draws_another_project_and_skips_the_one_shown(tab, work):
    from studio.train import ADVANCED, LiveView, on_project

    settings = ("fast", "auto", *[None] * len(ADVANCED))
    *drawn, estimate, shown = on_project(tab, "anna", None, *settings)
    assert shown == "anna" and len(drawn) == len(LiveView._fields)
    assert "**0** selfie(s)" in LiveView(*drawn).ready and "estimate" in estimate.lower()
    assert work == ["estimate_text", "latest_view"]
    work.clear()

    *again, shown = on_project(tab, "anna", "anna", *settings)
    assert shown == "anna" and all(skipped(value) for value in again)
    assert work == []

    *drawn, _, shown = on_project(tab, "ben", "anna", *settings)
    assert shown == "ben" and LiveView(*drawn).seen[0] == "ben"
    assert work == ["estimate_text", "latest_view"]
