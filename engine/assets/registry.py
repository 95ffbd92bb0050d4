"""The registry of model weights that are not diffusers models: what each asset is, where it comes
from, its checksum and its licence; and the one licence notice built from it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from engine.assets.errors import UnknownAsset


@dataclass(frozen=True)
class Asset:
    """One downloadable weight file (or zip archive of files).

    ``archive_members`` lists the files the rest of the app needs from a zip download; the whole zip
    is unpacked (flattened) into ``<assets dir>/<name>/`` and the zip itself is not kept.
    ``commercial_ok`` follows the licence the weights are published under.
    """

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    licence: str
    commercial_ok: bool
    kind: str
    description: str
    home: str
    archive_members: tuple[str, ...] = ()

    @property
    def is_archive(self) -> bool:
        return bool(self.archive_members)


_INSIGHTFACE_LICENCE = "InsightFace model licence: non-commercial research use only"

REGISTRY: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="buffalo_l",
            filename="buffalo_l.zip",
            urls=(
                "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                "https://github.com/deepinsight/insightface/releases/download/model-zoo/buffalo_l.zip",
            ),
            sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
            size=288_621_354,
            licence=_INSIGHTFACE_LICENCE,
            commercial_ok=False,
            kind="face-analysis",
            description="InsightFace buffalo_l pack: SCRFD-10G face detector and ArcFace R50 recogniser",
            home="https://github.com/deepinsight/insightface/tree/master/model_zoo",
            archive_members=("det_10g.onnx", "w600k_r50.onnx"),
        ),
        Asset(
            name="bisenet",
            filename="79999_iter.pth",
            urls=(
                "https://huggingface.co/ManyOtherFunctions/face-parse-bisent/resolve/main/79999_iter.pth",
                "https://github.com/clibdev/face-parsing.PyTorch/releases/latest/download/face-parsing-bisenet.pth",
            ),
            sha256="468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
            size=53_289_463,
            licence="MIT (face-parsing.PyTorch); trained on CelebAMask-HQ, a non-commercial research data set",
            commercial_ok=True,
            kind="face-parser",
            description="BiSeNet face parser, 19 CelebAMask-HQ classes (skin, hair, eyes, mouth...)",
            home="https://github.com/zllrunning/face-parsing.PyTorch",
        ),
        Asset(
            name="gfpgan_v1.4",
            filename="GFPGANv1.4.pth",
            urls=(
                "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
                "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth",
            ),
            sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
            size=348_632_874,
            licence="Apache-2.0",
            commercial_ok=True,
            kind="face-restorer",
            description="GFPGAN v1.4 face restorer",
            home="https://github.com/TencentARC/GFPGAN",
        ),
        Asset(
            name="codeformer",
            filename="codeformer.pth",
            urls=("https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",),
            sha256="1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7",
            size=376_637_898,
            licence="NTU S-Lab License 1.0: non-commercial use only",
            commercial_ok=False,
            kind="face-restorer",
            description="CodeFormer face restorer",
            home="https://github.com/sczhou/CodeFormer",
        ),
        Asset(
            name="realesrgan_x2plus",
            filename="RealESRGAN_x2plus.pth",
            urls=("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",),
            sha256="49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb",
            size=67_061_725,
            licence="BSD-3-Clause",
            commercial_ok=True,
            kind="upscaler",
            description="Real-ESRGAN x2plus upscaler (2x)",
            home="https://github.com/xinntao/Real-ESRGAN",
        ),
        Asset(
            name="realesrgan_x4plus",
            filename="RealESRGAN_x4plus.pth",
            urls=("https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",),
            sha256="4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1",
            size=67_040_989,
            licence="BSD-3-Clause",
            commercial_ok=True,
            kind="upscaler",
            description="Real-ESRGAN x4plus upscaler (4x)",
            home="https://github.com/xinntao/Real-ESRGAN",
        ),
        Asset(
            name="yunet",
            filename="face_detection_yunet_2023mar.onnx",
            urls=(
                "https://huggingface.co/opencv/face_detection_yunet/resolve/main/face_detection_yunet_2023mar.onnx",
                "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
            ),
            sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
            size=232_589,
            licence="MIT",
            commercial_ok=True,
            kind="face-detector",
            description="OpenCV YuNet face detector (2023mar), the commercially usable detector",
            home="https://github.com/opencv/opencv_zoo/tree/main/models/face_detection_yunet",
        ),
        Asset(
            name="sface",
            filename="face_recognition_sface_2021dec.onnx",
            urls=(
                "https://huggingface.co/opencv/face_recognition_sface/resolve/main/face_recognition_sface_2021dec.onnx",
                "https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/face_recognition_sface_2021dec.onnx",
            ),
            sha256="0ba9fbfa01b5270c96627c4ef784da859931e02f04419c829e83484087c34e79",
            size=38_696_353,
            licence="Apache-2.0",
            commercial_ok=True,
            kind="face-recogniser",
            description="OpenCV SFace face recogniser (2021dec), the commercially usable recogniser",
            home="https://github.com/opencv/opencv_zoo/tree/main/models/face_recognition_sface",
        ),
        Asset(
            name="laion_aesthetic",
            filename="sac+logos+ava1-l14-linearMSE.pth",
            urls=(
                "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth",
                "https://huggingface.co/camenduru/improved-aesthetic-predictor/resolve/main/sac%2Blogos%2Bava1-l14-linearMSE.pth",
            ),
            sha256="21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0",
            size=3_714_759,
            licence="Apache-2.0",
            commercial_ok=True,
            kind="aesthetic",
            description="LAION improved aesthetic predictor head for CLIP ViT-L/14 image embeddings",
            home="https://github.com/christophschuhmann/improved-aesthetic-predictor",
        ),
    )
}

COMMERCIAL_ALTERNATIVES = {
    "buffalo_l": "OpenCV's YuNet and SFace replace InsightFace's detector and recogniser",
    "codeformer": "GFPGAN replaces CodeFormer for face restoration",
}
"""Commercially usable replacements of the non-commercial assets, as the commercial-use setting picks them."""


def get_asset(name: str) -> Asset:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownAsset(f"There is no model asset named {name!r}; known assets: {known}.") from None


DEMO_STANDINS_LEAD = "Demo stand-ins are random weights under no licence terms. For the real models:"
"""Opens the notice while the models in use are the demo kit's stand-ins."""


def licence_notice(names: Iterable[str], *, alternatives: bool = False, standins: bool = False) -> str | None:
    """One sentence naming the non-commercial assets among ``names``, or ``None`` if there are none.

    With ``alternatives``, a second sentence says what the commercial-use setting uses instead; with
    ``standins`` (the demo kit's models are in use), `DEMO_STANDINS_LEAD` comes first.
    """
    restricted = [asset for asset in dict.fromkeys(map(get_asset, names)) if not asset.commercial_ok]
    if not restricted:
        return None
    listed = "; ".join(f"{asset.name} ({asset.licence})" for asset in restricted)
    notice = (
        f"These model weights may be used for non-commercial purposes only: {listed}; switch on the "
        "commercial-use setting to work with commercially usable models instead."
    )
    if standins:
        notice = f"{DEMO_STANDINS_LEAD} {notice}"
    swaps = [COMMERCIAL_ALTERNATIVES[a.name] for a in restricted if a.name in COMMERCIAL_ALTERNATIVES]
    return f"{notice} With commercial use on, {'; '.join(swaps)}." if alternatives and swaps else notice


def manual_hint(asset: Asset) -> str:
    return (
        f"Check the internet connection or proxy and try again, or download {asset.urls[0]} yourself "
        f"and run `magicapture models import {asset.name} PATH`."
    )
