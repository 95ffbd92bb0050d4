from __future__ import annotations

import dataclasses
import json

import pytest

from engine.config import MEMORY_FIELDS, PRESETS, ConfigError, TrainingConfig, preset


def test_released_preset_has_the_authors_effective_values():
    config = preset("released")
    assert (config.phase1_steps, config.phase2_steps) == (1200, 1500)
    assert (config.phase1_lr, config.phase2_unet_lr, config.phase2_text_lr, config.phase2_embedding_lr) == (
        2e-3,
        4e-4,
        4e-5,
        1e-4,
    )
    assert (config.phase1_max_timestep, config.phase2_max_timestep) == (1000, 800)
    assert (config.phase2_weight_decay, config.max_grad_norm, config.gradient_accumulation_steps) == (
        1e-3,
        1.0,
        1,
    )
    assert (config.ar_weight, config.identity_weight, config.style_weight) == (2.5, 0.25, 2.0)
    assert (config.lora_rank, config.lora_alpha, config.lora_init) == (4, 4.0, "gaussian")
    assert config.identity_on_source and config.embedding_norm_pull and config.embedding_norm_target == 0.4
    assert config == TrainingConfig()


def test_paper_and_fast_presets():
    paper = preset("paper")
    assert paper.gradient_accumulation_steps == 4 and paper.phase1_lr == 5e-4 and paper.phase2_unet_lr == 1e-4
    assert paper.identity_weight == 1.0 and not paper.identity_on_source and paper.lora_cross_attention_only
    assert paper.preset == "paper"
    fast = preset("fast")
    assert fast.phase1_steps + fast.phase2_steps < 1200 + 1500


def test_overrides_and_json_round_trip():
    config = preset("paper", phase2_steps=10, task_mix=[2.0, 1.0, 1.0], mixed_precision="bf16")
    assert config.phase2_steps == 10 and config.gradient_accumulation_steps == 4
    again = TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert config.replace(seed=5).seed == 5 and config.seed == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"phase1_steps": -1}, "phase1_steps must be between 0 and 100000"),
        ({"phase2_unet_lr": 2.0}, "phase2_unet_lr must be between 0 and 1"),
        ({"lora_rank": True}, "lora_rank must be an integer"),
        ({"ar_weight": float("nan")}, "ar_weight must be a finite number"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"vram_profile": "4gb"}, "vram_profile must be one of"),
        ({"resolution": 100}, "multiple of 8"),
        ({"style_token": "<sks>"}, "must differ"),
        ({"identity_token": "two words"}, "one word"),
        ({"task_mix": [1.0, 1.0]}, "three non-negative weights"),
        ({"phase1_steps": 0, "phase2_steps": 0}, "at least one phase"),
        ({"lora_text_targets": "q_proj"}, "must be a list of strings"),
        ({"colour": 1}, "Unknown training setting"),
    ],
)
def test_out_of_range_values_are_refused_with_the_allowed_range(changes, message):
    with pytest.raises(ConfigError, match=message):
        preset("released", **changes)


def test_unknown_preset_is_refused():
    with pytest.raises(ConfigError, match="choose one of released, paper, fast"):
        preset("turbo")


def test_every_field_is_documented_and_presets_name_real_fields():
    fields = {item.name: item for item in dataclasses.fields(TrainingConfig)}
    assert all(item.metadata.get("help", "").endswith(".") for item in fields.values())
    assert all(set(values) <= fields.keys() for values in PRESETS.values())
    assert set(MEMORY_FIELDS) <= fields.keys()


def test_an_unknown_device_is_refused_by_the_config_itself():
    """The studio and the API build configs too: the device is checked where every setting is."""
    with pytest.raises(ConfigError, match=r"device must be auto, cpu, cuda, cuda:N or mps \(got 'quantum'\)"):
        preset(device="quantum")
    assert preset(device="cuda:1").device == "cuda:1"
