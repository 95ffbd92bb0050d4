"""The code's shape (issue 14): small modules with one job, short functions.

No module of ``engine/`` runs over `MODULE_LINES` unless its docstring states why (a line starting
"Long because"), and no function anywhere over `FUNCTION_LINES`, except the studio's tab ``build``
functions, which are Gradio layout code: one statement per widget, read top to bottom.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_LINES = 400
FUNCTION_LINES = 80
LAYOUT_FUNCTIONS = {"build"}
"""Function names allowed to be long in ``studio/``: the tabs' Gradio layouts."""


def _sources(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def test_engine_modules_are_small_or_say_why():
    long = []
    for path in _sources("engine"):
        text = path.read_text()
        lines = len(text.splitlines())
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MODULE_LINES and "Long because" not in docstring:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, "modules over the limit with no reason in their docstring:\n" + "\n".join(long)


def test_functions_are_short_outside_gradio_layouts():
    long = []
    for path in [*_sources("engine", "studio", "bench"), ROOT / "app.py"]:
        layout = path.is_relative_to(ROOT / "studio")
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > FUNCTION_LINES and not (layout and node.name in LAYOUT_FUNCTIONS):
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "functions over the limit:\n" + "\n".join(long)
