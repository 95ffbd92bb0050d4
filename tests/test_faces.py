"""engine.faces: real insightface/OpenCV loading on tiny stand-ins, alignment, identity, parsing, fallback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_faces import astronaut, face_at, wheel_photo

from engine import assets
from engine.assets import STANDIN_MARKER
from engine.demo.faces import SCRFD_BOX, SCRFD_LANDMARKS
from engine.faces import (
    ARCFACE_TEMPLATE,
    Face,
    FaceModelError,
    FaceModelMissing,
    face_mask,
    load_face_kit,
    warp_to_arcface,
)
from engine.faces.align import similarity_matrices
from engine.faces.bisenet import BiSeNet
from engine.faces.detect import ScrfdDetector, YuNetDetector
from engine.faces.fallback import EllipseParser, HaarDetector
from engine.faces.identity import ArcFaceScorer, SFaceScorer, cosine
from engine.faces.parse import BiSeNetParser, crop_matrix


def bright_cell(height: int, width: int, cell: int, column: int, row: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell] = 255
    return image


def expected_scrfd_face(anchor: tuple[float, float], stride: float) -> tuple[np.ndarray, np.ndarray]:
    left, top, right, bottom = SCRFD_BOX
    x, y = anchor
    box = np.array([x - left * stride, y - top * stride, x + right * stride, y + bottom * stride])
    return box, np.array(anchor) + np.array(SCRFD_LANDMARKS) * stride


# Detection with the real insightface and OpenCV code on the stand-ins


def test_scrfd_standin_runs_through_insightface_and_decodes_a_known_face(face_assets: Path) -> None:
    from insightface.model_zoo import SCRFD

    detector = ScrfdDetector(face_assets / "buffalo_l" / "det_10g.onnx", providers=["CPUExecutionProvider"])
    assert isinstance(detector.model, SCRFD) and detector.model.use_kps and detector.model.fmc == 3

    faces = detector.detect(bright_cell(640, 640, 32, column=9, row=7))
    assert len(faces) == 1
    box, landmarks = expected_scrfd_face((9 * 32, 7 * 32), 32)
    np.testing.assert_allclose(faces[0].bbox, box, atol=1e-3)
    np.testing.assert_allclose(faces[0].landmarks, landmarks, atol=1e-3)
    assert faces[0].score > 0.99

    # insightface letterboxes a 1280x960 photo into 640x640 at scale 0.5 and maps the result back.
    faces = detector.detect(bright_cell(960, 1280, 64, column=9, row=7))
    assert len(faces) == 1
    box, landmarks = expected_scrfd_face((9 * 64, 7 * 64), 64)
    np.testing.assert_allclose(faces[0].bbox, box, atol=1e-2)
    np.testing.assert_allclose(faces[0].landmarks, landmarks, atol=1e-2)

    assert detector.detect(np.zeros((480, 640, 3), np.uint8)) == []


def test_yunet_standin_runs_through_opencv_and_decodes_a_known_face(face_assets: Path) -> None:
    detector = YuNetDetector(face_assets / "face_detection_yunet_2023mar.onnx")
    faces = detector.detect(bright_cell(640, 640, 32, column=9, row=7))
    assert len(faces) == 1
    # YuNet decodes centre (column + 0.5, row + 0.6) and size (3, 4.5) strides.
    cx, cy = 9.5 * 32, 7.6 * 32
    np.testing.assert_allclose(faces[0].bbox, [cx - 48, cy - 72, cx + 48, cy + 72], atol=1e-2)
    np.testing.assert_allclose(faces[0].landmarks, np.array(SCRFD_LANDMARKS) * 32 + [cx, cy], atol=1e-2)


def test_scrfd_loader_refuses_a_file_that_is_not_a_detector(face_assets: Path, tmp_path: Path) -> None:
    with pytest.raises(FaceModelError, match="not an SCRFD face detector"):
        ScrfdDetector(face_assets / "buffalo_l" / "w600k_r50.onnx")
    broken = tmp_path / "det_10g.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(FaceModelError, match="cannot be loaded"):
        ScrfdDetector(broken)


# Alignment


def test_similarity_fit_matches_insightface_estimate_norm() -> None:
    from insightface.utils.face_align import estimate_norm

    rng = np.random.default_rng(3)
    for _ in range(5):
        angle, scale, shift = rng.uniform(-0.5, 0.5), rng.uniform(0.5, 4), rng.uniform(-50, 300, 2)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        landmarks = (ARCFACE_TEMPLATE @ rotation.T + shift + rng.normal(0, 2, (5, 2))).astype(np.float32)
        ours = similarity_matrices(
            torch.from_numpy(landmarks)[None].double(), torch.from_numpy(ARCFACE_TEMPLATE).double()
        )
        np.testing.assert_allclose(ours[0].numpy(), estimate_norm(landmarks), rtol=1e-4, atol=1e-3)


def test_warp_to_arcface_matches_norm_crop_pixels() -> None:
    from insightface.utils.face_align import norm_crop

    image = astronaut()
    face = HaarDetector().detect(image)[0]
    # A tilted, partly off-image variant too: the black border must match.
    landmarks = np.stack(
        [face.landmarks, face.landmarks @ np.array([[0.96, 0.28], [-0.28, 0.96]]).T - [120, 60]]
    )
    batch = torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1).expand(2, -1, -1, -1)
    warped = warp_to_arcface(batch, torch.from_numpy(landmarks.astype(np.float32)))
    assert warped.shape == (2, 3, 112, 112) and warped.dtype == torch.float32
    for ours, points in zip(warped, landmarks, strict=True):
        reference = norm_crop(image, points.astype(np.float32)).astype(np.float32)
        pixels = (ours.permute(1, 2, 0).numpy() + 1) * 127.5
        assert np.abs(pixels - reference).mean() < 0.6
        assert np.abs(pixels - reference).max() < 6
    assert (warped[1] == -1).all(dim=0).float().mean() > 0.05  # off-image area is black


# Identity


def test_torch_recogniser_matches_onnx_and_sends_gradients_to_pixels(face_assets: Path) -> None:
    from insightface.model_zoo import ArcFaceONNX

    scorer = ArcFaceScorer(face_assets / "buffalo_l" / "w600k_r50.onnx", providers=["CPUExecutionProvider"])
    assert isinstance(scorer.model, ArcFaceONNX)
    assert (scorer.model.input_mean, scorer.model.input_std) == (127.5, 127.5) and scorer.dim == 512
    image = astronaut()
    face = HaarDetector().detect(image)[0]
    onnx_embedding = scorer.embed(image, face)
    assert onnx_embedding.shape == (512,) and np.isclose(np.linalg.norm(onnx_embedding), 1, atol=1e-5)

    model = scorer.identity_model()
    assert not any(p.requires_grad for p in model.parameters())
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1).requires_grad_(True)
    embedding = model(warp_to_arcface(pixels, torch.from_numpy(face.landmarks)[None]))
    assert embedding.shape == (1, 512)
    assert cosine(embedding[0].detach().numpy(), onnx_embedding) > 0.9999

    target = torch.from_numpy(scorer.embed(wheel_photo("Tom_Hanks_54745.png"), face_at(14, 16, 98, 100)))
    loss = 1 - torch.nn.functional.cosine_similarity(embedding, target[None]).mean()
    loss.backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    x1, y1, x2, y2 = (int(v) for v in face.bbox)
    w, h = x2 - x1, y2 - y1
    outside = pixels.grad.clone()
    outside[..., max(y1 - h, 0) : y2 + h, max(x1 - w, 0) : x2 + w] = 0
    assert outside.abs().sum() == 0  # only the face's surroundings receive gradient


def test_identity_model_stays_frozen_in_train_mode_and_runs_under_autocast(face_assets: Path) -> None:
    scorer = ArcFaceScorer(face_assets / "buffalo_l" / "w600k_r50.onnx")
    model = scorer.identity_model().train()
    assert not model.training and not model.network.training
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    aligned = torch.rand(2, 3, 112, 112) * 2 - 1
    reference = model(aligned)
    assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(aligned)
    assert mixed.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(mixed, reference).min() > 0.98


def test_sface_recogniser_in_opencv_and_in_torch_agree(face_assets: Path) -> None:
    scorer = SFaceScorer(face_assets / "face_recognition_sface_2021dec.onnx")
    assert scorer.dim == 128
    image = astronaut()
    face = HaarDetector().detect(image)[0]
    reference = scorer.embed(image, face)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(127.5).sub(1)
    embedding = scorer.identity_model()(warp_to_arcface(pixels, torch.from_numpy(face.landmarks)[None]))
    assert cosine(embedding[0].numpy(), reference) > 0.9999


# Parsing


def test_bisenet_parser_loads_the_state_dict_and_pastes_labels_back(face_assets: Path) -> None:
    parser = BiSeNetParser(face_assets / "79999_iter.pth", device="cpu")
    assert parser.network.cp.resnet.conv1.out_channels == 8  # width read from the weights

    class FaceEverywhere(torch.nn.Module):  # deterministic logits: class 1 (skin) over the whole crop
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 19, *x.shape[2:])
            logits[:, 1] = 1
            return logits

    image = astronaut()
    face = face_at(180, 70, 270, 160)
    random_labels = parser.parse(image, face)
    assert (
        random_labels.shape == image.shape[:2]
        and random_labels.dtype == np.uint8
        and random_labels.max() < 19
    )

    parser.network = FaceEverywhere()
    labels = parser.parse(image, face)
    ys, xs = np.nonzero(labels)
    # The crop is a square of twice the box around its centre, pasted back where it came from.
    assert xs.min() == pytest.approx(225 - 90, abs=1) and xs.max() == pytest.approx(225 + 90 - 1, abs=1)
    assert ys.min() == pytest.approx(115 - 90, abs=1) and ys.max() == pytest.approx(115 + 90 - 1, abs=1)
    assert face_mask(labels)[:70].any()  # face pixels above the detector box are kept
    np.testing.assert_allclose(crop_matrix(face, 2.0, 512) @ [225, 115, 1], [256, 256])


def test_full_size_bisenet_matches_the_published_checkpoint_shape() -> None:
    network = BiSeNet()
    state = network.state_dict()
    tensor_bytes = sum(v.numel() * v.element_size() for k, v in state.items() if "num_batches" not in k)
    assert tensor_bytes == 53_252_352  # 79999_iter.pth is 53,289,463 bytes: these tensors plus the zip
    # The published file has no num_batches_tracked entries in some copies and "module." in others.
    prefixed = {f"module.{k}": v for k, v in state.items() if "num_batches" not in k}
    loaded = BiSeNet.from_state_dict(prefixed)
    assert loaded.cp.resnet.conv1.out_channels == 64 and loaded.conv_out.conv_out.out_channels == 19
    with pytest.raises(ValueError, match="not a BiSeNet"):
        BiSeNet.from_state_dict({"conv.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="not a BiSeNet"):
        BiSeNet.from_state_dict({**state, "extra.weight": torch.zeros(1)})


def test_parser_weights_are_loaded_without_unpickling_code(tmp_path: Path) -> None:
    weights = tmp_path / "79999_iter.pth"
    torch.save({"payload": Face((0, 0, 1, 1), np.zeros((5, 2), np.float32), 1.0)}, weights)
    with pytest.raises(FaceModelError, match="cannot be loaded"):
        BiSeNetParser(weights, device="cpu")


# Offline fallback


@pytest.mark.parametrize("photo", ["tom", "astronaut"])
def test_fallback_finds_one_face_with_a_plausible_mask(photo: str) -> None:
    image = wheel_photo("Tom_Hanks_54745.png") if photo == "tom" else astronaut()
    faces = HaarDetector().detect(image)
    assert len(faces) == 1
    face = faces[0]
    mask = face_mask(EllipseParser().parse(image, face))
    assert 0.6 < mask.sum() / face.area < 1.6
    ys, xs = np.nonzero(mask)
    cx, cy = face.center
    assert abs(xs.mean() - cx) < 0.15 * face.width and abs(ys.mean() - cy) < 0.2 * face.height
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1] < mouth_left[1]
    if photo == "tom":  # an aligned ArcFace crop: its landmarks sit on the template
        assert np.abs(face.landmarks - ARCFACE_TEMPLATE).max() < 6


def test_fallback_sees_the_group_photo_as_several_faces() -> None:
    faces = HaarDetector().detect(wheel_photo("t1.jpg"))
    assert len(faces) >= 4
    assert faces[1].area > 0.3 * faces[0].area


# The kit


def test_kit_without_models_offline_falls_back_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(tmp_path / "empty"))
    monkeypatch.setenv("MAGICAPTURE_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="engine.faces"):
        kit = load_face_kit()
    assert kit.is_fallback and kit.fallbacks == ("detector", "parser", "recogniser")
    assert (
        isinstance(kit.detector, HaarDetector)
        and isinstance(kit.parser, EllipseParser)
        and kit.scorer is None
    )
    assert "approximate fallback in use for detector, parser, recogniser" in caplog.text
    with pytest.raises(FaceModelMissing, match="No face recogniser is installed"):
        kit.identity_model()
    with pytest.raises(assets.AssetMissing):
        load_face_kit(allow_fallback=False)


def test_kit_uses_the_real_loaders_when_the_models_are_present(assets_copy: Path) -> None:
    (assets_copy / STANDIN_MARKER).unlink()
    kit = load_face_kit()
    assert not kit.is_fallback and kit.fallbacks == ()
    assert isinstance(kit.detector, ScrfdDetector)
    assert isinstance(kit.parser, BiSeNetParser) and isinstance(kit.scorer, ArcFaceScorer)
    assert kit.identity_model() is kit.identity_model()


def test_demo_marker_replaces_only_the_marked_stand_in_detector(assets_copy: Path) -> None:
    kit = load_face_kit()
    assert kit.fallbacks == ("detector",) and isinstance(kit.detector, HaarDetector)
    assert isinstance(kit.parser, BiSeNetParser) and isinstance(kit.scorer, ArcFaceScorer)

    # A real download replaces the file: the marker no longer matches and the file is used.
    detector_file = assets_copy / "buffalo_l" / "det_10g.onnx"
    import onnx

    model = onnx.load(str(detector_file))
    model.producer_version = "a different file"
    onnx.save(model, str(detector_file))
    kit = load_face_kit()
    assert kit.fallbacks == () and isinstance(kit.detector, ScrfdDetector)
    marker = json.loads((assets_copy / STANDIN_MARKER).read_text())
    assert "buffalo_l/det_10g.onnx" in marker["detectors"]


def test_commercial_kit_requests_only_commercially_usable_assets(
    assets_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (assets_copy / STANDIN_MARKER).unlink()
    requested: list[tuple[str, bool]] = []
    real_asset_path = assets.asset_path

    def recording_asset_path(name: str, **options) -> Path:
        requested.append((name, options.get("commercial", False)))
        return real_asset_path(name, **options)

    monkeypatch.setattr(assets, "asset_path", recording_asset_path)
    kit = load_face_kit(commercial=True)
    assert requested and all(commercial for _, commercial in requested)
    assert all(assets.get_asset(name).commercial_ok for name, _ in requested)
    assert "buffalo_l" not in {name for name, _ in requested}
    assert kit.commercial and kit.fallbacks == ()
    assert isinstance(kit.detector, YuNetDetector) and isinstance(kit.scorer, SFaceScorer)
    assert kit.identity_model()(torch.zeros(1, 3, 112, 112)).shape == (1, 128)


def test_commercial_mode_never_falls_back_to_a_non_commercial_asset(
    assets_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (assets_copy / "face_detection_yunet_2023mar.onnx").unlink()
    (assets_copy / "face_recognition_sface_2021dec.onnx").unlink()
    monkeypatch.setenv("MAGICAPTURE_OFFLINE", "1")
    kit = load_face_kit(commercial=True)
    assert kit.fallbacks == ("detector", "recogniser")  # buffalo_l is present but not licensed
    assert isinstance(kit.detector, HaarDetector) and kit.scorer is None
    with pytest.raises(assets.NonCommercialAsset):
        assets.asset_path("buffalo_l", commercial=True)


def test_face_record_round_trips_and_transforms() -> None:
    face = face_at(10, 20, 110, 140)
    again = Face.from_json(json.loads(json.dumps(face.to_json())))
    np.testing.assert_allclose(again.landmarks, face.landmarks, atol=0.01)
    moved = face.transformed(2.0, (-5, 3))
    assert moved.bbox == pytest.approx((15, 43, 215, 283))
    assert moved.area == pytest.approx(4 * face.area)
