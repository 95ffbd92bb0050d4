"""Placeholder tokens become file names when a run's embeddings are exported
(``<project>-<word>.safetensors``): a token is refused at configuration time, with a sentence,
when its word cannot name a file, is too long in bytes, or folds onto the other token's word."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.artefact import save_artefact
from engine.config import ConfigError, TrainingConfig
from engine.store import InvalidName, ProjectStore, safe_name

CJK = "漢"
"""Three bytes in UTF-8."""
MAX_COMPONENT = 255


@pytest.mark.parametrize(
    ("tokens", "says"),
    [
        ({"identity_token": "<" + CJK * 30 + ">"}, "too long"),
        ({"style_token": "<" + "𠮷" * 20 + ">"}, "too long"),
        ({"identity_token": "<a!>", "style_token": "<a?>"}, "one file name"),
        ({"identity_token": "<..>"}, "cannot name an exported embedding file"),
    ],
    ids=["90 bytes", "80 bytes in four-byte letters", "same word", "no usable letters"],
)
def test_a_token_that_cannot_name_its_export_is_refused_at_configuration(tokens, says):
    with pytest.raises(ConfigError, match=says) as refused:
        TrainingConfig(**tokens)
    assert next(iter(tokens)) in str(refused.value)


def _longest_project() -> str:
    name = CJK
    while True:
        try:
            safe_name(name + CJK)
        except InvalidName:
            return name
        name += CJK


def _longest_token() -> str:
    """The longest run of CJK letters that a configuration takes as the identity token."""
    token = "<" + CJK + ">"
    for _ in range(100):  # none was refused before the byte limit: stop the search there
        longer = "<" + CJK * (len(token) - 1) + ">"
        try:
            TrainingConfig(identity_token=longer)
        except ConfigError:
            return token
        token = longer
    return token


def test_the_longest_token_exports_under_the_longest_project_name(tiny_sd):
    from engine.export import export_embeddings
    from engine.models import load_base

    identity = _longest_token()
    project = ProjectStore().create(_longest_project())
    hidden = load_base(tiny_sd.folder).text_encoder.get_input_embeddings().embedding_dim
    tokens = {"identity": identity, "style": "<style1>"}
    artefact = project.path("trainings", "run-1", "final.safetensors")
    artefact.parent.mkdir(parents=True)
    metadata = {
        "format": 1,
        "base_model": str(tiny_sd.folder),
        "run": "run-1",
        "tokens": tokens,
        "resolution": 64,
    }
    save_artefact(artefact, {}, {}, {token: torch.randn(hidden) for token in tokens.values()}, metadata)
    finished = {"id": "run-1", "status": "finished", "artefact": "trainings/run-1/final.safetensors"}
    project.update(lambda manifest: manifest["trainings"].append(finished))

    made = export_embeddings(project, "run-1")

    assert [path.suffix for path in made[:2]] == [".safetensors", ".safetensors"]
    assert all(Path(path).is_file() for path in made)
    assert max(len(path.name.encode("utf-8")) for path in made) <= MAX_COMPONENT
