"""The README table, rendered from ``bench/results.json``: one row per figure, with its command."""

from __future__ import annotations

from typing import Any

HEADER = ("Figure", "Compared with", "Ratio", "Goal", "Absolute (context)", "Command")


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _goal(entry: dict[str, Any]) -> str:
    goal = entry.get("goal")
    if not goal:
        return ""
    met = entry.get("meets_goal")
    return f"{goal} ({'met' if met else 'not met'})" if met is not None else goal


def speed_rows(entry: dict[str, Any]) -> list[tuple[str, ...]]:
    median = entry["median_seconds"]
    labels = {
        "full": "the defaults: TAESD identity decoder, speed options on",
        "full_no_reuse_pass": "VAE decoder, identity_reuse_pass off",
        "full_no_face_window": "VAE decoder, identity_face_window off",
        "full_no_speed_options": "VAE decoder, both speed options off",
        "mix": "the defaults, samples drawn by the task mix, as in a run",
        "full_vae_decoder": "identity_decoder=vae, speed options on",
    }
    rows = []
    cpu = entry.get("ratio_basis") == "cpu"
    if cpu:
        median = entry["cpu_median_seconds"]
    if entry.get("default_decoder") == "vae":
        labels = {**labels, "full": "the defaults: the VAE decodes (no TAESD for this family), speed options on",
                  "mix": "the defaults (the VAE decodes), samples drawn by the task mix, as in a run"}  # fmt: skip
    for kind, ratio in entry["ratios"].items():
        goal = {"full": _goal(entry)}.get(kind, "")
        context = f"{_seconds(median[kind])} vs {_seconds(median['plain'])} per step"
        if cpu:
            context = (
                f"CPU time, one torch thread: {context}; wall-clock ratio {entry['wall_ratios'][kind]:.2f}x"
            )
        rows.append((f"Phase-2 step time, full objective ({labels.get(kind, kind)}; profile {entry['profile']})",
                     "plain DreamBooth-LoRA step", _ratio(ratio), goal, context))  # fmt: skip
    return rows


def memory_rows(entry: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for name, profile in entry["profiles"].items():
        goal = _goal(entry) if name == entry["ratio_profile"] else ""
        context = f"{profile['full_peak_gb']:.2f} GB vs {profile['plain_peak_gb']:.2f} GB"
        if profile.get("fits_8gb") is not None:
            context += f"; fits 8 GB: {'yes' if profile['fits_8gb'] else 'no'}"
        rows.append((f"Peak memory of the full step, defaults (profile {name})", "plain step, same profile",
                     _ratio(profile["ratio"]), goal, context))  # fmt: skip
        if "vae_decoder_ratio" in profile:
            context = f"{profile['full_vae_decoder_peak_gb']:.2f} GB vs {profile['plain_peak_gb']:.2f} GB"
            rows.append((f"Peak memory of the full step, identity_decoder=vae (profile {name})",
                         "plain step, same profile", _ratio(profile["vae_decoder_ratio"]), "", context))  # fmt: skip
    return rows


def generate_rows(entry: dict[str, Any]) -> list[tuple[str, ...]]:
    median = entry["median_seconds"]
    size = "x".join(str(v) for v in entry["size"])
    context = f"{_seconds(median['ours'])} vs {_seconds(median['bare'])} ({entry['steps']} steps, {size})"
    return [
        (
            "Generation: our generate call",
            "bare StableDiffusionPipeline call",
            _ratio(entry["ratio"]),
            _goal(entry),
            context,
        )
    ]


def intake_rows(entry: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for name, photo in entry["photos"].items():
        stages = ", ".join(f"{key} {_seconds(value)}" for key, value in photo["stage_seconds"].items())
        context = f"{_seconds(photo['add_photo_seconds'])} per image, {photo['outcome']}; {stages}"
        rows.append(
            (f"Photo intake: {name}", "its face-model calls alone", _ratio(photo["ratio"]), "", context)
        )
    prepare = entry.get("prepare")
    for name, photo in (prepare or {}).get("photos", {}).items():
        goal = f"{prepare['goal']} ({'met' if photo['meets_goal'] else 'not met'})"
        context = f"{_seconds(photo['seconds'])} per photo, {photo['outcome'].split(' - ')[0]}; " + (
            f"face kit loaded once before: {_seconds(prepare['kit_load_seconds'])}"
        )
        rows.append((f"`magicapture prepare` per photo: {name}", "", "", goal, context))
    return rows


def studio_rows(entry: dict[str, Any]) -> list[tuple[str, ...]]:
    idle, busy, launch = entry["idle"], entry["under_training"], entry["launch"]
    return [
        ("Studio GET / latency, p50, during a demo training", "same request, idle", _ratio(entry["ratio"]), "",
         f"{busy['p50_ms']:.0f} ms vs {idle['p50_ms']:.0f} ms"),
        ("Studio GET / latency, p95, during a demo training", "same request, idle", _ratio(entry["ratio_p95"]), "",
         f"{busy['p95_ms']:.0f} ms vs {idle['p95_ms']:.0f} ms"),
        ("Studio launch to ready (--demo)", "bare Gradio app launch", _ratio(launch["ratio"]), "",
         f"{launch['studio_seconds']:.1f} s vs {launch['bare_gradio_seconds']:.1f} s"),
    ]  # fmt: skip


ARM_LABELS = {
    "with_ar": "ar_loss=rescaled, min/max detached (METHOD.md)",
    "with_ar_range_kept": "ar_loss=rescaled, ar_detach_range=false",
    "with_ar_outside_share": "ar_loss=outside_share",
}


def ablation_rows(entry: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per toy and AR form: the share outside with / without AR, and what moved with it."""
    if entry.get("missing"):
        return [
            (
                "Toy AR ablation",
                entry["baseline"],
                "n/a",
                entry["goal"],
                "bench/ar_ablation.py was not there in this run",
            )
        ]
    result = entry["result"]
    rows = []
    for toy, values in result["toys"].items():
        seeds = len(values["seeds"])
        run = (
            f"{seeds} seed{'s' if seeds > 1 else ''}, {result['phase1_steps']} + {result['phase2_steps']} steps, "
            f"{result['resolution']} px"
        )
        for arm, label in ARM_LABELS.items():
            default = arm == result["default_arm"]
            share = values["share"]
            ratio = share[arm] / share["without_ar"]
            pairs = [
                ("share outside", "share", ".3f"),
                ("mean attention", "mean_attention", ".2g"),
                ("rescaled outside", "normalised_outside", ".3f"),
                ("reconstruction", "reconstruction", ".4f"),
                ("token selects", "token_selects", ".3f"),
            ]
            context = "; ".join(
                f"{name} {values[key][arm]:{digits}} vs {values[key]['without_ar']:{digits}}"
                for name, key, digits in pairs
                if key in values
            )
            goal = _goal(entry) if default and toy == entry.get("toy", toy) else ""
            figure = f"Toy AR ablation ({toy} toy): share of attention outside the regions, {label}"
            rows.append((figure + (" (default)" if default else ""), entry["baseline"], _ratio(ratio), goal,
                         f"{context} ({run})"))  # fmt: skip
    return rows


ROWS = {
    "phase2_speed": speed_rows,
    "phase2_memory": memory_rows,
    "generate": generate_rows,
    "intake": intake_rows,
    "studio": studio_rows,
    "ar_ablation": ablation_rows,
}


MODEL_LABELS = {
    "sd15": "SD 1.5-shaped, random weights",
    "tiny": "tiny demo model",
    "tiny-sdxl": "the demo kit's tiny SDXL (SDXL's classes and conditioning, small widths, random weights)",
    "sdxl-512": "SDXL 1.0-shaped (2.6 B-parameter UNet, both text encoders), random weights, in fp32",
    "sdxl": "SDXL 1.0-shaped, random weights",
}
SDXL_SECTIONS = (("sdxl", "SDXL rows", "SDXL: "), ("sdxl_shaped", "SDXL-shaped rows", "SDXL-shaped: "))
"""The SDXL runs merged into a results file: key, the line naming the run, the rows' prefix."""


def machine_line(results: dict[str, Any]) -> str:
    machine = results["machine"]
    device = machine["gpu"] or machine["device"]
    sizes = results["sizes"]
    return (
        f"Measured {results['created'][:10]} by `{results['command']}` on {machine['cpu']} "
        f"({machine['cores_logical']} cores, {machine['ram_gb']:.1f} GB RAM), {device}, torch {machine['torch']}; "
        f"{MODEL_LABELS[sizes['model']]} at {sizes['resolution']} px."
    )


def benchmark_lines(benchmarks: dict[str, Any], prefix: str = "") -> list[str]:
    """The table rows of one run's benchmarks, each figure's name after ``prefix``."""
    lines = []
    for name, entry in benchmarks.items():
        if "error" in entry:
            lines.append(
                f"| {prefix}{name} | | failed | | {entry['error'].splitlines()[0]} | `{entry.get('command', '')}` |"
            )
            continue
        for figure, *rest in ROWS[name](entry):
            lines.append("| " + " | ".join((prefix + figure, *rest)) + f" | `{entry['command']}` |")
    return lines


def render_table(results: dict[str, Any]) -> str:
    """Markdown: a line naming the machine and run, then the table of every figure in ``results``.

    Each SDXL run merged into it (`SDXL_SECTIONS`: ``python -m bench --model tiny-sdxl`` under
    ``"sdxl"``, ``--model sdxl-512`` under ``"sdxl_shaped"``) gets its own line and its rows after
    the others, each named "SDXL: ..." or "SDXL-shaped: ...".
    """
    sections = [(results[key], line, prefix) for key, line, prefix in SDXL_SECTIONS if results.get(key)]
    lines = [machine_line(results)]
    for run, line, _ in sections:
        lines += ["", f"{line}: " + machine_line(run)]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += benchmark_lines(results["benchmarks"])
    for run, _, prefix in sections:
        lines += benchmark_lines(run["benchmarks"], prefix)
    return "\n".join(lines)
