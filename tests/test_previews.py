"""Previews judge what generation will give (issue 15, item 3)."""

from __future__ import annotations

import pytest
from fixtures_training import demo_face_kit
from tiny import tiny_config

from engine.demo.portraits import make_project
from engine.generate import GenerationSettings
from engine.models import load_base


def test_previews_sample_at_generations_lora_strengths_and_negative_prompt(
    isolated_home, tiny_sd, tmp_path, monkeypatch
):
    """Previews (and the checkpoint picked by their scores) used LoRA strength 1.0 and no negative prompt."""
    from peft.tuners.lora import LoraLayer

    import engine.models
    from engine.training import phase_two_trainer
    from engine.training.previews import preview

    project = make_project(isolated_home, embedding_dim=512)
    config = tiny_config(tiny_sd.folder, phase1_steps=0, preview_steps=2)
    trainer = phase_two_trainer(
        project, config, base=load_base(tiny_sd.folder), face_kit=demo_face_kit(tmp_path), run="p"
    )
    unet_layer = next(m for m in trainer.base.unet.modules() if isinstance(m, LoraLayer))
    text_layer = next(m for m in trainer.base.text_encoder.modules() if isinstance(m, LoraLayer))
    trained = (unet_layer.scaling["default"], text_layer.scaling["default"])
    seen = {}
    real = engine.models.make_pipeline

    class Spy:
        def __init__(self, pipe):
            self.pipe = pipe

        def set_progress_bar_config(self, **kwargs):
            self.pipe.set_progress_bar_config(**kwargs)

        def __call__(self, *args, **kwargs):
            seen.update(kwargs, scales=(unet_layer.scaling["default"], text_layer.scaling["default"]))
            return self.pipe(*args, **kwargs)

    monkeypatch.setattr(engine.models, "make_pipeline", lambda *a, **k: Spy(real(*a, **k)))
    preview(trainer, 2, 1)
    settings = GenerationSettings()
    assert seen["negative_prompt"] == [settings.negative_prompt] * len(config.preview_seeds)
    assert seen["scales"] == pytest.approx(
        (trained[0] * settings.unet_lora_scale, trained[1] * settings.text_lora_scale)
    )
    assert (
        unet_layer.scaling["default"],
        text_layer.scaling["default"],
    ) == trained  # training goes on at 1.0
