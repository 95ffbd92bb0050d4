"""Faces: detection with landmarks, parsing masks, identity embeddings, and the offline fallback.

`load_face_kit` assembles a `FaceKit` from the asset registry: insightface's buffalo_l pack
(SCRFD detector, ArcFace recogniser) and the BiSeNet parser, or, in commercial mode, OpenCV's
YuNet and SFace with the parser. A part whose weights are absent and cannot be fetched is
replaced by the offline fallback (Haar cascades, elliptical mask, no recogniser) with a warning,
and the kit says so (`FaceKit.fallbacks`, `FaceKit.is_fallback`). The fallback never replaces a
model that is available, except a detector that the demo kit marked as a random-weight stand-in
(see `engine.demo.faces`): such a detector finds no real faces, so demo mode detects with Haar.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .align import ARCFACE_SIZE, ARCFACE_TEMPLATE, warp_to_arcface
from .detect import Detector, Face, FaceModelError
from .parse import FACE_CLASSES, LABELS, Parser, face_mask

if TYPE_CHECKING:
    from .identity import IdentityModel, Scorer

__all__ = [
    "ARCFACE_SIZE",
    "ARCFACE_TEMPLATE",
    "FACE_CLASSES",
    "LABELS",
    "Face",
    "FaceKit",
    "FaceModelError",
    "FaceModelMissing",
    "face_mask",
    "load_face_kit",
    "load_recogniser",
    "warp_to_arcface",
]

logger = logging.getLogger(__name__)

FACE_PACK = "buffalo_l"
PARSER_ASSET = "bisenet"
COMMERCIAL_DETECTOR = "yunet"
COMMERCIAL_RECOGNISER = "sface"
ARCFACE_MEMBER = "w600k_r50.onnx"
"""buffalo_l's ArcFace recogniser, a file of the pack."""
RECOGNISER_LABELS = {"arcface": "ArcFace", "sface": "SFace"}
"""Recogniser name (`Scorer.name`) -> how reports name it."""
RECOGNISER_ASSETS = {"arcface": FACE_PACK, "sface": COMMERCIAL_RECOGNISER}
"""Recogniser name -> the asset holding its weights."""


class FaceModelMissing(FaceModelError):
    """A face model is needed but neither installed nor available as a fallback."""


@dataclass
class FaceKit:
    """The face models of one session.

    ``fallbacks`` names the parts running on the approximate offline substitutes: "detector"
    (Haar cascades), "parser" (ellipse from the landmarks), "recogniser" (none: ``scorer`` is
    ``None`` and there is no identity model).
    """

    detector: Detector
    parser: Parser
    scorer: Scorer | None
    commercial: bool = False
    fallbacks: tuple[str, ...] = ()
    _identity: IdentityModel | None = field(default=None, init=False, repr=False)

    @property
    def is_fallback(self) -> bool:
        return bool(self.fallbacks)

    def identity_model(self) -> IdentityModel:
        """The recogniser as a frozen, differentiable torch module (built on first use, fp32, CPU)."""
        if self.scorer is None:
            pack = COMMERCIAL_RECOGNISER if self.commercial else FACE_PACK
            raise FaceModelMissing(
                "No face recogniser is installed, so identity can be neither measured nor trained; "
                f"run `magicapture models download {pack}` and try again."
            )
        if self._identity is None:
            self._identity = self.scorer.identity_model()
        return self._identity


def _is_standin(folder: Path, path: Path) -> bool:
    """Whether ``path`` is a detector the demo kit marked as a stand-in and still that exact file."""
    from engine.assets import STANDIN_MARKER

    try:
        listed = json.loads((folder / STANDIN_MARKER).read_text("utf-8"))["detectors"]
        digest = listed.get(path.resolve().relative_to(folder.resolve()).as_posix())
        return digest is not None and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def load_face_kit(
    *,
    commercial: bool = False,
    allow_fallback: bool = True,
    download: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
) -> FaceKit:
    """Load the face models through the asset registry (downloading them unless ``download`` is false).

    With ``commercial`` only assets whose licence allows commercial use are requested (YuNet,
    SFace, and the parser if the registry allows it). Without ``allow_fallback`` a missing model
    raises the registry's `engine.assets.AssetError` instead of falling back.
    """
    from engine import assets

    fallbacks: list[str] = []

    def fetch(name: str) -> Path | None:
        try:
            return assets.asset_path(name, download=download, progress=progress, commercial=commercial)
        except assets.AssetError as error:
            if not allow_fallback:
                raise
            logger.warning("Face models: %s Using the approximate offline fallback instead.", error)
            return None

    if commercial:
        detector_file, recogniser_file = fetch(COMMERCIAL_DETECTOR), fetch(COMMERCIAL_RECOGNISER)
    else:
        pack = fetch(FACE_PACK)
        detector_file = pack / "det_10g.onnx" if pack else None
        recogniser_file = pack / ARCFACE_MEMBER if pack else None
    parser_file = fetch(PARSER_ASSET)

    if detector_file is not None and _is_standin(assets.assets_dir(), detector_file):
        logger.warning(
            "Face models: %s is a demo stand-in; detecting faces with Haar cascades.", detector_file
        )
        detector_file = None
    detector = _detector(detector_file, commercial)
    if detector_file is None:
        fallbacks.append("detector")
    parser = _parser(parser_file)
    if parser_file is None:
        fallbacks.append("parser")
    scorer = _scorer(recogniser_file, commercial)
    if recogniser_file is None:
        fallbacks.append("recogniser")
    if fallbacks:
        logger.warning("Face models: approximate fallback in use for %s.", ", ".join(fallbacks))
    return FaceKit(
        detector=detector, parser=parser, scorer=scorer, commercial=commercial, fallbacks=tuple(fallbacks)
    )


def trained_recogniser(kit: FaceKit) -> str:
    """The name of the recogniser the identity loss trains against with ``kit``: its scorer's, else its mode's."""
    if kit.scorer is not None:
        return kit.scorer.name
    return "sface" if kit.commercial else "arcface"


def load_recogniser(
    name: str,
    *,
    commercial: bool = False,
    download: bool = True,
    progress: Callable[[int, int | None], None] | None = None,
) -> Scorer:
    """The recogniser ``name`` ("arcface": buffalo_l's ArcFace, "sface": OpenCV's SFace), with no fallback.

    Raises the registry's `engine.assets.AssetError` when its weights are absent and cannot be
    fetched, or refused by ``commercial`` (then without asking the registry for them), and
    `FaceModelError` when they do not load.
    """
    from engine import assets

    if name not in RECOGNISER_ASSETS:
        raise ValueError(f"Unknown face recogniser {name!r}; choose {' or '.join(RECOGNISER_ASSETS)}.")
    asset = assets.get_asset(RECOGNISER_ASSETS[name])
    if commercial and not asset.commercial_ok:
        raise assets.NonCommercialAsset(
            f"{asset.description} is licensed for non-commercial use only ({asset.licence}), "
            "and commercial use is switched on."
        )
    path = assets.asset_path(asset.name, download=download, progress=progress, commercial=commercial)
    return _scorer(path / ARCFACE_MEMBER if name == "arcface" else path, commercial=name == "sface")


def _detector(path: Path | None, commercial: bool) -> Detector:
    if path is None:
        from .fallback import HaarDetector

        return HaarDetector()
    if commercial:
        from .detect import YuNetDetector

        return YuNetDetector(path)
    from .detect import ScrfdDetector

    return ScrfdDetector(path)


def _parser(path: Path | None) -> Parser:
    if path is None:
        from .fallback import EllipseParser

        return EllipseParser()
    from .parse import BiSeNetParser

    return BiSeNetParser(path)


def _scorer(path: Path | None, commercial: bool) -> Scorer | None:
    """SFace's scorer for ``commercial``, else ArcFace's; None without a file."""
    if path is None:
        return None
    if commercial:
        from .identity import SFaceScorer

        return SFaceScorer(path)
    from .identity import ArcFaceScorer

    return ArcFaceScorer(path)
