"""Model families: the generic loader picks each family's tiny model and the family answers for it."""

from __future__ import annotations

import pytest
import torch

from engine.families import FAMILIES, UnsupportedModel, detect_family, family_named
from engine.families.sd1 import SD1
from engine.families.sdxl import SDXL
from engine.models import ModelLoadError, load_base

EXPECTED = {
    "sd1": {
        "ar_layers": [f"down_blocks.2.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(2)]
        + [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(3)],
        "map_size": {512: 16, 64: 2},
        "kohya_prefixes": {"unet": "lora_unet_", "text_encoder": "lora_te_"},
        "text_encoders": ("text_encoder",),
    },
    "sdxl": {
        "ar_layers": [
            f"{block}.attentions.{i}.transformer_blocks.{j}.attn2.processor"
            for block, attentions in (("down_blocks.2", 2), ("up_blocks.0", 3))
            for i in range(attentions)
            for j in range(3)  # the tiny SDXL's depth at this level (SDXL 1.0: 10)
        ],
        "map_size": {1024: 32, 64: 2},
        "kohya_prefixes": {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"},
        "text_encoders": ("text_encoder", "text_encoder_2"),
    },
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def tiny(request, tmp_path_factory):
    """Each family's tiny model, built by the family."""
    family = FAMILIES[request.param]
    return family, family.build_tiny(tmp_path_factory.mktemp(f"tiny-{family.name}"))


def test_every_family_has_expectations():
    assert set(EXPECTED) == set(FAMILIES)


@pytest.mark.parametrize("layout", ["folder", "single_file"])
def test_the_loader_picks_the_family_and_the_family_answers_for_its_model(tiny, layout):
    family, built = tiny
    expected = EXPECTED[family.name]
    base = load_base(getattr(built, layout), config=built.folder if layout == "single_file" else None)
    assert base.family is family and family_named(family.name) is family
    assert family.ar_layer_names(base.unet) == expected["ar_layers"]
    assert {r: family.ar_map_size(r) for r in expected["map_size"]} == expected["map_size"]
    assert dict(family.kohya_prefixes) == expected["kohya_prefixes"]
    assert family.text_encoders == expected["text_encoders"]


def test_the_ar_maps_have_the_size_the_family_reports(tiny):
    from engine.attention import AttentionStore, install_capture

    family, built = tiny
    base = load_base(built.folder)
    store = AttentionStore()
    assert install_capture(base.unet, store, family) == EXPECTED[family.name]["ar_layers"]
    size = base.unet.config.sample_size
    ids = base.tokenizer("a photo", padding="max_length", return_tensors="pt").input_ids
    encoders = [getattr(base, name) for name in family.text_encoders]
    store.start()
    with torch.no_grad():
        states = family.encode_prompt(encoders, ids)
        noisy = torch.zeros(1, 4, size, size)
        base.unet(noisy, torch.tensor([10]), states.hidden_states, added_cond_kwargs=states.added_cond)
    store.stop()
    side = family.ar_map_size(size * 8)
    assert store.token_maps(torch.tensor([1])).shape[-2:] == (side, side)


def test_sd1_prompt_states_are_the_text_encoders_last_hidden_states(tiny_sd):
    base = load_base(tiny_sd.folder)
    ids = base.tokenizer(["a photo"], padding="max_length", return_tensors="pt").input_ids
    states = SD1.encode_prompt([base.text_encoder], ids)
    assert states.added_cond is None
    assert torch.equal(states.hidden_states, base.text_encoder(ids)[0])
    assert SD1.latent_scale(base.vae) == base.vae.config.scaling_factor


def test_sd1_lora_targets_follow_the_config():
    targets = SD1.lora_target_modules(["to_q", "ff.net.0.proj"], ["q_proj"], cross_attention_only=False)
    assert targets == {"unet": ["to_q", "ff.net.0.proj"], "text_encoder": ["q_proj"]}
    only = SD1.lora_target_modules(
        ["to_q", "to_out.0", "ff.net.0.proj"], ["q_proj"], cross_attention_only=True
    )
    assert only["unet"] == r".*attn2\.(to_q|to_out\.0)"


SDXL_KEYS = [
    "model.diffusion_model.input_blocks.0.0.weight",
    "first_stage_model.encoder.conv_in.weight",
    "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
    "conditioner.embedders.1.model.ln_final.weight",
]


def test_sdxl_tensor_names_and_unet_configs_are_detected_as_sdxl():
    assert detect_family("sdxl.safetensors", keys=SDXL_KEYS) is SDXL
    assert (
        detect_family("xl", unet_config={"cross_attention_dim": 2048, "addition_embed_type": "text_time"})
        is SDXL
    )
    assert (
        detect_family("xl", unet_config={"cross_attention_dim": 96, "addition_embed_type": "text_time"})
        is SDXL
    )
    with pytest.raises(UnsupportedModel, match="is not a model of a known family"):
        detect_family("xl", unet_config={"cross_attention_dim": 2048})


def test_an_sdxl_refiner_is_refused_by_name():
    refiner_keys = [
        "model.diffusion_model.input_blocks.0.0.weight",
        "conditioner.embedders.0.model.ln_final.weight",
    ]
    with pytest.raises(
        UnsupportedModel, match="refiner.safetensors is a Stable Diffusion XL refiner checkpoint; "
    ):
        detect_family("refiner.safetensors", keys=refiner_keys)
    config = {"cross_attention_dim": 1280, "addition_embed_type": "text_time"}
    with pytest.raises(UnsupportedModel, match="Use an SDXL base model"):
        detect_family("refiner", unet_config=config)


def test_the_loader_refuses_an_sdxl_refiner_file_clearly(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "xl-refiner.safetensors"
    keys = ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.model.ln_final.weight"]
    save_file({key: torch.zeros(1) for key in keys}, str(path))
    with pytest.raises(
        ModelLoadError, match="xl-refiner.safetensors is a Stable Diffusion XL refiner checkpoint"
    ):
        load_base(path)


def test_sdxl_lora_targets_cover_both_text_encoders():
    targets = SDXL.lora_target_modules(
        ["to_q", "to_out.0", "ff.net.0.proj"], ["q_proj"], cross_attention_only=True
    )
    assert targets == {
        "unet": r".*attn2\.(to_q|to_out\.0)",
        "text_encoder": ["q_proj"],
        "text_encoder_2": ["q_proj"],
    }


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            ["cond_stage_model.model.ln_final.weight"],
            "Stable Diffusion 2.x checkpoint; only SD 1.x and SDXL are supported",
        ),
        (["double_blocks.0.img_attn.qkv.weight"], "Flux/SD3 checkpoint"),
        (
            ["lora_unet_down_blocks_0.lora_down.weight"],
            r"not a full SD 1.x checkpoint \(no model.diffusion_model.",
        ),
    ],
)
def test_other_files_are_named_and_refused(keys, message):
    with pytest.raises(UnsupportedModel, match=message):
        detect_family("model.safetensors", keys=keys)


def test_a_pickle_file_is_taken_as_the_default_family_and_an_unknown_name_is_refused():
    assert detect_family("model.ckpt") is SD1
    with pytest.raises(UnsupportedModel, match="Unknown model family 'flux'"):
        family_named("flux")
