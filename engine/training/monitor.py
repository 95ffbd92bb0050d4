"""What a run watches about its own method: the tokens' attention, the face detector's hits, skipped steps.

The objective records detached numbers into a `MethodMonitor` on every step (no extra passes):
each placeholder token's mean attention on the AR layers and the share of it outside the token's
target region, whether the detector found a face in each identity estimate (by sample kind and
timestep bucket), and each optimiser step the fp16 gradient scaler skipped. At every preview and
at the end of each phase the loop turns them into a `MethodReport` and, once per kind of trouble, a
`MethodWarning` that names the setting to change. The counts survive a resume (checkpoint state).
In data-parallel runs each process counts its own samples; the main process reports its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from engine.events import Event, MethodReport, MethodWarning
from engine.losses import DecoderAgreement, WindowFidelity

START_STEPS = 10
"""Phase-2 steps with AR whose mean attention is each token's reference level."""
TIMESTEP_BUCKET = 200
"""Width of the timestep buckets of the detection counts."""
DETECTION_FLOOR = 0.2
"""Warn when the detector finds a face in fewer of the identity estimates than this (after `DETECTION_MIN_TRIES`)."""
DETECTION_MIN_TRIES = 20
WINDOW_COSINE_FLOOR = 0.9
"""Warn when the recogniser's embeddings of the window decode and the full decode (or of TAESD's and
the VAE's decode) agree less than this."""
SKIP_SHARE = 0.02
"""Warn when the gradient scaler has skipped more than this share of the steps (and at least 3)."""


@dataclass
class MethodMonitor:
    """Counts of one run; `report` summarises them and says what went wrong."""

    tokens: dict[int, str]
    """Token id -> placeholder token."""
    collapse_fraction: float
    """The config's ``ar_collapse_fraction`` (0: no attention warning)."""
    fallback_landmarks: bool = False
    """The config's ``identity_fallback_landmarks`` (named in the detection warning)."""
    attention_start: dict[str, float] = field(default_factory=dict)
    face_found: dict[str, list[int]] = field(default_factory=dict)
    """``"<kind> t<low>-<high>"`` -> [estimates with a face found, estimates tried]."""
    skipped_steps: int = 0
    steps: int = 0
    warned: list[str] = field(default_factory=list)
    face_window: WindowFidelity | None = None
    """The face window's check against a full decode (`engine.losses.window_fidelity`), made at phase-2 start."""
    decoder: DecoderAgreement | None = None
    """TAESD's decode against the VAE's (`engine.losses.decoder_agreement`), at phase-2 start with the tiny decoder."""
    attention_window: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Token -> (mean attention, share outside) of each step since the last report."""
    early: dict[str, list[float]] = field(default_factory=dict)
    """Token -> mean attention of the first phase-2 steps, until `START_STEPS` make its start level."""

    def record_attention(self, token_ids: torch.Tensor, means: torch.Tensor, outside: torch.Tensor) -> None:
        """One step's AR pairs: each pair's token id, mean attention and share outside its region."""
        for label in {self.tokens[int(i)] for i in token_ids}:
            chosen = torch.tensor([self.tokens[int(i)] == label for i in token_ids])
            mean, share = float(means[chosen].mean()), float(outside[chosen].mean())
            self.attention_window.setdefault(label, []).append((mean, share))
            if label not in self.attention_start:
                early = self.early.setdefault(label, [])
                early.append(mean)
                if len(early) >= START_STEPS:
                    self.attention_start[label] = sum(early) / len(early)
                    del self.early[label]

    def record_faces(self, kinds: list[str], timesteps: list[int], detected: list[bool]) -> None:
        """Whether the detector found a face in each identity estimate, with its sample kind and timestep."""
        for kind, timestep, found in zip(kinds, timesteps, detected, strict=True):
            low = timestep // TIMESTEP_BUCKET * TIMESTEP_BUCKET
            counts = self.face_found.setdefault(f"{kind} t{low}-{low + TIMESTEP_BUCKET - 1}", [0, 0])
            counts[0] += int(found)
            counts[1] += 1

    def record_step(self, skipped: bool) -> None:
        self.steps += 1
        self.skipped_steps += int(skipped)

    def detection_rate(self) -> float | None:
        """Share of the identity estimates in which a face was found; None before any."""
        tried = sum(tries for _, tries in self.face_found.values())
        return sum(found for found, _ in self.face_found.values()) / tried if tried else None

    def report(self, phase: int, global_step: int) -> list[Event]:
        """The report of the steps since the last one, then any new warning; starts a new window."""
        attention = {label: _mean([m for m, _ in rows]) for label, rows in self.attention_window.items()}
        outside = {label: _mean([s for _, s in rows]) for label, rows in self.attention_window.items()}
        self.attention_window = {}
        events: list[Event] = [
            MethodReport(
                phase=phase,
                global_step=global_step,
                attention=attention,
                outside_share=outside,
                attention_start=dict(self.attention_start),
                face_found={key: list(value) for key, value in sorted(self.face_found.items())},
                detection_rate=self.detection_rate(),
                skipped_steps=self.skipped_steps,
                steps=self.steps,
                window_pixel_error=self.face_window.pixel_error if self.face_window else None,
                window_edge_error=self.face_window.edge_error if self.face_window else None,
                window_identity_cosine=self.face_window.identity_cosine if self.face_window else None,
                decoder_pixel_error=self.decoder.pixel_error if self.decoder else None,
                decoder_identity_cosine=self.decoder.identity_cosine if self.decoder else None,
            )
        ]
        for check, message in self._troubles(attention):
            if check not in self.warned:
                self.warned.append(check)
                events.append(MethodWarning(check=check, global_step=global_step, message=message))
        return events

    def _troubles(self, attention: dict[str, float]) -> list[tuple[str, str]]:
        found = []
        for label, level in sorted(attention.items()):
            start = self.attention_start.get(label)
            if self.collapse_fraction and start and level < self.collapse_fraction * start:
                found.append(
                    (
                        f"attention_collapse {label}",
                        f"The attention of {label} has fallen to {level / start:.1%} of its level at the start "
                        f"of phase 2 ({level:.2e} from {start:.2e}): Attention Refocusing is shrinking it "
                        "everywhere. Set ar_loss=outside_share (or ar_detach_range=false), or lower ar_weight.",
                    )
                )
        if self.face_window is not None and self.face_window.identity_cosine < WINDOW_COSINE_FLOOR:
            found.append(
                (
                    "face_window",
                    f"Decoding only the face window changes what the recogniser sees (cosine "
                    f"{self.face_window.identity_cosine:.3f} to a full decode; {self.face_window.pixel_error:.1f} grey levels "
                    "in the face). Set a larger identity_window_margin, or identity_face_window=false (slower).",
                )
            )
        if self.decoder is not None and self.decoder.identity_cosine < WINDOW_COSINE_FLOOR:
            found.append(
                (
                    "tiny_decoder",
                    f"TAESD decodes your photos differently from the VAE where the recogniser looks (cosine "
                    f"{self.decoder.identity_cosine:.3f}; {self.decoder.pixel_error:.1f} grey levels in the face), "
                    "so the identity loss trains against an approximation. Set identity_decoder=vae "
                    "(slower, more memory).",
                )
            )
        rate = self.detection_rate()
        tried = sum(tries for _, tries in self.face_found.values())
        if rate is not None and tried >= DETECTION_MIN_TRIES and rate < DETECTION_FLOOR:
            then = (
                "it used the training image's landmarks instead (identity_fallback_landmarks=true)"
                if self.fallback_landmarks
                else "the identity loss was skipped on the others"
            )
            found.append(
                (
                    "identity_detection",
                    f"The face detector found a face in only {rate:.0%} of {tried} identity estimates; {then}. "
                    "A lower identity_max_timestep gives sharper estimates.",
                )
            )
        if self.skipped_steps >= 3 and self.skipped_steps > SKIP_SHARE * self.steps:
            found.append(
                (
                    "skipped_steps",
                    f"The fp16 gradient scaler skipped {self.skipped_steps} of {self.steps} steps (infinite or "
                    "NaN gradients), so those steps trained nothing. Use mixed_precision=bf16 on a GPU that has "
                    "it, or mixed_precision=no.",
                )
            )
        return found

    def to_json(self) -> dict[str, Any]:
        """What a resumed run carries on (the per-report window starts afresh)."""
        return {
            "attention_start": self.attention_start,
            "early": self.early,
            "face_found": self.face_found,
            "skipped_steps": self.skipped_steps,
            "steps": self.steps,
            "warned": self.warned,
            "face_window": self.face_window._asdict() if self.face_window else None,
            "decoder": self.decoder._asdict() if self.decoder else None,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.attention_start = dict(state.get("attention_start", {}))
        self.early = {key: list(value) for key, value in state.get("early", {}).items()}
        self.face_found = {key: list(value) for key, value in state.get("face_found", {}).items()}
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.steps = int(state.get("steps", 0))
        self.warned = list(state.get("warned", []))
        self.face_window = WindowFidelity(**state["face_window"]) if state.get("face_window") else None
        self.decoder = DecoderAgreement(**state["decoder"]) if state.get("decoder") else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
