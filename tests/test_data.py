from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from engine.config import preset
from engine.data import (
    REFERENCE_TEMPLATES,
    SOURCE_TEMPLATES,
    DataError,
    TrainingData,
    composed_prompt,
    flip_points,
    jitter,
    load_images,
    source_identity,
)
from engine.demo.portraits import CROP, make_project


@pytest.fixture
def project(isolated_home):
    return make_project(isolated_home)


@pytest.fixture
def tokenizer(tiny_sd):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd.folder / "tokenizer")
    tokenizer.add_tokens(["<sks>", "<style1>"])
    return tokenizer


def test_load_images_resizes_photos_masks_and_points(project):
    images = load_images(project, 64)
    assert Counter(image.role for image in images) == {"source": 2, "reference": 2}
    entry = project.manifest()["images"][0]
    first = images[0]
    assert first.pixels.shape == (3, 64, 64) and first.pixels.min() >= -1 and first.pixels.max() <= 1
    assert set(first.face.unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(first.landmarks, torch.tensor(entry["landmarks"]) * 64 / CROP)
    assert first.embedding.shape == (16,)


def test_a_project_without_references_is_refused(isolated_home):
    project = make_project(isolated_home, references=0)
    with pytest.raises(DataError, match="no accepted reference photos"):
        load_images(project, 64)


def test_templates_and_the_composed_prompt():
    assert len(SOURCE_TEMPLATES) == 10 and len(REFERENCE_TEMPLATES) == 7
    assert composed_prompt("<sks>", "<style1>") == "a photo of a <sks> person in the style of <style1>"


def test_source_identity_is_the_normalised_mean(project):
    images = load_images(project, 64)
    sources = torch.stack([i.embedding for i in images if i.role == "source"])
    expected = sources.mean(0) / sources.mean(0).norm()
    torch.testing.assert_close(source_identity(images), expected)


def test_draws_mix_kinds_templates_and_views_per_step(project, tokenizer):
    data = TrainingData(load_images(project, 64), preset(latent_cache_variants=4), tokenizer)
    data.views = [[None] * 4 for _ in data.images]  # draws only need the number of views
    rng = random.Random(0)
    phase1 = [data.draw(rng, 1) for _ in range(600)]
    assert {s.kind for s in phase1} == {"source", "reference"}
    phase2 = Counter(data.draw(rng, 2).kind for _ in range(3000))
    assert all(900 < phase2[kind] < 1100 for kind in ("source", "reference", "composed"))
    draws = [data.draw(rng, 2) for _ in range(300)]
    assert len({(s.kind, s.template) for s in draws}) == 10 + 7 + 10
    assert {s.view for s in draws} == {0, 1, 2, 3}
    assert all(data.images[s.image].role == ("source" if s.kind == "source" else "reference") for s in draws)


def test_flip_points_swaps_sides_and_is_an_involution():
    landmarks = torch.tensor([[10.0, 20.0], [30.0, 21.0], [20.0, 30.0], [12.0, 40.0], [28.0, 41.0]])
    box = torch.tensor([5.0, 10.0, 35.0, 50.0])
    flipped, flipped_box = flip_points(landmarks, box, 64)
    assert flipped[0, 0] < flipped[1, 0]  # the eye on the left is still listed first
    torch.testing.assert_close(flipped[0], torch.tensor([63 - 30.0, 21.0]))
    torch.testing.assert_close(flipped_box, torch.tensor([29.0, 10.0, 59.0, 50.0]))
    back, back_box = flip_points(flipped, flipped_box, 64)
    torch.testing.assert_close(back, landmarks)
    torch.testing.assert_close(back_box, box)


def test_jitter_with_unit_factors_changes_nothing():
    pixels = torch.rand(3, 8, 8) * 2 - 1
    torch.testing.assert_close(jitter(pixels, 1.0, 1.0, 1.0), pixels)
    assert not torch.allclose(jitter(pixels, 1.1, 0.9, 1.1), pixels)


def test_cache_and_batches_follow_the_method(project, tokenizer, tiny_sd):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sd.folder / "vae")
    config = preset(resolution=64, latent_cache_variants=2)
    data = TrainingData(load_images(project, 64), config, tokenizer)
    data.build_cache(vae, torch.device("cpu"), torch.float32)
    assert [[v.flip for v in views] for views in data.views] == [[False, True]] * 4
    for image, views in zip(data.images, data.views, strict=True):
        torch.testing.assert_close(
            views[0].face, F.interpolate(image.face[None], size=(8, 8), mode="nearest")[0]
        )
        flipped = F.interpolate(image.face.flip(-1)[None], size=(8, 8), mode="nearest")[0]
        torch.testing.assert_close(views[1].face, flipped)  # the mask flips with the image
        torch.testing.assert_close(views[1].landmarks[0, 0], 63 - image.landmarks[1, 0])

    source = data.by_role["source"][0]
    reference = data.by_role["reference"][0]
    from engine.data import Sample

    samples = [
        Sample("source", source, 0, 0),
        Sample("reference", reference, 2, 1),
        Sample("composed", reference, 3, 0),
    ]
    batch = data.batch(samples, 0.18215, ("source", "composed"), torch.Generator().manual_seed(0))
    faces = [data.views[source][0].face, data.views[reference][1].face, data.views[reference][0].face]
    assert batch.latents.shape == (3, 4, 8, 8)
    torch.testing.assert_close(batch.recon_masks, torch.stack([faces[0], 1 - faces[1], 1 - faces[2]]))
    sks, style = data.token_ids["<sks>"], data.token_ids["<style1>"]
    assert batch.ar_rows.tolist() == [0, 1, 2, 2]
    assert [int(batch.input_ids[r, p]) for r, p in zip(batch.ar_rows, batch.ar_positions, strict=True)] == [
        sks,
        style,
        sks,
        style,
    ]
    expected_targets = torch.stack([faces[0][0], 1 - faces[1][0], faces[2][0], 1 - faces[2][0]])
    torch.testing.assert_close(batch.ar_targets, expected_targets)
    assert batch.identity_rows.tolist() == [0, 2]
    torch.testing.assert_close(batch.landmarks[1], data.views[reference][0].landmarks)
    again = data.batch(samples, 0.18215, (), torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.latents, batch.latents)  # the latent draw follows the generator


def test_no_latent_cache_encodes_a_fresh_augmented_view_per_sample(project, tokenizer, tiny_sd):
    """``latent_cache_variants=0`` is documented as "encode every step"; it used to crash in `draw`."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sd.folder / "vae")
    config = preset(resolution=64, latent_cache_variants=0, flip_probability=0.5)
    data = TrainingData(load_images(project, 64), config, tokenizer)
    data.build_cache(vae, torch.device("cpu"), torch.float32)
    rng = random.Random(0)
    samples = [data.draw(rng, 2) for _ in range(24)]
    assert len({s.view for s in samples}) == 24  # each sample its own view
    views = [data.view(s) for s in samples]
    assert {v.flip for v in views} == {False, True}
    assert data.view(samples[0]).mean.equal(views[0].mean)  # a view follows its seed
    batch = data.batch(samples[:3], 0.18215, ("source", "composed"), torch.Generator().manual_seed(0))
    assert batch.latents.shape == (3, 4, 8, 8)
    assert not batch.latents[0].equal(batch.latents[1])
