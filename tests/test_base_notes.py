"""What the loader chose about a base model (`BaseModel.notes`, e.g. SDXL's VAE under fp16) reaches
the user: as a Status event of the training, and as a loading stage of generation."""

from __future__ import annotations

import dataclasses

import pytest
from fixtures_training import tiny_face_kit
from tiny import tiny_config

NOTE = "SDXL in fp16: the fp16-fix VAE is not in the Hugging Face cache; the VAE decodes in fp32."


@pytest.fixture
def noted_loader(monkeypatch):
    """`engine.models.load_base` whose bases carry `NOTE`, and no kept base from an earlier test."""
    import engine.models
    from engine.generate import loading

    real = engine.models.load_base
    monkeypatch.setattr(
        engine.models,
        "load_base",
        lambda *args, **kwargs: dataclasses.replace(real(*args, **kwargs), notes=(NOTE,)),
    )
    loading._BASES.clear()
    yield
    loading._BASES.clear()


def test_a_training_says_what_the_loader_chose(isolated_home, tiny_sd, noted_loader):
    from engine.demo.portraits import make_project
    from engine.events import Status
    from engine.training import train

    events = []
    config = tiny_config(tiny_sd.folder, phase1_steps=1, phase2_steps=1)
    train(make_project(isolated_home), config, face_kit=tiny_face_kit(), on_event=events.append)
    assert NOTE in [event.message for event in events if isinstance(event, Status)]


def test_generation_says_it_when_it_loads_the_base_and_not_again(lora, noted_loader):
    from engine.artefact import load_artefact
    from engine.generate.loading import loaded

    said: list[str] = []
    artefact = load_artefact(lora.path)
    with loaded(artefact, on_status=said.append):
        pass
    assert NOTE in said
    said.clear()
    with loaded(artefact, on_status=said.append):
        pass
    assert NOTE not in said, "the kept base was not loaded again"
