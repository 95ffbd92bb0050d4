"""engine.metrics on hand-made embeddings, a hand-computed aesthetic head and the tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_metrics import pattern

from engine import metrics
from engine.assets import AssetMissing
from engine.demo.scoring import TINY_CLIP_DIM, TINY_HEAD_WIDTHS

DIFFERENT = 1e-4
"""The random tiny CLIP maps all images close together; different images still differ by more than this."""


def test_csim_of_identical_embeddings_is_one_and_of_orthogonal_ones_zero():
    face = np.array([0.3, -1.2, 0.5, 2.0])
    assert metrics.csim(face[None], face[None]) == pytest.approx(1.0)
    assert metrics.csim(face[None], 5 * face[None]) == pytest.approx(1.0)  # scale does not matter
    assert metrics.csim(np.array([[1.0, 0.0]]), np.array([[0.0, 3.0]])) == pytest.approx(0.0)
    assert metrics.csim(np.array([[1.0, 0.0]]), np.array([[-2.0, 0.0]])) == pytest.approx(-1.0)


def test_csim_is_the_mean_over_all_generated_source_pairs():
    generated = np.array([[1.0, 0.0], [0.0, 1.0]])
    sources = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    # Pairs: (1, 1/sqrt2, 0) and (0, 1/sqrt2, -1).
    expected = (1 + 2 / np.sqrt(2) + 0 + 0 - 1) / 6
    assert metrics.csim(generated, sources) == pytest.approx(expected)
    assert metrics.pairwise_cosine(generated, sources).shape == (2, 3)


def test_cosine_needs_embeddings_on_both_sides():
    with pytest.raises(ValueError, match="at least one"):
        metrics.csim(np.zeros((0, 4)), np.ones((2, 4)))


def test_style_similarity_averages_over_references():
    generated = np.array([[1.0, 0.0, 0.0]])
    references = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert metrics.style_similarity(generated, references) == pytest.approx(0.5)


def test_mask_out_paints_only_the_masked_pixels():
    image = pattern(1, 16)
    mask = np.zeros((16, 16), bool)
    mask[4:8, 2:10] = True
    out = metrics.mask_out(image, mask)
    assert (out[mask] == metrics.MASK_FILL).all()
    assert np.array_equal(out[~mask], image[~mask])
    assert np.array_equal(image, pattern(1, 16))  # the input is not modified
    assert np.array_equal(metrics.mask_out(image, None), image)


def _hand_head_state() -> dict[str, torch.Tensor]:
    """A 2-2-2-2-2-1 head: identity, +[1, 0], x2, identity, then sum + 0.5."""
    eye = torch.eye(2)
    return {
        "layers.0.weight": eye.clone(),
        "layers.0.bias": torch.zeros(2),
        "layers.2.weight": eye.clone(),
        "layers.2.bias": torch.tensor([1.0, 0.0]),
        "layers.4.weight": 2 * eye,
        "layers.4.bias": torch.zeros(2),
        "layers.6.weight": eye.clone(),
        "layers.6.bias": torch.zeros(2),
        "layers.7.weight": torch.ones(1, 2),
        "layers.7.bias": torch.tensor([0.5]),
    }


def test_aesthetic_head_gives_the_hand_computed_score(tmp_path):
    path = tmp_path / "head.pth"
    torch.save(_hand_head_state(), path)
    head = metrics.load_aesthetic_head(path)
    # [3, 4] normalises to [0.6, 0.8] -> [1.6, 0.8] -> [3.2, 1.6] -> 3.2 + 1.6 + 0.5;
    # [0, -2] normalises to [0, -1] -> [1, -1] -> [2, -2] -> 0 + 0.5.
    scores = metrics.aesthetic_score(np.array([[3.0, 4.0], [30.0, 40.0], [0.0, -2.0]]), head)
    assert scores == pytest.approx([5.3, 5.3, 0.5])
    again = metrics.aesthetic_score(np.array([[3.0, 4.0]]), head)
    assert again == pytest.approx([5.3])  # dropout is off


def test_aesthetic_head_keeps_the_published_layout():
    head = metrics.build_aesthetic_head(_hand_head_state())
    layers = head["layers"]
    assert [type(m).__name__ for m in layers] == [
        "Linear",
        "Dropout",
        "Linear",
        "Dropout",
        "Linear",
        "Dropout",
        "Linear",
        "Linear",
    ]
    assert [layers[i].p for i in (1, 3, 5)] == [0.2, 0.2, 0.1]
    assert set(head.state_dict()) == set(_hand_head_state())


def test_aesthetic_head_refuses_foreign_or_unsafe_files(tmp_path):
    incomplete = {k: v for k, v in _hand_head_state().items() if not k.startswith("layers.6")}
    torch.save(incomplete, tmp_path / "incomplete.pth")
    with pytest.raises(metrics.MetricsModelError, match="layers.6"):
        metrics.load_aesthetic_head(tmp_path / "incomplete.pth")
    torch.save({"layers": torch.nn.Linear(2, 1)}, tmp_path / "pickled-module.pth")  # needs full unpickling
    with pytest.raises(metrics.MetricsModelError, match="fresh download"):
        metrics.load_aesthetic_head(tmp_path / "pickled-module.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(metrics.MetricsModelError, match="not a state dict"):
        metrics.load_aesthetic_head(tmp_path / "tensor.pth")


def test_aesthetic_head_comes_from_the_asset_cache(tiny_scoring, monkeypatch, tmp_path):
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(tiny_scoring.aesthetic.parent))
    head = metrics.load_aesthetic_head()
    assert head["layers"][0].in_features == TINY_CLIP_DIM
    assert head["layers"][7].out_features == TINY_HEAD_WIDTHS[-1]
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(tmp_path / "empty"))
    with pytest.raises(AssetMissing):
        metrics.load_aesthetic_head()


@pytest.fixture(scope="module")
def clip(tiny_scoring):
    return metrics.load_clip(tiny_scoring.clip, device="cpu")


def test_tiny_clip_loads_like_the_real_one(clip, tiny_scoring):
    assert clip.dim == TINY_CLIP_DIM
    assert clip.dtype == torch.float32
    assert type(clip.model).__name__ == "CLIPVisionModelWithProjection"
    assert (tiny_scoring.clip / "model.safetensors").is_file()


def test_default_clip_is_the_asset_cache_copy_else_the_hub(tiny_scoring, monkeypatch, tmp_path):
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(tiny_scoring.clip.parent))
    assert metrics.clip_source() == str(tiny_scoring.clip)
    assert metrics.load_clip(device="cpu").dim == TINY_CLIP_DIM
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(tmp_path))
    assert metrics.clip_source() == metrics.DEFAULT_CLIP


def test_missing_clip_offline_names_the_model_and_the_remedy(monkeypatch, tmp_path):
    monkeypatch.setenv("MAGICAPTURE_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(
        metrics.MetricsModelError,
        match="clip-vit-large-patch14.*Connect to the internet.*in .*clip-vit-large-patch14",
    ):
        metrics.load_clip(metrics.DEFAULT_CLIP, device="cpu")


def test_identical_images_have_style_one_and_different_images_less(clip):
    embeds = metrics.clip_embeddings(clip, [pattern(1), pattern(1), pattern(2)])
    assert embeds.shape == (3, TINY_CLIP_DIM)
    assert metrics.style_similarity(embeds[:1], embeds[1:2]) == pytest.approx(1.0)
    assert metrics.style_similarity(embeds[:1], embeds[2:3]) < 1 - DIFFERENT


def test_masked_faces_change_the_style_embedding_only_through_the_masked_area(clip):
    face = np.zeros((128, 128), bool)
    face[32:96, 40:88] = True
    base = pattern(3)
    other_face = base.copy()
    other_face[face] = pattern(4)[face]
    other_background = base.copy()
    other_background[~face] = pattern(5)[~face]
    masked = [metrics.mask_out(image, face) for image in (base, other_face, other_background)]
    embeds = metrics.clip_embeddings(clip, masked)
    assert metrics.style_similarity(embeds[:1], embeds[1:2]) == pytest.approx(1.0)
    assert metrics.style_similarity(embeds[:1], embeds[2:3]) < 1 - DIFFERENT
    unmasked = metrics.clip_embeddings(clip, [base, other_face])
    assert metrics.style_similarity(unmasked[:1], unmasked[1:2]) < 1 - DIFFERENT


def test_clip_embeddings_batch_and_accept_any_array_layout(clip):
    images = [pattern(seed, 64) for seed in range(5)]
    whole = metrics.clip_embeddings(clip, images)
    batched = metrics.clip_embeddings(clip, images, batch_size=2)
    np.testing.assert_allclose(whole, batched, atol=1e-5)
    flipped = metrics.clip_embeddings(clip, [images[0][::-1]])  # negative strides
    np.testing.assert_allclose(flipped, metrics.clip_embeddings(clip, [images[0][::-1].copy()]), atol=1e-6)
    assert metrics.clip_embeddings(clip, []).shape == (0, TINY_CLIP_DIM)
