"""SDXL, the second model family: the tiny SDXL of the demo kit, its loading and its prompt states."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config

from engine.families.sdxl import END_ID, SDXL, SDXL_CONFIG, open_clip_ids
from engine.models import load_base, make_pipeline, safetensors_header


def test_the_tiny_single_file_has_the_sdxl_layout_and_the_folders_weights(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    keys = set(safetensors_header(tiny_sdxl.single_file))
    for name in (
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        "first_stage_model.decoder.up.0.block.0.conv1.weight",
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
        "conditioner.embedders.1.model.positional_embedding",
        "conditioner.embedders.1.model.text_projection",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
    ):
        assert name in keys
    folder = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl.folder, add_watermarker=False)
    single = StableDiffusionXLPipeline.from_single_file(
        str(tiny_sdxl.single_file), config=str(tiny_sdxl.folder), local_files_only=True, add_watermarker=False
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        expected, loaded = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert loaded.keys() == expected.keys(), name
        assert all(torch.equal(loaded[k], expected[k]) for k in expected), name
    assert single.tokenizer_2.pad_token == "!" and single.tokenizer.pad_token == "<|endoftext|>"


@pytest.fixture(scope="module")
def base(tiny_sdxl):
    return load_base(tiny_sdxl.folder)


def test_the_loader_gives_both_tokenizers_and_encoders_from_the_folder_and_the_single_file(tiny_sdxl, base):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    single = load_base(tiny_sdxl.single_file, config=tiny_sdxl.folder)
    for loaded in (base, single):
        assert loaded.family is SDXL
        assert isinstance(loaded.text_encoder, CLIPTextModel)
        assert isinstance(loaded.text_encoder_2, CLIPTextModelWithProjection)
        assert (loaded.tokenizer.pad_token, loaded.tokenizer_2.pad_token) == ("<|endoftext|>", "!")
        assert not any(p.requires_grad for p in loaded.text_encoder_2.parameters())
    weights = single.text_encoder_2.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in base.text_encoder_2.state_dict().items())


PROMPTS = ["a photo of a person", "portrait, " * 40, ""]


def test_the_second_encoder_reads_the_prompt_as_its_own_tokenizer_pads_it(base):
    ids = base.tokenizer(PROMPTS, padding="max_length", truncation=True, return_tensors="pt").input_ids
    own = base.tokenizer_2(PROMPTS, padding="max_length", truncation=True, return_tensors="pt").input_ids
    assert not torch.equal(ids, own)
    assert torch.equal(open_clip_ids(ids), own)


def test_prompt_states_are_the_sdxl_pipelines_and_condition_the_unet(base):
    ids = base.tokenizer(PROMPTS, padding="max_length", truncation=True, return_tensors="pt").input_ids
    encoders = [base.text_encoder, base.text_encoder_2]
    with torch.no_grad():
        states = SDXL.encode_prompt(encoders, ids, resolution=64)
        native = SDXL.encode_prompt(encoders, ids)
        expected, _, pooled, _ = make_pipeline(base).encode_prompt(
            PROMPTS, device="cpu", do_classifier_free_guidance=False
        )
    width = base.text_encoder.config.hidden_size + base.text_encoder_2.config.hidden_size
    assert states.hidden_states.shape == (3, 77, width) == (3, 77, base.unet.config.cross_attention_dim)
    assert torch.allclose(states.hidden_states, expected) and torch.allclose(
        states.added_cond["text_embeds"], pooled
    )
    assert states.added_cond["text_embeds"].shape == (3, base.text_encoder_2.config.projection_dim)
    assert states.added_cond["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 3
    assert native.added_cond["time_ids"][0].tolist() == [1024, 1024, 0, 0, 1024, 1024]

    noisy = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = [
            base.unet(noisy, torch.tensor([500] * 3), s.hidden_states, added_cond_kwargs=s.added_cond).sample
            for s in (states, native)
        ]
    assert out[0].shape == noisy.shape and torch.isfinite(out[0]).all()
    assert not torch.allclose(out[0], out[1]), "the size ids do not reach the UNet"


def test_the_pooled_embedding_is_read_at_the_end_token_when_a_placeholder_is_added(tiny_sdxl):
    """SDXL's configs carry CLIP's legacy end id 2, with which transformers pools at the highest
    token id: a placeholder token's (49408) instead of the end token's."""
    base = load_base(tiny_sdxl.folder)
    for tokenizer in (base.tokenizer, base.tokenizer_2):
        tokenizer.add_tokens(["<sks>"])
    for encoder in (base.text_encoder, base.text_encoder_2):
        encoder.resize_token_embeddings(len(base.tokenizer), mean_resizing=False)
    ids = base.tokenizer(["a photo of <sks> person"], padding="max_length", return_tensors="pt").input_ids
    end = int((ids[0] == base.tokenizer.eos_token_id).nonzero()[0])
    with torch.no_grad():
        states = SDXL.encode_prompt([base.text_encoder, base.text_encoder_2], ids)
        last = base.text_encoder_2(open_clip_ids(ids)).last_hidden_state
        at_end = base.text_encoder_2.text_projection(last[:, end])
    assert torch.allclose(states.added_cond["text_embeds"], at_end)


def test_the_shipped_configs_are_sdxl_1_0_and_its_ar_maps_are_32x32_at_1024px():
    """SDXL 1.0's shapes, on the meta device (no weights): the 2048-wide context, the 1280-wide
    pooled embedding and six size ids fit the UNet, and the AR layers' maps are 32x32 at 1024 px."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from engine.attention import AttentionStore, install_capture

    with torch.device("meta"):
        clip_l = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG / "text_encoder"))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL_CONFIG / "text_encoder_2"))
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SDXL_CONFIG / "unet"))
        ids = torch.full((1, 77), END_ID)
        states = SDXL.encode_prompt([clip_l, clip_g], ids)
        assert states.hidden_states.shape == (1, 77, 2048)
        assert states.added_cond["text_embeds"].shape == (1, 1280)
        store = AttentionStore()
        names = install_capture(unet, store, SDXL)
        store.start()
        latent = SDXL.native_resolution // 8
        out = unet(
            torch.zeros(1, 4, latent, latent),
            torch.tensor([10]),
            states.hidden_states,
            added_cond_kwargs=states.added_cond,
        )
        store.stop()
    assert out.sample.shape == (1, 4, 128, 128)
    assert len(names) == 50 and {n.split(".attentions.")[0] for n in names} == {
        "down_blocks.2",
        "up_blocks.0",
    }
    side = SDXL.ar_map_size(1024)
    assert side == 32 and store.token_maps(torch.tensor([1])).shape == (1, 50 * 20, side, side)


def test_the_placeholder_tokens_get_rows_in_both_encoders_and_only_those_rows_train(tiny_sdxl):
    from engine.tokens import add_placeholder_tokens, add_placeholder_tokens_to_base

    base = load_base(tiny_sdxl.folder)
    config = tiny_config(tiny_sdxl.folder)
    person = {
        name: getattr(base, name).get_input_embeddings().weight[ids].clone()
        for name, ids in (
            ("text_encoder", base.tokenizer.encode("person", add_special_tokens=False)),
            ("text_encoder_2", base.tokenizer_2.encode("person", add_special_tokens=False)),
        )
    }
    embeddings = add_placeholder_tokens_to_base(base, config)
    assert embeddings.keys() == {"text_encoder", "text_encoder_2"}
    tokens = [config.identity_token, config.style_token]
    ids = base.tokenizer.convert_tokens_to_ids(tokens)
    assert base.tokenizer_2.convert_tokens_to_ids(tokens) == ids == embeddings["text_encoder_2"].token_ids
    for name, width in (("text_encoder", 32), ("text_encoder_2", 64)):
        rows = embeddings[name].rows
        assert rows.shape == (2, width) and torch.equal(rows[0], person[name][0])
        assert getattr(base, name).get_input_embeddings() is embeddings[name]
    # The first encoder's rows are what SD 1.x draws from the same seed; the second's follow on.
    sd1_like = add_placeholder_tokens(
        type(base.tokenizer).from_pretrained(tiny_sdxl.folder / "tokenizer"),
        type(base.text_encoder).from_pretrained(tiny_sdxl.folder / "text_encoder"),
        config,
    )
    assert torch.equal(embeddings["text_encoder"].rows, sd1_like.rows)
    assert not torch.equal(embeddings["text_encoder_2"].rows[1, :32], embeddings["text_encoder"].rows[1])

    prompt = f"a photo of a {config.identity_token} person in the style of {config.style_token}"
    input_ids = base.tokenizer([prompt], padding="max_length", return_tensors="pt").input_ids
    trainable = [
        p for name in SDXL.text_encoders for p in getattr(base, name).parameters() if p.requires_grad
    ]
    assert {id(p) for p in trainable} == {id(e.rows) for e in embeddings.values()}
    before = {name: e.merged_weight() for name, e in embeddings.items()}
    optimiser = torch.optim.SGD(trainable, lr=1.0)
    states = SDXL.encode_prompt([base.text_encoder, base.text_encoder_2], input_ids)
    (states.hidden_states.square().mean() + states.added_cond["text_embeds"].square().mean()).backward()
    for embedding in embeddings.values():
        assert embedding.rows.grad is not None and (embedding.rows.grad.abs().sum(-1) > 0).all()
    optimiser.step()
    for name, embedding in embeddings.items():
        changed = (embedding.merged_weight() != before[name]).any(-1).nonzero().flatten().tolist()
        assert changed == ids, name


@pytest.mark.slow
def test_ar_gradient_reaches_the_unet_lora_with_gradient_checkpointing(tiny_sdxl):
    """As for SD 1.x: the AR layers' maps keep their graph under (non-reentrant) checkpointing."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model

    from engine.attention import AttentionStore, install_capture, refocusing_loss

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl.folder / "unet")
    torch.manual_seed(0)
    lora = LoraConfig(
        r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v"]
    )
    inject_adapter_in_model(lora, unet)
    with torch.no_grad():  # non-zero B, as after some training
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    store = AttentionStore()
    names = install_capture(unet, store, SDXL)
    generator = torch.Generator().manual_seed(0)
    size, width = unet.config.sample_size, unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    latents = torch.randn(2, 4, size, size, generator=generator)
    states = torch.randn(2, 77, width, generator=generator)
    added = {
        "text_embeds": torch.randn(2, pooled, generator=generator),
        "time_ids": torch.tensor([[64.0] * 2 + [0] * 2 + [64] * 2] * 2),
    }
    target = torch.zeros(2, size, size)
    target[:, 2:6, 2:6] = 1

    def ar_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        unet.zero_grad(set_to_none=True)
        unet.enable_gradient_checkpointing() if checkpointing else unet.disable_gradient_checkpointing()
        store.start()
        unet(latents, torch.tensor([10, 700]), states, added_cond_kwargs=added)
        store.stop()
        refocusing_loss(store.token_maps(torch.tensor([5, 5])), target).mean().backward()
        return {n: p.grad.clone() for n, p in unet.named_parameters() if "lora_" in n and p.grad is not None}

    checkpointed = ar_grads(True)
    assert any(block.gradient_checkpointing for block in unet.down_blocks)
    first_ar_layer = names[0].removesuffix("processor") + "to_k"
    in_ar_layers = [n for n in checkpointed if n.startswith(first_ar_layer)]
    assert in_ar_layers and all(checkpointed[n].abs().sum() > 0 for n in in_ar_layers)
    plain = ar_grads(False)
    assert checkpointed.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-7)


def test_a_single_file_loads_offline_with_the_shipped_configs_and_tokenizers(
    tiny_sdxl, base, tmp_path, monkeypatch
):
    """Without ``config`` the loader reads the family's own configs (the tiny model's stand in for
    assets/sdxl, whose SDXL 1.0 shapes the tiny weights do not fit) and builds both tokenizers from
    SD 1.5's vocabulary files, with no tokenizer folders."""
    import shutil

    import engine.families.sdxl as sdxl

    configs = tmp_path / "configs"
    shutil.copytree(tiny_sdxl.folder, configs, ignore=shutil.ignore_patterns("*.safetensors", "tokenizer*"))
    monkeypatch.setattr(sdxl, "SDXL_CONFIG", configs)
    single = load_base(tiny_sdxl.single_file)
    assert single.family is SDXL and (single.tokenizer_2.pad_token, single.tokenizer.pad_token) == (
        "!",
        "<|endoftext|>",
    )
    for tokenizer in ("tokenizer", "tokenizer_2"):
        ids = [
            getattr(loaded, tokenizer)(PROMPTS, padding="max_length", truncation=True).input_ids
            for loaded in (base, single)
        ]
        assert ids[0] == ids[1], tokenizer
    weights = single.unet.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in base.unet.state_dict().items())
