"""The installed packages are exactly the ones ``constraints.txt`` pins, the set CI tests.

Both README commands install with ``-c constraints.txt``; these tests fail, naming each package,
when the environment has drifted from the file or the file no longer covers what the app needs.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
APP = "magicapture-studio"


def read_pins(text: str) -> dict[str, str]:
    """``name==version`` lines (comments and blank lines skipped), by canonical name."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"constraints.txt: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def resolved(app: str, extras: tuple[str, ...]) -> dict[str, str]:
    """Every installed distribution that ``app[extras]`` requires, directly or not: name -> who requires it."""
    found: dict[str, str] = {}
    queue = [(canonicalize_name(app), extras)]
    while queue:
        name, wanted = queue.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({"extra": e}) for e in ("", *wanted)):
                continue
            child = canonicalize_name(requirement.name)
            if child not in found:
                found[child] = name
                queue.append((child, tuple(requirement.extras)))
            elif requirement.extras:
                queue.append((child, tuple(requirement.extras)))
    return found


def mismatches(pins: dict[str, str], needed: dict[str, str]) -> list[str]:
    """One line per package the app needs whose installed version is not its pin, or that has no pin."""
    lines = []
    for name, parent in sorted(needed.items()):
        installed = metadata.version(name)
        pinned = pins.get(name)
        if pinned is None:
            lines.append(
                f"{name}: installed {installed} (required by {parent}), not pinned in constraints.txt"
            )
        elif not SpecifierSet(f"=={pinned}").contains(installed, prereleases=True):
            lines.append(f"{name}: installed {installed}, pinned {pinned}")
    return lines


def test_the_installed_versions_are_the_pinned_ones() -> None:
    pins = read_pins(CONSTRAINTS.read_text("utf-8"))
    needed = resolved(APP, ("test",))
    assert "transformers" in needed and "peft" in needed and "torch" in needed
    problems = mismatches(pins, needed)
    assert not problems, (
        "The environment differs from constraints.txt (install with -c constraints.txt):\n"
        + ("\n".join(problems))
    )


def test_a_mismatch_names_the_package_with_both_versions() -> None:
    """The check itself: a pin other than the installed version, and a missing pin, are each named."""
    installed = metadata.version("transformers")
    pins = {"transformers": "0.0.1", "peft": metadata.version("peft")}
    problems = mismatches(pins, {"transformers": APP, "peft": APP, "torch": APP})
    assert problems[0] == "torch: installed " + metadata.version("torch") + (
        f" (required by {APP}), not pinned in constraints.txt"
    )
    assert problems[1] == f"transformers: installed {installed}, pinned 0.0.1"
    assert len(problems) == 2


def test_the_scripts_install_with_the_constraints() -> None:
    """Both README commands pass ``-c constraints.txt`` to every pip install of the app and torch."""
    for script in ("scripts/test.sh", "scripts/studio.sh"):
        installs = [
            line
            for line in (ROOT / script).read_text("utf-8").splitlines()
            if "pip install" in line and "--upgrade pip" not in line
        ]
        assert len(installs) == 2, (script, installs)
        assert all("-c constraints.txt" in line for line in installs), (script, installs)
