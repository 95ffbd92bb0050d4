"""The tests' one tiny training config: the demo kit's tiny SD at 64 px on the CPU, a few steps."""

from __future__ import annotations

from pathlib import Path

from engine.config import TrainingConfig, preset


def tiny_config(base: str | Path, **overrides) -> TrainingConfig:
    """Two phase-1 and two phase-2 steps of the released preset, no previews, no checkpoint unless asked.

    ``overrides`` set any other field (steps, checkpoint cadence, profile...).
    """
    values = dict(
        base_model=str(base),
        resolution=64,
        phase1_steps=2,
        phase2_steps=2,
        checkpoint_every=1000,
        preview_every=0,
        latent_cache_variants=2,
        device="cpu",
        vram_profile="cpu",
        use_8bit_adam=True,
        identity_decoder="vae",  # the default (tiny) needs TAESD: tests pass the kit's as tiny_decoder_model
    )
    return preset("released", **{**values, **overrides})
