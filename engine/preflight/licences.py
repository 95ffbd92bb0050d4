"""The licences in play: which assets the pipeline requests for a run's settings."""

from __future__ import annotations


def assets_in_use(*, commercial: bool, restore: str | None = None) -> list[str]:
    """Asset names the pipeline requests: the face models, and the restorer when one is chosen."""
    from engine.faces import COMMERCIAL_DETECTOR, COMMERCIAL_RECOGNISER, FACE_PACK, PARSER_ASSET
    from engine.postprocess import RESTORERS

    names = [COMMERCIAL_DETECTOR, COMMERCIAL_RECOGNISER] if commercial else [FACE_PACK]
    names.append(PARSER_ASSET)
    if restore is not None:
        names.append(RESTORERS[restore])
    return names
