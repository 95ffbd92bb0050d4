from __future__ import annotations

import cv2
import numpy as np
import pytest
from fixtures_faces import astronaut, face_at
from fixtures_outputs import add_photo_output
from PIL import Image

from engine.faces import Face, FaceKit, face_mask
from engine.faces.fallback import EllipseParser, HaarDetector
from engine.outputs import read_parameters
from engine.postprocess import (
    CROP_BOX,
    FFHQ_TEMPLATE,
    PostprocessError,
    align_face,
    feather_mask,
    load_model,
    paste_face,
    postprocess_output,
    restore_crop,
    upscale_image,
)


@pytest.fixture
def project():
    from engine.store import ProjectStore

    return ProjectStore().create("alice")


@pytest.fixture(scope="module")
def restore_assets(tmp_path_factory):
    from engine.demo.restore import build_restore_assets

    return build_restore_assets(tmp_path_factory.mktemp("restore-assets"))


@pytest.fixture
def assets(restore_assets, monkeypatch):
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(restore_assets.gfpgan.parent))
    return restore_assets


@pytest.fixture(scope="module")
def kit() -> FaceKit:
    """Haar detection and elliptical masks: deterministic masks for the paste-back checks."""
    return FaceKit(HaarDetector(), EllipseParser(), None, fallbacks=("detector", "parser", "recogniser"))


def warped_mask(image_shape, face: Face) -> np.ndarray:
    """The feathered paste-back weight of ``face`` in image space, as `restore_faces` builds it."""
    crop, matrix = align_face(np.zeros(image_shape, np.uint8), face)
    crop_face = Face(CROP_BOX, FFHQ_TEMPLATE.copy(), 1.0)
    mask = feather_mask(face_mask(EllipseParser().parse(crop, crop_face)))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(mask, matrix, (image_shape[1], image_shape[0]), flags=flags, borderValue=0)


def test_upscaling_has_the_right_size_and_tiles_without_seams(restore_assets):
    image = cv2.GaussianBlur(
        np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8), (0, 0), 3
    )
    for path, scale, overlap in (
        (restore_assets.realesrgan_x4, 4, 24),
        (restore_assets.realesrgan_x2, 2, 40),
    ):
        model = load_model(path)
        assert (model.architecture.id, model.scale) == ("ESRGAN", scale)
        whole = upscale_image(image, model, tile=1024)
        assert whole.shape == (48 * scale, 64 * scale, 3)
        # Each tile sees more context than the network's reach, so tiling changes nothing.
        assert np.array_equal(upscale_image(image, model, tile=16, overlap=overlap), whole)
    assert not np.array_equal(upscale_image(image, model, tile=16, overlap=0), whole)


def test_paste_back_changes_only_pixels_inside_the_feathered_mask():
    noise = np.random.default_rng(1).integers(0, 255, (300, 260, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(noise, (0, 0), 3)  # smooth, so resampling to the crop and back is near-exact
    turn = np.deg2rad(10)
    similarity = 0.3 * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    landmarks = (FFHQ_TEMPLATE @ similarity.T + [60, 40]).astype(np.float32)
    face = Face((60, 40, 220, 200), landmarks, 0.9)
    crop, matrix = align_face(image, face)
    assert crop.shape == (512, 512, 3)
    aligned = matrix @ np.c_[landmarks, np.ones(5)].T
    assert np.allclose(aligned.T, FFHQ_TEMPLATE, atol=1e-2)  # the landmarks land on the FFHQ template

    binary = face_mask(EllipseParser().parse(crop, Face(CROP_BOX, FFHQ_TEMPLATE.copy(), 1.0)))
    soft = feather_mask(binary)
    assert soft[~binary].max() == 0 and soft.max() == 1
    assert ((soft > 0) & (soft < 1)).sum() > 1000  # a real feathered edge

    pasted = paste_face(image, 255 - crop, matrix, soft)
    weight = warped_mask(image.shape, face)
    assert np.array_equal(pasted[weight == 0], image[weight == 0])
    changed = np.any(pasted != image, axis=-1)
    assert changed.sum() > 2000 and weight[changed].min() > 0
    inside = weight > 0.99
    assert np.abs(pasted[inside].astype(int) - (255 - image[inside])).mean() < 2


@pytest.mark.slow
def test_codeformer_restores_an_aligned_crop_through_spandrel(restore_assets):
    model = load_model(restore_assets.codeformer)
    assert model.architecture.id == "CodeFormer"
    crop, _ = align_face(astronaut(), face_at(178, 69, 270, 161))
    restored = restore_crop(model, crop, fidelity=0.7)
    assert restored.shape == (512, 512, 3) and restored.dtype == np.uint8
    assert not np.array_equal(restored, crop)


@pytest.mark.slow
def test_gfpgan_with_upscaling_keeps_the_original_and_changes_only_the_face(project, assets, kit):
    photo = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    add_photo_output(project, photo, "photo", identity=0.42)
    record = postprocess_output(project, "photo", restore="gfpgan", upscale=2, face_kit=kit)

    assert (record.parent, record.raw, record.seed, record.run) == ("photo", "outputs/photo.png", 7, "run-1")
    assert record.params["postprocess"] == {
        "upscale": 2,
        "restore": "gfpgan",
        "identity_before": 0.42,
    }
    assert np.array_equal(np.asarray(Image.open(project.path("outputs/photo.png"))), photo)
    assert [e["id"] for e in project.manifest()["outputs"]] == ["photo", record.id]
    text = read_parameters(project.path(record.file))
    assert text.startswith("a photo of a <sks> person") and text.endswith(
        "Postprocess upscale by: 2, Postprocess upscaler: RealESRGAN x2plus, Face restoration: GFPGAN"
    )

    result = np.asarray(Image.open(project.path(record.file)))
    upscaled = upscale_image(photo, load_model(assets.realesrgan_x2))
    assert result.shape == (512, 512, 3)
    face = kit.detector.detect(photo)[0].transformed(2.0)
    weight = warped_mask(upscaled.shape, face)
    assert np.array_equal(result[weight == 0], upscaled[weight == 0])
    assert np.any(result[weight > 0.5] != upscaled[weight > 0.5])


def test_faces_are_restored_from_the_original_then_pasted_into_the_upscaled_image(
    project, assets, kit, monkeypatch
):
    """The restorer sees the original's aligned face, not Real-ESRGAN's; the paste lands in the upscaled frame."""
    from engine.postprocess import faces

    photo = cv2.resize(astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    add_photo_output(project, photo, "photo")
    seen = []

    def restorer(model, crop, *, fidelity):
        seen.append(crop.copy())
        return 255 - crop  # a "restoration" whose paste-back is easy to recognise

    monkeypatch.setattr(faces, "restore_crop", restorer)
    record = postprocess_output(project, "photo", restore="gfpgan", upscale=2, face_kit=kit)

    face = kit.detector.detect(photo)[0]
    (crop,) = seen
    assert np.array_equal(crop, align_face(photo, face)[0])  # the original's face
    upscaled = upscale_image(photo, load_model(assets.realesrgan_x2))
    _, matrix = align_face(upscaled, face.transformed(2.0))  # the landmarks scaled to the upscaled frame
    mask = feather_mask(face_mask(EllipseParser().parse(crop, Face(CROP_BOX, FFHQ_TEMPLATE.copy(), 1.0))))
    expected = paste_face(upscaled, 255 - crop, matrix, mask)
    result = np.asarray(Image.open(project.path(record.file)))
    assert result.shape == upscaled.shape
    assert np.abs(result.astype(int) - expected).max() <= 1


def test_passport_preset_from_an_output(project, assets, kit):
    add_photo_output(project, astronaut(), "photo")
    record = postprocess_output(project, "photo", preset="passport-eu", face_kit=kit)
    with Image.open(project.path(record.file)) as picture:
        assert picture.size == (827, 1063)
        assert picture.info["dpi"] == pytest.approx((600, 600), abs=0.01)
        assert picture.info["parameters"].endswith("Output preset: passport-eu")
    assert 0.50 <= record.params["postprocess"]["eye_line"] <= 0.70
    assert any("upscale the image first" in w for w in record.warnings)


def test_requests_are_checked_before_any_work(project, assets, kit):
    from engine.assets import NonCommercialAsset

    add_photo_output(project, np.full((64, 64, 3), 128, np.uint8), "blank")
    with pytest.raises(PostprocessError, match="gfpgan or codeformer"):
        postprocess_output(project, "blank", restore="vqfr", face_kit=kit)
    with pytest.raises(PostprocessError, match="Nothing to do"):
        postprocess_output(project, "blank", face_kit=kit)
    with pytest.raises(PostprocessError, match="x1, x2 or x4"):
        postprocess_output(project, "blank", upscale=3, face_kit=kit)
    with pytest.raises(PostprocessError, match="no output image 'gone'"):
        postprocess_output(project, "gone", restore="gfpgan", face_kit=kit)
    with pytest.raises(NonCommercialAsset):
        postprocess_output(project, "blank", restore="codeformer", commercial=True, face_kit=kit)
    with pytest.raises(PostprocessError, match="No face was found"):
        postprocess_output(project, "blank", preset="headshot-1024", face_kit=kit)
    record = postprocess_output(project, "blank", restore="gfpgan", face_kit=kit)
    assert record.warnings == ["No face was found in the image, so no face was restored."]


def test_a_face_larger_than_the_crop_is_area_averaged_into_it():
    """An SDXL headshot's face is about twice the FFHQ crop's: the crop averages its pixels instead of
    taking every other one (1-pixel stripes become grey, not one of their two colours)."""
    stripes = np.zeros((1024, 1024, 3), np.uint8)
    stripes[:, ::2] = 255
    face = Face((256, 256, 768, 768), FFHQ_TEMPLATE * 2, 0.9)  # the template at twice its size
    crop, matrix = align_face(stripes, face)
    assert np.allclose(matrix[:, :2], 0.5 * np.eye(2), atol=1e-4)
    aligned = matrix @ np.c_[face.landmarks, np.ones(5)].T
    assert np.allclose(aligned.T, FFHQ_TEMPLATE, atol=1e-2)
    inner = crop[16:-16, 16:-16].astype(float)
    assert abs(inner.mean() - 127.5) < 2 and inner.std() < 4


def test_an_sdxl_sized_output_is_restored_in_its_own_frame_without_upscaling(
    project, assets, kit, monkeypatch
):
    """A 1024 px output (SDXL's size) whose face is larger than the FFHQ crop's: the restorer sees the
    area-averaged aligned crop, the restored face goes back at its landmarks over the whole face, and
    nothing is upscaled."""
    from engine.postprocess import faces

    photo = cv2.resize(astronaut()[50:250, 130:330], (1024, 1024), interpolation=cv2.INTER_CUBIC)
    add_photo_output(project, photo, "sdxl")
    seen = []

    def restorer(model, crop, *, fidelity):
        seen.append(crop.copy())
        return 255 - crop

    monkeypatch.setattr(faces, "restore_crop", restorer)
    record = postprocess_output(project, "sdxl", restore="gfpgan", face_kit=kit)
    assert record.params["postprocess"] == {"restore": "gfpgan", "identity_before": None}
    assert (record.params["width"], record.params["height"]) == (1024, 1024)

    (face,) = kit.detector.detect(photo)
    crop, matrix = align_face(photo, face)
    assert np.hypot(matrix[0, 0], matrix[1, 0]) < 0.8  # the face is reduced into the crop
    assert np.array_equal(seen[0], crop)
    mask = feather_mask(face_mask(EllipseParser().parse(crop, Face(CROP_BOX, FFHQ_TEMPLATE.copy(), 1.0))))
    result = np.asarray(Image.open(project.path(record.file)))
    assert result.shape == photo.shape
    assert np.abs(result.astype(int) - paste_face(photo, 255 - crop, matrix, mask)).max() <= 1
    x1, y1, x2, y2 = face.bbox
    pasted = np.any(result != photo, axis=-1)
    assert pasted[round(y1) : round(y2), round(x1) : round(x2)].mean() > 0.6  # the face, at its size
