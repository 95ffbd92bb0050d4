"""SDXL loose ends: the config's help names both families, SDXL's VAE encodes in fp32 without the
fp16-fix VAE, a base of unknown family is said to be unknown, a demo generation's files."""

from __future__ import annotations

import dataclasses

from engine.config import TrainingConfig


def _help(name: str) -> str:
    return {item.name: item for item in dataclasses.fields(TrainingConfig)}[name].metadata["help"]


def test_the_base_model_help_names_both_families():
    text = _help("base_model")
    assert "SD 1.x" in text and "SDXL" in text
    assert "hub id" in text and "folder" in text and ".safetensors" in text
    assert "1024" in _help("resolution") and "512" in _help("resolution")
    assert "encoders" in _help("train_text_encoder")
