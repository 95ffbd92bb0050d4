"""Pre-flight estimate (table, fit and spill warnings, refinement, slowdown detector) and licences.

The slow test compares the estimate with a real tiny training on the CPU: the step-time figure is
measured by the benchmark's own step function right before the run, both with one torch thread, so
that the comparison is about the estimate and not about what else the machine is doing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from engine import preflight
from engine.assets import licence_notice
from engine.config import preset
from engine.events import PhaseStarted, StepDone
from engine.preflight import GB, DeviceInfo, Figures

ROOT = Path(__file__).resolve().parent.parent
CPU = DeviceInfo("cpu", "CPU", 16 * GB, False)


def row(profile: str, peak_gb: float, *, device: str = "cuda", model: str = "sd15", resolution: int = 512):
    return Figures(
        model=model,
        device=device,
        profile=profile,
        resolution=resolution,
        peak_bytes=round(peak_gb * GB),
        resident_bytes=round((peak_gb - 1.0) * GB),
        plain_peak_bytes=round((peak_gb - 0.3) * GB),
        phase1_step_s=0.5,
        phase2_step_s=1.0,
        phase1_from="the plain step, standing in for phase 1",
        measured="test figures",
    )


GPU_TABLE = [row("6gb", 4.6), row("8gb", 6.0), row("12gb", 8.9), row("24gb", 14.0)]


def gpu(total_gb: float, *, spill: bool) -> DeviceInfo:
    return DeviceInfo("cuda", "Test GPU", round(total_gb * GB), spill)


def sd15(**overrides):
    return preset("released", base_model=str(ROOT / "assets" / "sd15"), **overrides)


# -- the table ------------------------------------------------------------------------------


def bench_results(**speed) -> dict:
    """A results file as ``python -m bench`` writes it (the parts the table reads)."""
    return {
        "command": "python -m bench --quick",
        "created": "2025-01-02T03:04:05+00:00",
        "machine": {"cpu": "Test CPU", "cores_logical": 2, "torch": "2.x", "gpu": None, "torch_threads": 2},
        "sizes": {"model": "tiny", "resolution": 64},
        "benchmarks": {
            "phase2_memory": {
                "profiles": {
                    "cpu": {"full_peak_gb": 1.25, "plain_peak_gb": 1.2, "resident_before_steps_gb": 1.22},
                    "8gb": {
                        "full_peak_gb": 1.24,
                        "plain_peak_gb": 1.2,
                        "resident_before_steps_gb": {"plain": 1.1, "full": 1.21},
                    },
                }
            },
            "phase2_speed": {"profile": "cpu", "median_seconds": {"plain": 0.3, "full": 0.4, **speed}},
        },
    }


def test_the_table_is_built_from_bench_results():
    table = preflight.build_table([bench_results()])
    rows = {r["profile"]: Figures(**r) for r in table["rows"] if not r["estimated"]}
    assert set(rows) == {"cpu", "8gb"}, "SDXL's estimated rows come beside the measured ones"
    cpu = rows["cpu"]
    assert (cpu.model, cpu.device, cpu.resolution) == ("tiny", "cpu", 64)
    assert cpu.peak_bytes == round(1.25 * GB) and cpu.resident_bytes == round(1.22 * GB)
    assert (cpu.phase1_step_s, cpu.phase2_step_s) == (0.3, 0.4)
    assert "plain step" in cpu.phase1_from and "Test CPU" in cpu.measured and "--quick" in cpu.measured
    assert rows["8gb"].phase2_step_s is None, "speed was measured with the cpu profile only"
    assert rows["8gb"].resident_bytes == round(1.21 * GB), "the full step's resident set"
    timed = Figures(**preflight.build_table([bench_results(phase1=0.1)])["rows"][0])
    assert timed.phase1_step_s == 0.1 and timed.phase1_from == "a phase-1 step"
    kept = preflight.build_table(
        [bench_results()], keep=[GPU_TABLE[0], dataclasses.replace(cpu, peak_bytes=1)]
    )
    measured = [r for r in kept["rows"] if not r["estimated"]]
    assert len(measured) == 3 and Figures(**measured[1]).peak_bytes == cpu.peak_bytes


def test_the_shipped_table_covers_the_demo_model_on_the_cpu():
    table = preflight.load_table()
    demo = [r for r in table if (r.model, r.device, r.profile, r.resolution) == ("tiny", "cpu", "cpu", 64)]
    assert len(demo) == 1
    figures = demo[0]
    assert 0 < figures.resident_bytes < figures.peak_bytes < 8 * GB
    assert 0 < figures.phase2_step_s < 30 and 0 < figures.phase1_step_s < 30
    assert "python -m bench" in figures.measured
    about = json.loads(preflight.TABLE_FILE.read_text())["about"]
    assert "python -m engine.preflight build" in about


def test_a_missing_table_says_how_to_make_it(tmp_path):
    with pytest.raises(preflight.PreflightError, match="python -m engine.preflight build"):
        preflight.load_table(tmp_path / "none.json")


# -- estimating -----------------------------------------------------------------------------


def test_the_estimate_adds_up_the_steps_of_both_phases(tiny_sd):
    config = preset(
        "fast", base_model=str(tiny_sd.folder), resolution=64, device="cpu", vram_profile="cpu",
        phase1_steps=10, phase2_steps=20, gradient_accumulation_steps=2,
    )  # fmt: skip
    figures = Figures(**preflight.build_table([bench_results()])["rows"][0])
    found = preflight.estimate(config, CPU, [figures])
    assert (found.model, found.profile, found.micro_steps) == ("tiny", "cpu", 2)
    assert found.phase1_step_s == pytest.approx(0.6) and found.phase2_step_s == pytest.approx(0.8)
    assert found.total_s == pytest.approx(10 * 0.6 + 20 * 0.8)
    assert (
        found.peak_bytes == figures.peak_bytes
        and found.step_bytes == figures.peak_bytes - figures.resident_bytes
    )
    assert found.fits and not found.warnings
    text = preflight.summary(found)
    assert "of 16.0 GB" in text and "about 22 s for 30 steps" in text


def test_another_resolution_scales_the_step_figures():
    found = preflight.estimate(sd15(resolution=768, vram_profile="8gb"), gpu(24, spill=False), GPU_TABLE)
    scale = (768 / 512) ** 2
    assert found.phase2_step_s == pytest.approx(1.0 * scale)
    assert found.step_bytes == round(1.0 * GB * scale)
    assert found.resident_bytes == GPU_TABLE[1].resident_bytes


def test_auto_picks_the_profile_of_the_gpu_size():
    assert preflight.auto_profile(gpu(8, spill=False)) == "8gb"
    assert preflight.auto_profile(gpu(11.6, spill=False)) == "12gb"
    assert preflight.auto_profile(gpu(4, spill=False)) == "6gb"
    assert preflight.auto_profile(CPU) == "cpu"
    found = preflight.estimate(sd15(vram_profile="auto"), gpu(12, spill=False), GPU_TABLE)
    assert found.profile == "12gb"


def test_a_run_that_does_not_fit_is_refused_with_the_profile_that_does():
    found = preflight.estimate(sd15(vram_profile="12gb"), gpu(8, spill=False), GPU_TABLE)
    assert found.fits is False
    assert found.suggested_profile == "8gb", "the fastest profile that leaves room: 6.0 + 0.5 GB of 8 GB"
    assert "out-of-memory" in found.warnings[0] and "'8gb' profile" in found.warnings[0]
    roomy = preflight.estimate(sd15(vram_profile="8gb"), gpu(12, spill=False), GPU_TABLE)
    assert roomy.fits and not roomy.warnings and roomy.suggested_profile is None
    nothing = preflight.estimate(sd15(vram_profile="12gb"), gpu(4, spill=False), GPU_TABLE)
    assert nothing.suggested_profile is None and "Lower the resolution" in nothing.warnings[0]


def test_a_near_full_gpu_that_spills_gets_the_slowdown_warning():
    """A simulated 6.6 GB Windows GPU: the 8gb profile needs 6.5 GB, within a few percent of it."""
    found = preflight.estimate(sd15(vram_profile="8gb"), gpu(6.6, spill=True), GPU_TABLE)
    assert found.fits is True and found.needed_bytes > preflight.NEAR_FULL * found.device.total_bytes
    assert len(found.warnings) == 1
    warning = found.warnings[0]
    assert "within a few percent" in warning and "5 to 10 times slower" in warning
    assert "'6gb' profile" in warning
    linux = preflight.estimate(sd15(vram_profile="8gb"), gpu(6.6, spill=False), GPU_TABLE)
    assert "close other programs" in linux.warnings[0] and "slower" not in linux.warnings[0]
    over = preflight.estimate(sd15(vram_profile="12gb"), gpu(8, spill=True), GPU_TABLE)
    assert over.fits is False and "more than" in over.warnings[0] and "5 to 10 times" in over.warnings[0]


def test_without_figures_the_estimate_waits_for_the_first_steps():
    found = preflight.estimate(sd15(vram_profile="8gb"), gpu(8, spill=True), [])
    assert found.peak_bytes is None and found.total_s is None and found.fits is None
    assert "first steps" in found.basis and not found.warnings
    assert "peak memory not known yet" in preflight.summary(found)


def test_spill_is_possible_on_windows_and_wsl(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    assert preflight.spill_possible()
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(platform, "release", lambda: "5.15.90.1-microsoft-standard-WSL2")
    assert preflight.spill_possible()
    monkeypatch.setattr(platform, "release", lambda: "6.8.0-generic")
    assert not preflight.spill_possible()


def test_the_model_size_is_read_from_the_base_model(tiny_sd):
    assert preflight.model_size(str(tiny_sd.folder)) == "tiny"
    assert preflight.model_size(str(tiny_sd.single_file)) == "tiny"
    assert preflight.model_size(str(ROOT / "assets" / "sd15")) == "sd15"
    assert preflight.model_size("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd15"


# -- during the run -------------------------------------------------------------------------


def timed_events(phase_seconds: dict[int, list[float]], start: float = 1000.0) -> list:
    events, now, total = [], start, sum(len(v) for v in phase_seconds.values())
    done = 0
    for phase, seconds in phase_seconds.items():
        events.append(PhaseStarted(phase=phase, steps=len(seconds), description="", time=now))
        for index, value in enumerate(seconds, start=1):
            now += value
            done += 1
            events.append(
                StepDone(
                    phase=phase, step=index, phase_steps=len(seconds), global_step=done, total_steps=total,
                    losses={}, lr=0.0, it_per_s=1.0, eta_s=0.0, time=now,
                )
            )  # fmt: skip
    return events


def test_step_seconds_come_from_the_event_times():
    seconds = preflight.step_seconds(timed_events({1: [3.0, 1.0, 1.5], 2: [4.0, 2.0]}))
    assert seconds == {1: [3.0, 1.0, 1.5], 2: [4.0, 2.0]}


def test_refining_takes_the_measured_step_times_and_peak():
    found = preflight.estimate(
        sd15(vram_profile="8gb", phase1_steps=100, phase2_steps=200), gpu(12, spill=False), GPU_TABLE
    )
    assert found.total_s == pytest.approx(100 * 0.5 + 200 * 1.0)
    # Ten phase-1 steps, the first a slow warm-up, the rest 1.5 s: phase 1 takes its median,
    # phase 2 keeps its figure until it starts.
    seconds = {1: [9.0] + [1.5] * 9}
    better = preflight.refine(found, seconds, table=GPU_TABLE)
    assert better.refined and better.done == (10, 0)
    assert better.phase1_step_s == 1.5 and better.phase2_step_s == 1.0
    assert better.remaining_s == pytest.approx(90 * 1.5 + 200 * 1.0)
    # In phase 2, a measured peak above the memory turns into a warning with a smaller profile.
    seconds = {1: [9.0] + [1.5] * 99, 2: [5.0, 2.0, 2.0, 2.2]}
    worse = preflight.refine(found, seconds, peak_bytes=round(11.8 * GB), table=GPU_TABLE)
    assert worse.phase2_step_s == 2.0 and worse.remaining_s == pytest.approx(196 * 2.0)
    assert worse.fits is False and worse.suggested_profile == "6gb", "the figures scaled by what was measured"
    assert "about 6 min 32 s left" in preflight.summary(worse)
    resumed = preflight.refine(found, {2: [5.0, 2.0]}, done=(100, 50), table=GPU_TABLE)
    assert resumed.remaining_s == pytest.approx(150 * 2.0)


def test_without_figures_the_first_steps_give_the_estimate():
    found = preflight.estimate(
        sd15(vram_profile="8gb", phase1_steps=10, phase2_steps=10), gpu(8, spill=True), []
    )
    better = preflight.refine(found, {1: [4.0, 1.0, 1.0]}, peak_bytes=round(7.8 * GB), table=GPU_TABLE)
    assert better.phase1_step_s == 1.0 and better.phase2_step_s == pytest.approx(2.0)
    assert better.peak_bytes == round(7.8 * GB) and better.suggested_profile == "6gb"
    assert better.fits is False and "5 to 10 times slower" in better.warnings[0]


def test_the_slowdown_detector_fires_when_a_gpu_starts_spilling():
    """Steps of a GPU that fills up: 0.5 s each, then 4x slower once the driver pages to system memory."""
    steady = [6.0] + [0.5, 0.52, 0.49, 0.51, 0.5, 0.5, 0.48]
    assert preflight.step_time_jump(steady + [0.5, 0.51, 0.49]) is None
    spilled = steady + [2.0, 2.1, 1.9, 2.2, 2.0]
    ratio = preflight.step_time_jump(spilled)
    assert ratio == pytest.approx(4.0, rel=0.05)
    assert "4 times as long" in preflight.jump_warning(ratio)
    assert preflight.step_time_jump(steady + [1.2, 1.3, 1.2, 1.1, 1.2]) is None, "2.4x is under the 3x line"
    assert preflight.step_time_jump([0.5] * 6 + [3.0] * 3) is None, "too few steps to judge"
    assert preflight.step_time_jump(steady + [0.5, 9.0, 0.5, 0.5, 0.5]) is None, "one slow step is not a jump"


def test_the_training_view_shows_the_slowdown_warning(tmp_path):
    from studio.train import fold, progress_html

    view = fold(timed_events({1: [6.0] + [0.5] * 7 + [2.0] * 5}))
    assert view.state == "running" and len(view.warnings) == 1
    assert "4 times as long" in progress_html(view, None)


# -- the estimate against a real tiny run -----------------------------------------------------

PHASE2_STEPS = 30
"""Phase-2 steps of the run, and timed steps of each benchmark kind: enough for steady medians."""

MEASURE_FIGURES = """
import json, sys, tempfile, time
from pathlib import Path

time.perf_counter = time.process_time  # the benchmark's clock counts this process's CPU seconds
from bench.memory import measure
from bench.settings import sizes_for
from bench.speed import run
from bench.steps import make_trainer
from bench.workbench import prepare

home = Path(sys.argv[1])
bench = prepare("tiny", home)
memory = measure(bench, "cpu", "full", 2)
sizes = sizes_for("tiny", True, False)
import dataclasses
sizes = dataclasses.replace(sizes, warmup_steps=2, timed_steps=int(sys.argv[2]), option_kinds=())
speed = run(make_trainer(bench), sizes, "test")
print(json.dumps({"memory": memory, "speed": speed, "home": str(bench.home)}))
"""

TRAIN_AND_MEASURE = """
import ctypes, json, os, sys, time
from pathlib import Path
from engine.config import preset
from engine.events import PhaseStarted, StepDone
from engine.store import ProjectStore
from engine.training import train
from bench.workbench import PROJECT

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

from bench.workbench import prepare

home = prepare("tiny", Path(sys.argv[1])).home  # a project of its own, with the benchmark's photos
base, phase1, phase2 = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
found = {"seconds": {1: [], 2: []}}
last = [None]

def on_event(event):
    if isinstance(event, PhaseStarted):
        last[0] = time.process_time()
        if event.phase == 2:  # start phase 2 from the memory in use, as the benchmark's process does
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            found["resident"] = status("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
    elif isinstance(event, StepDone):
        now = time.process_time()
        found["seconds"][event.phase].append(now - last[0])
        last[0] = now
        if event.phase == 2:
            found["peak"] = status("VmHWM")

config = preset("released", base_model=base, resolution=64, phase1_steps=phase1, phase2_steps=phase2,
                latent_cache_variants=1, preview_every=0, checkpoint_every=1000, device="cpu", vram_profile="cpu",
                tiny_decoder_model=sys.argv[5],
                # as the benchmark does: the identity branch runs on every step (random weights draw no face)
                identity_fallback_landmarks=True)
train(ProjectStore(home).open(PROJECT), config, on_event=on_event)
print(json.dumps(found))
"""


def run_scripts(*scripts: tuple[str, ...]) -> list[dict]:
    """Run the scripts (code, then arguments) side by side, one torch thread each; their JSON results.

    Side by side, the benchmark and the run share whatever else loads the machine, so its load
    changes neither's figures more than the other's.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for code, *args in scripts
    ]  # fmt: skip
    results = []
    for process in processes:
        out, err = process.communicate()
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak resident-set reset"
)
def test_the_estimate_is_within_a_quarter_of_a_tiny_training_on_the_cpu(tmp_path):
    """Bench figures measured now, the table made from them, the estimate, and a real run to compare.

    Memory on the CPU is the process's resident set, most of it the libraries; the run and the
    benchmark are compared on the same three quantities: the peak resident set during phase 2, the
    resident set when phase 2 starts (freed heap returned to the system first, as in the
    benchmark's process, which never ran phase 1), and what the steps add to it. The last is a few
    tens of MiB on the tiny model: the benchmark repeats one composed sample, while a run draws
    other views and kinds whose new shapes grow the allocator's caches by some ten MiB more, so it
    is held to the same order of magnitude only. Time: the benchmark's full step on samples drawn as
    the run draws them (source, reference and composed: a reference step takes no identity loss)
    against the run's median phase-2 step, both on one torch thread, counted in CPU seconds of the process (on an
    idle machine the same as wall seconds) and measured side by side, so that other work on the machine
    weighs on both alike and does not decide it.
    """
    from engine.demo import build_demo_kit, default_kit_folder

    kit = build_demo_kit(default_kit_folder())
    figures, run = run_scripts(
        (MEASURE_FIGURES, str(tmp_path / "bench"), str(PHASE2_STEPS)),
        (
            TRAIN_AND_MEASURE,
            str(tmp_path / "run"),
            str(kit.sd.folder),
            "3",
            str(PHASE2_STEPS),
            str(kit.tiny_decoder),
        ),
    )
    results = {
        "command": "test", "created": "2025-01-01T00:00:00", "sizes": {"model": "tiny", "resolution": 64},
        "machine": {"cpu": "this machine", "cores_logical": os.cpu_count(), "torch": "test", "gpu": None},
        "benchmarks": {
            "phase2_memory": {"profiles": {"cpu": {
                "full_peak_gb": figures["memory"]["peak_bytes"] / GB,
                "plain_peak_gb": figures["memory"]["peak_bytes"] / GB,
                "resident_before_steps_gb": figures["memory"]["resident_before_steps_bytes"] / GB,
            }}},
            "phase2_speed": figures["speed"],
        },
    }  # fmt: skip
    table = [Figures(**r) for r in preflight.build_table([results])["rows"]]
    config = preset(
        "released", base_model=str(kit.sd.folder), resolution=64, phase1_steps=3, phase2_steps=PHASE2_STEPS, device="cpu",
        vram_profile="cpu",
    )  # fmt: skip
    found = preflight.estimate(config, CPU, table)

    step_bytes = run["peak"] - run["resident"]
    phase2 = statistics.median(run["seconds"]["2"][1:])
    print(
        f"peak {found.peak_bytes / GB:.3f} GB estimated, {run['peak'] / GB:.3f} GB measured; "
        f"resident {found.resident_bytes / GB:.3f} GB estimated, {run['resident'] / GB:.3f} GB measured; "
        f"steps add {found.step_bytes / 2**20:.1f} MiB estimated, {step_bytes / 2**20:.1f} MiB measured; "
        f"phase-2 step {found.phase2_step_s:.3f} s estimated, {phase2:.3f} s measured"
    )
    assert found.peak_bytes == pytest.approx(run["peak"], rel=0.25)
    assert found.resident_bytes == pytest.approx(run["resident"], rel=0.25)
    assert 0.5 < step_bytes / found.step_bytes < 2.0
    assert found.phase2_step_s == pytest.approx(phase2, rel=0.25)
    better = preflight.refine(found, {int(k): v for k, v in run["seconds"].items()}, table=table)
    assert better.phase2_step_s == pytest.approx(phase2) and better.remaining_s == 0


# -- licences -------------------------------------------------------------------------------


def test_the_licence_notice_names_the_non_commercial_weights_and_their_replacements():
    notice = licence_notice(
        preflight.assets_in_use(commercial=False, restore="codeformer"), alternatives=True
    )
    assert "buffalo_l" in notice and "codeformer" in notice
    assert "YuNet and SFace" in notice and "GFPGAN replaces CodeFormer" in notice
    gfpgan = licence_notice(preflight.assets_in_use(commercial=False, restore="gfpgan"), alternatives=True)
    assert "codeformer" not in gfpgan
    assert (
        licence_notice(preflight.assets_in_use(commercial=True, restore="gfpgan"), alternatives=True) is None
    )
    assert set(preflight.assets_in_use(commercial=True, restore="gfpgan")) == {
        "yunet", "sface", "bisenet", "gfpgan_v1.4",
    }  # fmt: skip


@pytest.fixture
def demo_assets(monkeypatch):
    """The demo kit's stand-ins as the asset cache (offline), restored after the test."""
    from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit

    for name in ("MAGICAPTURE_ASSETS", "MAGICAPTURE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
    kit = build_demo_kit(default_kit_folder())
    use_demo_kit(kit)
    return kit


@pytest.fixture
def requested(monkeypatch) -> list[tuple[str, bool]]:
    """Every asset the code asks the registry for, with its commercial flag."""
    from engine import assets, identity
    from engine.model_cache import ModelCache

    calls: list[tuple[str, bool]] = []
    real = assets.asset_path

    def recording(name, **kwargs):
        calls.append((name, kwargs.get("commercial", False)))
        return real(name, **kwargs)

    monkeypatch.setattr(assets, "asset_path", recording)
    monkeypatch.setattr(identity, "_FACE_KITS", ModelCache())
    return calls


def test_the_studio_in_commercial_mode_loads_no_non_commercial_face_model(demo_assets, requested, tmp_path):
    from engine.store import ProjectStore
    from studio.app import Studio, licence_html

    studio = Studio(ProjectStore(tmp_path))
    assert "buffalo_l" in licence_html(studio) and "Commercial use" in licence_html(studio)
    studio.face_kit()
    assert "buffalo_l" in [name for name, _ in requested]
    requested.clear()
    studio.update_settings(dataclasses.replace(studio.settings, commercial=True))
    kit = studio.face_kit()
    assert kit.commercial and "recogniser" not in kit.fallbacks
    assert {name for name, _ in requested} == {"yunet", "sface", "bisenet"}
    assert all(commercial for _, commercial in requested)
    assert "Commercial use is on" in licence_html(studio) and "buffalo_l" not in licence_html(studio)


def test_in_demo_mode_the_licence_notice_says_the_stand_ins_have_no_terms(demo_assets, tmp_path, monkeypatch):
    """The header says every model is a random stand-in; the licence box names the real models' terms
    as the real models' terms, not as those of the weights in use."""
    from engine.assets.registry import DEMO_STANDINS_LEAD
    from engine.store import ProjectStore
    from studio.app import Studio, licence_html

    studio = Studio(ProjectStore(tmp_path / "demo"))
    shown = licence_html(studio)
    assert DEMO_STANDINS_LEAD in shown and shown.index(DEMO_STANDINS_LEAD) < shown.index("buffalo_l")
    own = tmp_path / "assets"
    own.mkdir()
    monkeypatch.setenv("MAGICAPTURE_ASSETS", str(own))  # a cache without the demo marker
    assert DEMO_STANDINS_LEAD not in licence_html(Studio(ProjectStore(tmp_path / "real")))


@pytest.mark.slow
def test_the_commercial_flag_keeps_every_command_off_non_commercial_weights(
    demo_assets, requested, isolated_home, tmp_path, capsys
):
    """prepare, train, generate (restore, upscale) and eval with --commercial: no buffalo_l, no CodeFormer."""
    from PIL import Image
    from skimage import data

    from engine.cli import main
    from engine.store import ProjectStore

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    for role in ("source", "reference"):
        main(["prepare", "anna", str(photo), "--role", role, "--commercial"])
    main([
        "train", "anna", "--commercial", "--base", str(demo_assets.sd.folder), "--profile", "cpu",
        *[f"--set={pair}" for pair in ("resolution=64", "phase1_steps=1", "phase2_steps=2", "device=cpu",
                                       "preview_every=0", "latent_cache_variants=1",
                                       f"tiny_decoder_model={demo_assets.tiny_decoder}")],
    ])  # fmt: skip
    main(
        [
            "generate",
            "anna",
            "--n",
            "1",
            "--steps",
            "2",
            "--commercial",
            "--restore",
            "gfpgan",
            "--upscale",
            "2",
        ]
    )
    main(["eval", "anna", "--commercial"])
    names = {name for name, _ in requested}
    assert {"yunet", "sface", "gfpgan_v1.4", "realesrgan_x2plus"} <= names
    assert not names & {"buffalo_l", "codeformer"}, names
    assert all(commercial for name, commercial in requested if name != "laion_aesthetic")
    err = capsys.readouterr().err
    assert "Licence:" not in err and "Pre-flight estimate:" in err

    project = ProjectStore().open("anna")
    before = len(project.manifest()["outputs"])
    with pytest.raises(SystemExit) as stopped:
        main(["generate", "anna", "--n", "1", "--steps", "2", "--commercial", "--restore", "codeformer"])
    assert stopped.value.code == 2
    assert "use --restore gfpgan instead" in capsys.readouterr().err
    assert len(project.manifest()["outputs"]) == before, "refused before generating anything"

    requested.clear()
    main(["prepare", "ben", str(photo), "--role", "source"])
    assert "buffalo_l" in {name for name, _ in requested}
    notice = capsys.readouterr().err
    assert notice.count("Licence:") == 1 and "buffalo_l" in notice and "--commercial" in notice
