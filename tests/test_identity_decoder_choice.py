"""The identity branch's tiny decoder: each family's own TAESD unless the config names one."""

from __future__ import annotations

import dataclasses

import pytest
from fixtures_training import tiny_face_kit
from tiny import tiny_config

import engine.models
from engine.config import TrainingConfig, preset
from engine.demo.portraits import make_project
from engine.events import Status
from engine.families.sd1 import SD1
from engine.families.sdxl import SDXL
from engine.training import phase_two_trainer
from engine.training.identity_branch import identity_decoder_for

OLD_SD1_TAESD = "madebyollin/taesd"
"""The config's default before each family named its own (saved in older checkpoints and artefacts)."""


def test_each_family_names_the_taesd_of_its_latent_space():
    assert SDXL.tiny_decoder == "madebyollin/taesdxl"
    assert SD1.tiny_decoder == OLD_SD1_TAESD


@pytest.mark.parametrize("family", [SD1, SDXL], ids=["sd1", "sdxl"])
def test_the_default_config_takes_the_runs_familys_taesd_silently(family):
    events = []
    config = identity_decoder_for(preset(), family, events.append)
    assert (config.identity_decoder, config.tiny_decoder_model) == ("tiny", family.tiny_decoder)
    assert events == []


def test_sd1_s_taesd_set_on_an_sdxl_run_is_replaced_by_sdxl_s_and_said():
    events = []
    config = identity_decoder_for(preset(tiny_decoder_model=OLD_SD1_TAESD), SDXL, events.append)
    assert (config.identity_decoder, config.tiny_decoder_model) == ("tiny", "madebyollin/taesdxl")
    (status,) = events
    assert isinstance(status, Status)
    assert OLD_SD1_TAESD in status.message and "madebyollin/taesdxl" in status.message
    assert "SD 1.x" in status.message and "SDXL" in status.message


@pytest.mark.parametrize("family", [SD1, SDXL], ids=["sd1", "sdxl"])
def test_a_folder_or_the_familys_own_id_is_kept(family, tmp_path):
    for chosen in (str(tmp_path / "taesd"), family.tiny_decoder):
        events = []
        config = preset(tiny_decoder_model=chosen)
        assert identity_decoder_for(config, family, events.append) == config and events == []


def test_an_old_saved_config_with_sd1_s_taesd_resumes_unchanged():
    """Checkpoints and artefacts hold the whole config; older ones carry SD 1.x's TAESD by name."""
    saved = preset().to_dict() | {"tiny_decoder_model": OLD_SD1_TAESD}
    config = TrainingConfig.from_dict(saved)
    assert identity_decoder_for(config, SD1, pytest.fail) == config
    # An older SDXL run fell back to the VAE before it saved its config: it resumes with the VAE.
    old_sdxl = TrainingConfig.from_dict(saved | {"identity_decoder": "vae"})
    assert identity_decoder_for(old_sdxl, SDXL, pytest.fail) == old_sdxl


def test_a_family_without_a_taesd_decodes_with_the_vae_and_says_so():
    events = []
    family = dataclasses.replace(SDXL, tiny_decoder=None)
    config = identity_decoder_for(preset(), family, events.append)
    assert config.identity_decoder == "vae"
    assert len(events) == 1 and "VAE" in events[0].message


@pytest.fixture
def loads(monkeypatch, tiny_decoder):
    """The sources the identity branch asks `load_tiny_decoder` for; each loads the demo kit's TAESD."""
    asked = []
    load = engine.models.load_tiny_decoder

    def recorded(source, device, dtype):
        asked.append(str(source))
        return load(tiny_decoder, device, dtype)

    monkeypatch.setattr(engine.models, "load_tiny_decoder", recorded)
    return asked


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_sd", "tiny_sdxl"])
def test_a_run_with_the_default_decoder_loads_its_familys_taesd(model, loads, request, isolated_home):
    tiny = request.getfixturevalue(model)
    config = tiny_config(
        tiny.folder,
        phase1_steps=0,
        identity_decoder="tiny",
        tiny_decoder_model="",
        identity_fallback_landmarks=True,
    )
    trainer = phase_two_trainer(make_project(isolated_home), config, face_kit=tiny_face_kit())
    family = trainer.base.family
    assert loads == [family.tiny_decoder]
    assert trainer.identity.tiny_decoder is not None
    assert (trainer.config.identity_decoder, trainer.config.tiny_decoder_model) == (
        "tiny",
        family.tiny_decoder,
    )
