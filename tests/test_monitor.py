"""The run watches its method: attention levels, face detections, skipped steps (issue 15, items 1, 2, 4)."""

from __future__ import annotations

import pytest
import torch
from fixtures_training import tiny_face_kit
from tiny import tiny_config

from engine.config import preset
from engine.demo.portraits import make_project
from engine.events import MethodReport, MethodWarning, StepDone
from engine.models import load_base
from engine.training import train
from engine.training.monitor import START_STEPS, MethodMonitor


def _monitor(**overrides) -> MethodMonitor:
    return MethodMonitor(tokens={7: "<sks>", 8: "<style1>"}, collapse_fraction=0.1, **overrides)


def _attention_steps(monitor: MethodMonitor, level: float, steps: int) -> None:
    for _ in range(steps):
        monitor.record_attention(torch.tensor([7, 8]), torch.tensor([level, 0.02]), torch.tensor([0.5, 0.4]))


def test_a_collapsing_token_is_reported_and_warned_about_once_naming_the_setting():
    monitor = _monitor()
    _attention_steps(monitor, 0.01, START_STEPS)
    report, *warnings = monitor.report(2, 10)
    assert report.attention_start == pytest.approx({"<sks>": 0.01, "<style1>": 0.02})
    assert report.attention == pytest.approx({"<sks>": 0.01, "<style1>": 0.02}) and not warnings
    _attention_steps(monitor, 0.0005, 5)  # <sks> falls to 5% of its start; <style1> holds
    report, *warnings = monitor.report(2, 15)
    assert report.attention["<sks>"] == pytest.approx(0.0005)
    assert report.outside_share == pytest.approx({"<sks>": 0.5, "<style1>": 0.4})
    assert [w.check for w in warnings] == ["attention_collapse <sks>"]
    assert "ar_loss=outside_share" in warnings[0].message and "5.0%" in warnings[0].message
    _attention_steps(monitor, 0.0001, 5)
    assert [type(e) for e in monitor.report(2, 20)] == [MethodReport]  # warned once


def test_counts_survive_a_resume():
    monitor = _monitor()
    _attention_steps(monitor, 0.01, START_STEPS)
    monitor.record_faces(["composed", "source"], [150, 650], [True, False])
    monitor.record_step(skipped=True)
    again = _monitor()
    again.restore(monitor.to_json())
    assert again.attention_start == monitor.attention_start
    assert again.face_found == {"composed t0-199": [1, 1], "source t600-799": [0, 1]}
    assert (again.skipped_steps, again.steps, again.detection_rate()) == (1, 1, 0.5)


def test_a_low_detection_rate_is_warned_about():
    monitor = _monitor()
    monitor.record_faces(["composed"] * 30, [700] * 30, [False] * 27 + [True] * 3)
    checks = [e.check for e in monitor.report(2, 30) if isinstance(e, MethodWarning)]
    assert checks == ["identity_detection"]


def test_the_identity_loss_follows_the_spec_by_default_and_skips_and_counts_are_reported(
    isolated_home, tiny_sd, monkeypatch
):
    """Item 2: no face in the estimate -> the term is skipped (it used the image's landmarks);
    item 4: steps the gradient scaler skips are counted, shown and warned about (they were silent)."""
    from accelerate import Accelerator

    assert preset().identity_fallback_landmarks is False
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: True))
    project = make_project(isolated_home)
    events = []
    config = tiny_config(tiny_sd.folder, phase1_steps=1, phase2_steps=3, identity_max_timestep=1000)
    train(project, config, base=load_base(tiny_sd.folder), face_kit=tiny_face_kit(), on_event=events.append)
    steps = [e for e in events if isinstance(e, StepDone) and e.phase == 2]
    assert steps and not any("identity" in s.losses for s in steps)  # random model: no face to find
    assert len({s.lr for s in steps}) == 1  # a skipped step does not advance the schedule
    report = [e for e in events if isinstance(e, MethodReport)][-1]
    assert report.detection_rate == 0.0 and report.face_found
    assert all(found == 0 and tries > 0 for found, tries in report.face_found.values())
    assert (report.skipped_steps, report.steps) == (4, 4)
    assert (
        report.window_identity_cosine is not None and report.window_pixel_error >= 0
    )  # item 5, checked once
    assert "skipped_steps" in [e.check for e in events if isinstance(e, MethodWarning)]


def test_a_tiny_decoder_that_disagrees_with_the_vae_is_warned_about():
    from engine.losses import DecoderAgreement

    monitor = _monitor()
    monitor.decoder = DecoderAgreement(pixel_error=40.0, identity_cosine=0.5)
    report, warning = monitor.report(2, 1)
    assert report.decoder_identity_cosine == 0.5 and report.decoder_pixel_error == 40.0
    assert warning.check == "tiny_decoder" and "identity_decoder=vae" in warning.message
