"""bench: ``python -m bench --quick`` writes every figure, and the README table is rendered from them.

No timing is asserted: the benchmarks measure, they do not pass or fail on speed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ablation_result import assert_ablation_result

from bench.table import render_table

ROOT = Path(__file__).resolve().parent.parent
RATIOS = ("phase2_step_ratio", "phase2_peak_memory_ratio", "generate_time_ratio")
BENCHMARKS = ("phase2_memory", "phase2_speed", "generate", "intake", "studio", "ar_ablation")


def positive(value) -> bool:
    return (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real quick run, into a private cache and results file."""
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "results.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(folder / "cache"), "MAGICAPTURE_HOME": str(folder / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=2000, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text("utf-8"))
    assert json.loads(done.stdout) == results  # the same JSON is printed
    return results


@pytest.mark.slow
def test_quick_run_records_every_ratio_and_the_machine(quick_results: dict) -> None:
    for key in RATIOS:
        assert positive(quick_results[key]), key
    assert quick_results["phase2_step_ratio"] == quick_results["benchmarks"]["phase2_speed"]["ratio"]
    assert quick_results["phase2_peak_memory_ratio"] == quick_results["benchmarks"]["phase2_memory"]["ratio"]
    assert quick_results["generate_time_ratio"] == quick_results["benchmarks"]["generate"]["ratio"]
    machine = quick_results["machine"]
    assert machine["cpu"] and machine["device"] and machine["torch"]
    assert positive(machine["cores_logical"]) and positive(machine["ram_gb"])
    assert quick_results["sizes"]["model"] == "tiny" and quick_results["command"].startswith(
        "python -m bench --quick"
    )


@pytest.mark.slow
def test_quick_run_has_every_benchmark_with_baseline_ratio_and_command(quick_results: dict) -> None:
    benchmarks = quick_results["benchmarks"]
    assert tuple(benchmarks) == BENCHMARKS
    for name, entry in benchmarks.items():
        assert "error" not in entry, (name, entry.get("error"))
        assert entry["what"] and entry["baseline"] and entry["command"].startswith("python -m bench"), name
    speed = benchmarks["phase2_speed"]
    assert set(speed["ratios"]) == {
        "full",
        "full_no_reuse_pass",
        "full_no_face_window",
        "full_no_speed_options",
        "mix",
        "full_vae_decoder",
    }
    assert all(positive(value) for value in [*speed["ratios"].values(), *speed["median_seconds"].values()])
    memory = benchmarks["phase2_memory"]["profiles"]["cpu"]
    assert positive(memory["full_peak_gb"]) and positive(memory["plain_peak_gb"])
    assert positive(memory["vae_decoder_ratio"]) and positive(memory["full_vae_decoder_peak_gb"])
    generate = benchmarks["generate"]["median_seconds"]
    assert positive(generate["ours"]) and positive(generate["bare"])
    photos = benchmarks["intake"]["photos"]
    assert set(photos) == {"Tom_Hanks_54745.png", "astronaut.png"}
    assert photos["astronaut.png"]["outcome"] == "accepted" and positive(photos["astronaut.png"]["ratio"])
    studio = benchmarks["studio"]
    assert all(positive(v) for v in (studio["ratio"], studio["ratio_p95"], studio["launch"]["ratio"]))
    assert all(positive(v) for v in (*studio["idle"].values(), *studio["under_training"].values()))
    ablation = benchmarks["ar_ablation"]
    assert ablation.get("missing", False) != (ROOT / "bench" / "ar_ablation.py").is_file()
    if not ablation.get("missing"):
        result = ablation["result"]
        assert_ablation_result(result, {"plain", "twins"}, {"0"})
        share = result["toys"]["twins"]["share"]
        assert ablation["toy"] == "twins"
        assert ablation["ratio"] == round(share[result["default_arm"]] / share["without_ar"], 3)


@pytest.mark.slow
def test_the_ablations_toys_run_on_their_own_merge_back_into_the_whole(
    quick_results: dict, tmp_path: Path
) -> None:
    """The quick run's ablation (both toys, every arm, through ``python -m bench.ar_ablation``) split
    into its toys as runs of their own would print them; ``--merge`` puts them back together."""
    whole = quick_results["benchmarks"]["ar_ablation"]["result"]
    assert_ablation_result(whole, {"plain", "twins"}, {"0"})
    paths = []
    for toy in ("twins", "plain"):
        paths.append(tmp_path / f"{toy}.json")
        paths[-1].write_text(json.dumps({**whole, "toys": {toy: whole["toys"][toy]}}))
    merged = subprocess.run(
        [sys.executable, "-m", "bench.ar_ablation", "--merge", *map(str, paths)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(merged.stdout)["toys"] == {toy: whole["toys"][toy] for toy in ("twins", "plain")}


@pytest.mark.slow
def test_table_shows_each_figure_with_its_command(quick_results: dict) -> None:
    table = render_table(quick_results)
    lines = table.splitlines()
    assert lines[0].startswith("Measured ") and "python -m bench --quick" in lines[0]
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Figure")]
    # speed kinds, memory profile (VAE and tiny decoder), generation, photos, prepare's photos (with the
    # 12 MP one), studio, ablation (toy x AR form)
    assert len(rows) == 6 + 2 + 1 + 2 + 3 + 3 + 2 * 3
    assert all(row.rstrip().endswith("` |") for row in rows)
    assert f"{quick_results['phase2_step_ratio']:.2f}x" in table
    assert f"{quick_results['generate_time_ratio']:.2f}x" in table


def test_table_is_printed_from_a_results_file(tmp_path: Path) -> None:
    results = {
        "command": "python -m bench",
        "created": "2026-01-01T00:00:00+00:00",
        "machine": {"cpu": "Test CPU", "cores_logical": 2, "ram_gb": 8.0, "device": "cpu", "gpu": None, "torch": "2.0"},
        "sizes": {"model": "sd15", "resolution": 512},
        "benchmarks": {
            "generate": {
                "ratio": 1.02, "goal": "<= 1.05", "meets_goal": True, "median_seconds": {"ours": 10.2, "bare": 10.0},
                "steps": 3, "size": [512, 512], "command": "python -m bench --model sd15 --only generate",
            },
            "studio": {"error": "RuntimeError: no studio\nmore", "command": "python -m bench --model sd15 --only studio"},
        },
    }  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--table", "--out", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        "| Generation: our generate call | bare StableDiffusionPipeline call | 1.02x | <= 1.05 (met) |"
        in done.stdout
    )
    assert "10.20 s vs 10.00 s (3 steps, 512x512)" in done.stdout
    assert "| studio | | failed | | RuntimeError: no studio |" in done.stdout
    assert "SD 1.5-shaped, random weights at 512 px" in done.stdout


def test_the_readme_table_is_the_one_rendered_from_the_committed_results() -> None:
    results = json.loads((ROOT / "bench" / "results.json").read_text("utf-8"))
    assert results["command"] == "python -m bench" and results["sizes"]["model"] == "sd15"
    assert render_table(results).strip() in (ROOT / "README.md").read_text("utf-8")


def sdxl_run() -> dict:
    """An SDXL run's results as ``python -m bench --model tiny-sdxl`` writes them (the parts read here)."""
    return {
        "command": "python -m bench --model tiny-sdxl",
        "created": "2026-12-04T16:00:00+00:00",
        "machine": {"cpu": "Test CPU", "cores_logical": 2, "ram_gb": 8.0, "device": "cpu", "gpu": None,
                    "torch": "2.0", "torch_threads": 2},
        "sizes": {"model": "tiny-sdxl", "resolution": 256},
        "benchmarks": {
            "phase2_speed": {
                "ratios": {"full": 1.25}, "median_seconds": {"plain": 2.0, "full": 2.5}, "goal": "<= 1.3",
                "meets_goal": True, "profile": "cpu", "command": "python -m bench --model tiny-sdxl --only phase2_speed",
                "default_decoder": "vae",
            },
            "phase2_memory": {
                "ratio_profile": "cpu", "goal": "<= 1.1", "meets_goal": True,
                "command": "python -m bench --model tiny-sdxl --only phase2_memory",
                "profiles": {"12gb": {"ratio": 1.05, "full_peak_gb": 2.1, "plain_peak_gb": 2.0,
                                      "resident_before_steps_gb": {"plain": 1.8, "full": 1.9}}},
            },
        },
    }  # fmt: skip


def test_an_sdxl_run_is_merged_under_its_key_and_rendered_as_sdxl_rows(tmp_path: Path) -> None:
    from bench.__main__ import merged
    from engine.preflight import rows_from_results

    path = tmp_path / "results.json"
    main = {**sdxl_run(), "command": "python -m bench", "sizes": {"model": "sd15", "resolution": 512}}
    path.write_text(json.dumps(main))
    whole = merged(path, sdxl_run())
    assert whole["sdxl"] == sdxl_run() and {k: v for k, v in whole.items() if k != "sdxl"} == main
    assert merged(tmp_path / "none.json", sdxl_run()) == {"sdxl": sdxl_run()}
    lines = render_table(whole).splitlines()
    assert lines[2] == (
        "SDXL rows: Measured 2026-12-04 by `python -m bench --model tiny-sdxl` on Test CPU (2 cores, 8.0 GB "
        "RAM), cpu, torch 2.0; the demo kit's tiny SDXL (SDXL's classes and conditioning, small widths, "
        "random weights) at 256 px."
    )
    sdxl_rows = [line for line in lines if line.startswith("| SDXL: ")]
    assert len(sdxl_rows) == 2 and "| 1.25x | <= 1.3 (met) | 2.50 s vs 2.00 s per step |" in sdxl_rows[0]
    assert "(the defaults: the VAE decodes (no TAESD for this family)" in sdxl_rows[0]
    assert sdxl_rows[1].startswith("| SDXL: Peak memory of the full step, defaults (profile 12gb) |")
    rows = {(r.model, r.profile) for r in rows_from_results(whole)}
    assert {("tiny-sdxl", "12gb"), ("tiny-sdxl", "cpu"), ("sd15", "12gb")} <= rows


def test_an_sdxl_shaped_cpu_run_has_its_own_key_line_and_rows_beside_the_tiny_sdxl(tmp_path: Path) -> None:
    from bench.__main__ import merged
    from bench.settings import sizes_for
    from engine.preflight import rows_from_results

    sizes = sizes_for("sdxl-512", quick=False, gpu=False)
    assert (sizes.resolution, sizes.memory_profiles, sizes.time_basis) == (512, ("cpu", "12gb"), "cpu")
    assert sizes_for("sdxl", quick=False, gpu=True).resolution == 1024
    shaped = {**sdxl_run(), "command": "python -m bench --model sdxl-512",
              "sizes": {"model": "sdxl-512", "resolution": 512}}  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(
        json.dumps(
            {**sdxl_run(), "command": "python -m bench", "sizes": {"model": "sd15", "resolution": 512}}
        )
    )
    path.write_text(json.dumps(merged(path, sdxl_run())))
    whole = merged(path, shaped)
    assert whole["sdxl"] == sdxl_run() and whole["sdxl_shaped"] == shaped  # the tiny SDXL's run is kept
    lines = render_table(whole).splitlines()
    assert lines[2].startswith("SDXL rows: Measured 2026-12-04 by `python -m bench --model tiny-sdxl`")
    assert lines[4].startswith("SDXL-shaped rows: Measured 2026-12-04 by `python -m bench --model sdxl-512`")
    assert (
        "SDXL 1.0-shaped (2.6 B-parameter UNet, both text encoders), random weights, in fp32 at 512 px."
        in lines[4]
    )
    assert len([line for line in lines if line.startswith("| SDXL: ")]) == 2
    assert len([line for line in lines if line.startswith("| SDXL-shaped: ")]) == 2
    rows = {(r.model, r.profile) for r in rows_from_results(whole)}
    assert {("tiny-sdxl", "12gb"), ("sdxl", "12gb"), ("sd15", "12gb")} <= rows  # SDXL-shaped: any SDXL's


def test_the_random_sdxl_is_an_sdxl_diffusers_folder_in_fp16(tmp_path: Path, monkeypatch) -> None:
    """Built from SDXL's configs (here the tiny SDXL's, so that it stays small) and loaded as SDXL."""
    import engine.families.sdxl as sdxl
    from bench.workbench import SD15_VERSION, random_sdxl
    from engine.demo.sdxl import build_tiny_sdxl
    from engine.models import load_base, safetensors_header

    tiny = build_tiny_sdxl(tmp_path / "tiny")
    monkeypatch.setattr(sdxl, "SDXL_CONFIG", Path(tiny.folder))
    folder = random_sdxl(tmp_path / "random")
    base = load_base(folder, device="cpu")
    assert base.family.name == "sdxl" and list(base.unet.config.block_out_channels) == [32, 64, 64]
    assert base.tokenizer_2.pad_token == "!" and base.tokenizer.pad_token == "<|endoftext|>"
    header = safetensors_header(folder / "unet" / "diffusion_pytorch_model.safetensors")
    assert {entry["dtype"] for entry in header.values()} == {"F16"}
    assert (folder / "COMPLETE").read_text() == SD15_VERSION
    stamp = (folder / "unet" / "config.json").stat().st_mtime_ns
    assert random_sdxl(folder) == folder and (folder / "unet" / "config.json").stat().st_mtime_ns == stamp
