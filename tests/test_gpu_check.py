"""bench.gpu_check: the reduced CPU run writes every key README.md documents, with sane values.

The full check needs a CUDA GPU (fp16, SD 1.5-shaped at 512 px, with ``--sdxl`` SDXL-shaped at
1024 px); here ``--reduced`` runs the same parts on the tiny demo models in fp32, with ``--base``
pointing at the tiny model so that the short training runs too. Nothing asserts a time or a memory figure: the values are checked for their
type, sign and finiteness.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.gpu_check import (
    FULL,
    KINDS,
    VAE_KIND,
    Budget,
    allotment,
    headline,
    plan_parts,
    render_table,
)

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = {"base.training.pending"}
"""Documented keys present only in some runs (``pending`` while the run reports no method signals)."""


def number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: Any) -> bool:
    return number(value) and value > 0


def documented_keys() -> list[str]:
    """The key column of README.md's "GPU check" schema table, as dotted paths."""
    text = (ROOT / "README.md").read_text("utf-8")
    section = text.split("### GPU check", 1)[1].split("\n## ", 1)[0]
    keys = []
    for line in section.splitlines():
        if line.startswith("| `"):
            keys += re.findall(r"`([^`]+)`", line.split("|")[1])
    return keys


def lookup(results: dict[str, Any], path: str) -> list[tuple[str, bool]]:
    """``(expanded path, present)`` for a documented path; ``<profile>``/``<kind>`` expand over the run's."""
    paths = [path]
    if "<profile>" in path:
        paths = [p.replace("<profile>", name) for p in paths for name in results["profiles"]]
    if "<kind>" in path:
        paths = [p.replace("<kind>", kind) for p in paths for kind in KINDS]
    found = []
    for item in paths:
        value: Any = results
        present = True
        for part in item.split("."):
            if not isinstance(value, dict) or part not in value:
                present = False
                break
            value = value[part]
        found.append((item, present))
    return found


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One reduced run with the tiny model as ``--base``; returns the JSON and the progress printed."""
    from engine.demo import build_demo_kit, default_kit_folder

    kit = build_demo_kit(default_kit_folder())  # the kit the workbench uses (built once, shared)
    folder = tmp_path_factory.mktemp("gpu-check")
    out = folder / "gpu_check.json"
    command = [
        sys.executable, "-m", "bench.gpu_check", "--reduced", "--base", str(kit.sd.folder),
        "--tiny-decoder", str(kit.tiny_decoder), "--sdxl", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "MAGICAPTURE_HOME": str(folder / "home")}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text("utf-8")), done.stderr


def test_the_readme_documents_a_schema() -> None:
    keys = documented_keys()
    assert "headline.full_peak_gb" in keys and "profiles.<profile>.<kind>.scaler_skips" in keys
    assert "decode.window_vs_full.face_box.max" in keys and "base.training.face_detection_rate" in keys


@pytest.mark.slow
def test_every_documented_key_is_in_the_reduced_run(reduced) -> None:
    results, _ = reduced
    missing = [
        path
        for key in documented_keys()
        if key not in OPTIONAL
        for path, present in lookup(results, key)
        if not present
    ]
    assert not missing, missing
    assert results["schema"] == 1 and results["mode"] == "reduced" and results["device"] == "cpu"
    assert results["errors"] == [] and results["command"].startswith("python -m bench.gpu_check --reduced")


@pytest.mark.slow
def test_the_profiles_have_peaks_ratios_speeds_and_healthy_numbers(reduced) -> None:
    results, progress = reduced
    assert list(results["profiles"]) == ["8gb", "24gb"]
    for name, profile in results["profiles"].items():
        assert profile["options"]["mixed_precision"] == "no"  # the CPU trains in fp32
        assert positive(profile["peak_ratio"]) and positive(profile["step_time_ratio"]), name
        kinds = (*KINDS, VAE_KIND) if name == "8gb" else KINDS  # the VAE decoder on the headline profile
        assert VAE_KIND in profile if name == "8gb" else VAE_KIND not in profile
        for kind in kinds:
            step = profile[kind]
            assert isinstance(step["peak_bytes"], int) and step["peak_bytes"] > 0, (name, kind)
            assert positive(step["peak_gb"]) and positive(step["steps_per_second"]), (name, kind)
            assert step["steps"] >= 2 and 1 <= step["timed_steps"] < step["steps"]
            assert step["nonfinite_loss_steps"] == step["nonfinite_grad_steps"] == 0
            assert step["nonfinite_grad_values"] == step["scaler_skips"] == 0
            assert step["loss_scale"] is None  # no gradient scaler in fp32
            assert all(number(loss) for loss in step["losses"])
    assert "8gb/full: peak" in progress and "decode:" in progress  # progress went to stderr
    head, eight = results["headline"], results["profiles"]["8gb"]
    assert head["profile"] == "8gb" and head["full_peak_gb"] == eight["full"]["peak_gb"]
    assert head["full_vae_decoder_peak_gb"] == eight[VAE_KIND]["peak_gb"]
    assert positive(eight["vae_decoder_peak_ratio"]) and positive(eight["vae_decoder_step_time_ratio"])
    assert head["meets_goal"] is None and head["note"]  # judged on a GPU in fp16 at 512 px only


@pytest.mark.slow
def test_the_sdxl_steps_run_with_the_sdxl_profile_and_are_judged_at_1024_px(reduced) -> None:
    results, progress = reduced
    sdxl = results["sdxl"]
    assert (sdxl["model"], sdxl["device"], list(sdxl["profiles"])) == ("tiny-sdxl", "cpu", ["12gb"])
    twelve = sdxl["profiles"]["12gb"]
    options = twelve["options"]
    assert options["gradient_checkpointing"] and not options["train_text_encoder"], "UNet-only LoRA"
    assert positive(twelve["peak_ratio"]) and positive(twelve["step_time_ratio"])
    for kind in KINDS:
        step = twelve[kind]
        assert positive(step["peak_gb"]) and positive(step["steps_per_second"]) and step["steps"] >= 2
        assert step["nonfinite_loss_steps"] == step["nonfinite_grad_values"] == 0
    assert "sdxl/12gb/full: peak" in progress
    head = sdxl["headline"]
    assert (head["profile"], head["goal_gb"], head["stretch_gb"]) == ("12gb", 12.0, 10.0)
    assert head["full_peak_gb"] == twelve["full"]["peak_gb"] and head["meets_goal"] is None and head["note"]
    table = render_table(results)
    assert "SDXL (tiny demo SDXL at " in table and "profile 12gb (headline)" in table
    assert "Peak memory, full vs plain step (profile sdxl 12gb)" in table
    gpu = {**sdxl, "device": "cuda", "resolution": 1024}
    gpu["profiles"] = {"12gb": {**twelve, "options": {"mixed_precision": "fp16"}}}
    gpu["profiles"]["12gb"]["full"] = {**twelve["full"], "peak_gb": 11.2}
    judged = headline(gpu, "12gb", (12.0, 10.0, 1024))
    assert (judged["meets_goal"], judged["meets_stretch"], judged["note"]) == (True, False, None)


@pytest.mark.slow
def test_the_decode_differences_are_finite_pixel_levels(reduced) -> None:
    results, _ = reduced
    for decode in (results["decode"], results["base"]["decode"]):
        assert decode["nonfinite_values"] == 0 and decode["precision"] == decode["dtype"] == "float32"
        window = decode["window"]
        assert (
            0 < window["side_px"] <= decode["resolution"] and window["side_px"] == 8 * window["side_latents"]
        )
        pairs = [*decode["window_vs_full"].values(), *decode["tiny_vs_vae"].values()]
        for pair in pairs:
            assert number(pair["max"]) and number(pair["mean"]), pair
            assert 0 <= pair["mean"] <= pair["max"] <= 255
    assert results["base"]["decode"]["tiny_decoder"]  # --tiny-decoder given: compared on the base too


@pytest.mark.slow
def test_the_short_training_reports_its_run(reduced) -> None:
    training = reduced[0]["base"]["training"]
    assert training["status"] == "finished" and training["steps_done"] == 4
    assert training["nonfinite_loss_steps"] == 0 and set(training["steps_per_second"]) == {"1", "2"}
    if training["attention_level"] is None:  # the run's method report has not landed yet
        assert training["pending"].startswith("pending")
    else:
        assert positive(training["attention_level"]) and set(training["attention"]) == {"<sks>", "<style1>"}
        rate = training["face_detection_rate"]
        assert rate is None or 0 <= rate <= 1


@pytest.mark.slow
def test_the_table_renders_the_readme_rows_and_judges_the_headline_on_a_gpu(reduced, tmp_path) -> None:
    results, _ = reduced
    table = render_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("Measured ") and lines[2] == "| Figure | Measured | Goal | Context |"
    assert "profile 8gb (headline)" in lines[4] and "not judged" in lines[4]
    for name in ("8gb", "24gb"):
        assert f"Peak memory, full vs plain step (profile {name})" in table
        assert f"Steps per second, full vs plain step (profile {name})" in table
    assert "Peak memory, full, identity_decoder=vae, vs plain step (profile 8gb)" in table
    assert "Windowed vs full VAE decode, face box (random weights)" in table
    assert "TAESD vs VAE decode" in table and "Short training on sd" in table
    gpu = {**results, "device": "cuda", "resolution": 512}
    gpu["profiles"] = {"8gb": {**results["profiles"]["8gb"], "options": {"mixed_precision": "fp16"}}}
    gpu["profiles"]["8gb"]["full"] = {**gpu["profiles"]["8gb"]["full"], "peak_gb": 6.5}
    gpu["headline"] = headline(gpu)
    assert (gpu["headline"]["meets_goal"], gpu["headline"]["meets_stretch"]) == (True, False)
    assert "< 8 GB (met); stretch < 6 GB (not met)" in render_table(gpu)
    path = tmp_path / "check.json"
    path.write_text(json.dumps(results), "utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--table", "--out", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == table


def test_without_a_gpu_the_full_check_refuses_and_points_to_reduced() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the full check would run")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", os.devnull],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "--reduced" in done.stderr


class Clock(Budget):
    """A budget on a clock the test moves."""

    def __init__(self, total: float, now: float):
        super().__init__(total)
        self.now = now

    def elapsed(self) -> float:
        return self.now


@pytest.mark.parametrize("prepare", [0.0, 90.0, 200.0])
def test_the_full_check_stays_in_its_budget_even_when_every_part_runs_to_its_timeout(prepare) -> None:
    parts = plan_parts(FULL, Path("sd15.safetensors"))
    assert [p.name for p in parts][:3] == ["8gb/full", "8gb/plain", f"8gb/{VAE_KIND}"]
    assert parts[-1].name == "train" and len(parts) == 4 * 2 + 1 + 3
    clock = Clock(FULL.total_seconds, prepare)
    given = {}
    for index, part in enumerate(parts):
        seconds = allotment(parts, index, FULL, clock)
        if seconds >= part.minimum:
            given[part.name] = seconds
            clock.now += seconds  # the worker runs until it is killed
    assert clock.now <= FULL.total_seconds < 8 * 60
    assert given.get("train", 0) >= FULL.train_minimum  # the reserve keeps the training's share


def test_the_sdxl_steps_come_last_and_the_check_stays_in_its_larger_budget() -> None:
    parts = plan_parts(FULL, Path("sd15.safetensors"), sdxl=True)
    sdxl = [p for p in parts if p.family == "sdxl"]
    assert [p.name for p in sdxl] == [f"sdxl/{n}/{k}" for n in ("12gb", "16gb", "24gb") for k in KINDS]
    assert parts[: len(parts) - len(sdxl)] == plan_parts(FULL, Path("sd15.safetensors"))
    total = FULL.total_seconds + FULL.sdxl_seconds
    clock = Clock(total, 120.0)  # building the random SDXL the first time
    given = {}
    for index, part in enumerate(parts):
        seconds = allotment(parts, index, FULL, clock)
        if seconds >= part.minimum:
            given[part.name] = seconds
            clock.now += seconds
    assert clock.now <= total < 14 * 60
    assert all(given.get(p.name, 0) >= p.minimum for p in sdxl), "each SDXL step keeps its minimum"
