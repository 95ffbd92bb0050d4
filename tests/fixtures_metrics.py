"""Evaluation test helpers: the tiny CLIP and aesthetic head, and synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.demo.scoring import TinyScoring, build_scoring_assets


@pytest.fixture(scope="session")
def tiny_scoring(tmp_path_factory: pytest.TempPathFactory) -> TinyScoring:
    """The tiny CLIP and aesthetic head in an asset-cache folder, built once per session."""
    return build_scoring_assets(Path(tmp_path_factory.mktemp("scoring-assets")))


def pattern(seed: int, size: int = 128) -> np.ndarray:
    """A smooth random colour pattern (RGB uint8); different seeds give clearly different images."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
    return np.kron(coarse, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
