"""``python -m bench.gpu_check``: the prepared GPU check, one command and one JSON file.

On a CUDA machine with no internet it builds SD 1.5-shaped models with random weights
(`bench.workbench`, model ``sd15``) and, in fp16 at 512 px, within `FULL.total_seconds`:

- per VRAM profile (`engine.devices.PROFILES`), the full phase-2 step and the plain DreamBooth-LoRA
  step (`bench.steps`), each in a worker process of its own (`bench.workers`) so that peaks do not mix (as
  `bench.memory`): peak ``torch.cuda.max_memory_allocated``, steps per second, non-finite losses
  and gradients, gradient-scaler skips (`bench.steps.checked_optimise`);
- the identity branch's windowed VAE decode (`engine.losses.face_windows`, `crop_windows`) against
  the same region of a full decode, and TAESD (``identity_decoder="tiny"``) against the VAE on the
  same latents, in 8-bit pixel levels;
- with ``--base PATH`` (a real SD 1.5: diffusers folder or ``.safetensors``), the same decodes on
  it and a short real training on the demo project (`engine.demo.portraits.make_project`), with
  the run's attention level and face-detection rate.

With ``--sdxl`` it also builds an SDXL-shaped model with random weights (SDXL 1.0 base's configs,
``assets/sdxl``; once, about 7 GB in the cache) and measures, per SDXL profile
(`engine.devices.SDXL_PROFILES`), its full and plain phase-2 steps in fp16 at 1024 px, within
`FULL.sdxl_seconds` more: the headline there is the 12 GB profile's peak (goal under 12 GB,
stretch under 10 GB).

It writes `DEFAULT_OUT` (``--out`` to change). ``--reduced`` runs the same parts on the CPU on the
demo kit's tiny model in fp32 with few steps and two profiles (the test suite's check; with
``--sdxl``, the tiny SDXL with its 12 GB profile).
``--table`` renders the README rows from the JSON. Every part runs under a time budget (a
worker's timeout and its step budget); progress goes to stderr. README.md ("GPU check") documents
each key.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from bench.workbench import Workbench

SCHEMA = 1
DEFAULT_OUT = Path(__file__).resolve().parent / "gpu_check.json"
KINDS = ("full", "plain")
VAE_KIND = "full_vae_decoder"
"""The full step with ``identity_decoder="vae"`` (METHOD.md's decoder; ``full`` has the default, TAESD),
measured for the headline profile."""
HEADLINE_PROFILE = "8gb"
GOAL_GB = 8.0
STRETCH_GB = 6.0
EDGE_PX = 16
"""Width of the band inside the decoded window's border (its sides inside the image) compared on its own."""
TRAIN_PROFILE = "8gb"
DEMO_PROJECT = "gpu-check-demo"
PENDING = (
    "pending: the run emitted no MethodReport event (engine/events.py, engine/training/monitor.py), "
    "so its attention level and face-detection rate are unknown"
)


@dataclass(frozen=True)
class Plan:
    """How much one mode measures and how long each part may take (seconds)."""

    mode: str
    model: str
    profiles: tuple[str, ...]
    """In the order they run: the headline profile first."""
    max_steps: int
    warmup_steps: int
    """Untimed steps at the start of each worker (their peak, losses and skips still count)."""
    step_seconds: float
    """A worker stops stepping after this long (once it has a timed step)."""
    step_timeout: float
    decode_timeout: float
    train_timeout: float
    minimum: float
    """A worker is skipped when less than this is left for it (the training: ``train_minimum``)."""
    train_minimum: float
    total_seconds: float
    parallel: int
    """Workers running at once (1 on a GPU, so that steps per second are the step's own)."""
    train_steps: tuple[int, int]
    preview_steps: int
    sdxl_model: str
    sdxl_profiles: tuple[str, ...]
    """With ``--sdxl``: the SDXL profiles measured, the headline (12gb) first."""
    sdxl_step_timeout: float
    sdxl_seconds: float
    """Added to the budget with ``--sdxl``."""


FULL = Plan(
    mode="full", model="sd15", profiles=("8gb", "6gb", "12gb", "24gb"), max_steps=10, warmup_steps=2,
    step_seconds=6, step_timeout=60, decode_timeout=60, train_timeout=150, minimum=25, train_minimum=60,
    total_seconds=450, parallel=1, train_steps=(10, 20), preview_steps=10,
    sdxl_model="sdxl", sdxl_profiles=("12gb", "16gb", "24gb"), sdxl_step_timeout=90, sdxl_seconds=360,
)  # fmt: skip
REDUCED = Plan(
    mode="reduced", model="tiny", profiles=("8gb", "24gb"), max_steps=2, warmup_steps=1,
    step_seconds=20, step_timeout=240, decode_timeout=180, train_timeout=240, minimum=10, train_minimum=10,
    total_seconds=600, parallel=2, train_steps=(2, 2), preview_steps=2,
    sdxl_model="tiny-sdxl", sdxl_profiles=("12gb",), sdxl_step_timeout=240, sdxl_seconds=300,
)  # fmt: skip
SDXL_HEADLINE_PROFILE = "12gb"
SDXL_GOAL_GB = 12.0
SDXL_STRETCH_GB = 10.0


class Budget:
    """The whole check's time: each part gets what it wants, less what the parts after it need."""

    def __init__(self, total: float):
        self.total = total
        self.began = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    def allot(self, wanted: float, reserve: float) -> float:
        return max(0.0, min(wanted, self.total - self.elapsed() - reserve))


def progress(budget: Budget | None, message: str) -> None:
    stamp = f"[{budget.elapsed():5.0f} s] " if budget else ""
    print(f"gpu_check: {stamp}{message}", file=sys.stderr, flush=True)


# Workers (each in a fresh process) -----------------------------------------------------------


def measure_steps(
    bench: Workbench, profile: str, kind: str, max_steps: int, warmup: int, seconds: float, deadline: float
) -> dict[str, Any]:
    """Steps of ``kind`` with ``profile``'s options: peak, speed and the numbers' health."""
    from bench.memory import current_bytes, peak_bytes, reset_peak
    from bench.steps import KINDS as STEP_KINDS
    from bench.steps import checked_optimise, make_trainer, options_record, step_function, synchronise

    trainer = make_trainer(bench, profile, identity=kind != "plain")
    run = step_function(trainer, STEP_KINDS[kind], checked_optimise)
    device, options = trainer.device, trainer.options
    resident = current_bytes(device)
    method = reset_peak(device)
    healths, times = [], []
    began = time.perf_counter()
    for seed in range(max_steps):
        synchronise(device)
        start = time.perf_counter()
        healths.append(run(seed))
        synchronise(device)
        times.append(time.perf_counter() - start)
        enough = len(times) > warmup
        if enough and (time.perf_counter() - began > seconds or time.time() > deadline):
            break
    peak = peak_bytes(device, method)
    timed = times[warmup:] or times[-1:]
    scales = [h.loss_scale for h in healths if h.loss_scale is not None]
    return {
        "profile": profile,
        "kind": kind,
        "peak_bytes": peak,
        "peak_gb": _gb(peak),
        "resident_gb": _gb(resident),
        "method": method,
        "steps": len(healths),
        "timed_steps": len(timed),
        "steps_per_second": round(len(timed) / sum(timed), 4),
        "median_step_seconds": round(statistics.median(timed), 4),
        "first_step_seconds": round(times[0], 3),
        "nonfinite_loss_steps": sum(not h.loss_finite for h in healths),
        "nonfinite_grad_steps": sum(h.nonfinite_grads > 0 for h in healths),
        "nonfinite_grad_values": sum(h.nonfinite_grads for h in healths),
        "scaler_skips": sum(h.skipped for h in healths),
        "loss_scale": scales[-1] if scales else None,
        "losses": [h.loss if math.isfinite(h.loss) else None for h in healths],
        "options": {
            **options_record(options),
            "weight_dtype": str(options.weight_dtype).removeprefix("torch."),
            "identity_dtype": str(options.identity_dtype).removeprefix("torch.")
            if options.identity_dtype
            else None,
        },
    }


def _difference(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, Any] | None:
    """Max and mean absolute difference of two decodes ``[B, 3, H, W]`` in 8-bit levels, over ``mask [B, 1, H, W]``.

    Non-finite values are left out (``nonfinite_values`` counts them); None when nothing is left.
    """
    import torch

    levels = (a.float().clamp(-1, 1) - b.float().clamp(-1, 1)).abs() * 127.5
    keep = torch.isfinite(levels)
    if mask is not None:
        keep &= mask.expand_as(levels)
    if not keep.any():
        return None
    levels = levels[keep]
    return {"max": round(float(levels.max()), 3), "mean": round(float(levels.mean()), 4)}


def _box_mask(
    boxes: torch.Tensor, shape: tuple[int, ...], offsets: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, 1, H, W]`` True inside each box (pixels; shifted by ``offsets [B, 2]`` x, y)."""
    import torch

    height, width = shape[-2:]
    mask = torch.zeros((len(boxes), 1, height, width), dtype=torch.bool)
    for index, box in enumerate(boxes.tolist()):
        dx, dy = offsets[index].tolist() if offsets is not None else (0, 0)
        x1, y1 = max(0, math.floor(box[0] - dx)), max(0, math.floor(box[1] - dy))
        x2, y2 = min(width, math.ceil(box[2] - dx)), min(height, math.ceil(box[3] - dy))
        mask[index, 0, y1:y2, x1:x2] = True
    return mask


def _edge_mask(corners: torch.Tensor, side_px: int, image: tuple[int, int], band: int) -> torch.Tensor:
    """``[B, 1, S, S]`` True within ``band`` px of the window's sides that lie inside the image."""
    import torch

    height, width = image
    mask = torch.zeros((len(corners), 1, side_px, side_px), dtype=torch.bool)
    for index, (x, y) in enumerate((corners * 8).tolist()):
        if x > 0:
            mask[index, 0, :, :band] = True
        if x + side_px < width:
            mask[index, 0, :, side_px - band :] = True
        if y > 0:
            mask[index, 0, :band, :] = True
        if y + side_px < height:
            mask[index, 0, side_px - band :, :] = True
    return mask


def _window_regions(full: torch.Tensor, corners: torch.Tensor, side_px: int) -> torch.Tensor:
    """The pixels of each full decode that its face window covers (corners in latents, 8 px each)."""
    import torch

    return torch.stack(
        [
            image[:, y * 8 : y * 8 + side_px, x * 8 : x * 8 + side_px]
            for image, (x, y) in zip(full, corners.tolist(), strict=True)
        ]
    )


def measure_decodes(
    bench: Workbench, model: str, tiny_decoder: str | None, resolution: int
) -> dict[str, Any]:
    """The identity branch's windowed VAE decode against a full decode, and TAESD against the VAE.

    The latents are the VAE encodings (distribution means) of the benchmark project's photos at
    ``resolution``, encoded as the latent cache is (weights' dtype); the windows come from their
    face boxes and the decodes run as the identity branch runs them under the headline profile
    (`Options.identity_dtype`: bf16 or fp32 on a fp16 run, with the branch's own VAE copy).
    """
    import torch

    from engine.config import preset
    from engine.data import load_images
    from engine.losses import crop_windows, face_windows
    from engine.models import load_base, load_tiny_decoder
    from engine.training.identity_branch import IdentityBranch, identity_vae
    from engine.training.options import make_accelerator, resolve_options

    config = preset("released", vram_profile=HEADLINE_PROFILE)
    options = resolve_options(config)
    device, dtype, branch_dtype = options.device, options.weight_dtype, options.identity_dtype
    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    base = load_base(model, device=str(device), dtype=names[dtype])
    vae, scale = base.vae, base.family.latent_scale(base.vae)
    decoder_vae = identity_vae(vae, branch_dtype) or vae
    branch, accelerator = IdentityBranch(None, None, None, dtype=branch_dtype), make_accelerator(options)
    images = load_images(bench.project(), resolution)
    pixels = torch.stack([image.pixels for image in images]).to(device, dtype)
    boxes = torch.stack([image.bbox for image in images])
    margin = config.identity_window_margin
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean.float() * scale
        side, corners = face_windows(boxes.to(device), latents.shape[-2:], 8, margin)
        window = crop_windows(latents, side, corners)
        with branch.precision(accelerator):
            full = decoder_vae.decode((latents / scale).to(decoder_vae.dtype)).sample.float().cpu()
            windowed = decoder_vae.decode((window / scale).to(decoder_vae.dtype)).sample.float().cpu()
        tiny = tiny_window = None
        if tiny_decoder is not None:
            tiny_dtype = branch_dtype if branch_dtype == torch.float32 else dtype
            decoder = load_tiny_decoder(tiny_decoder, device, tiny_dtype)
            with branch.precision(accelerator):
                tiny = decoder.decode(latents.to(decoder.dtype)).sample.float().cpu()
                tiny_window = decoder.decode(window.to(decoder.dtype)).sample.float().cpu()
    corners = corners.cpu()
    side_px = side * 8
    region = _window_regions(full, corners, side_px)
    face_in_window = _box_mask(boxes, windowed.shape, corners * 8)
    edge = _edge_mask(corners, side_px, full.shape[-2:], EDGE_PX)
    decodes = [full, windowed, *((tiny, tiny_window) if tiny is not None else ())]
    result: dict[str, Any] = {
        "model": str(model),
        "dtype": str(dtype).removeprefix("torch."),
        "precision": str(
            branch_dtype
            or {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options.mixed_precision, torch.float32)
        ).removeprefix("torch."),
        "resolution": resolution,
        "images": len(images),
        "latents": "VAE encodings (means) of the benchmark project's photos",
        "window": {"side_latents": side, "side_px": side_px, "corners": corners.tolist(), "margin": margin},
        "unit": "8-bit pixel levels (0-255) of decodes clamped to [-1, 1]",
        "edge_band_px": EDGE_PX,
        "nonfinite_values": int(sum((~torch.isfinite(d)).sum() for d in decodes)),
        "window_vs_full": {
            "face_box": _difference(windowed, region, face_in_window),
            "window_edge": _difference(windowed, region, edge),
            "window": _difference(windowed, region),
        },
        "tiny_decoder": tiny_decoder,
        "tiny_vs_vae": None,
    }
    if tiny is not None:
        result["tiny_vs_vae"] = {
            "image": _difference(tiny, full),
            "face_box": _difference(tiny, full, _box_mask(boxes, full.shape)),
            "window_face_box": _difference(tiny_window, region, face_in_window),
        }
    return result


def real_training(
    bench: Workbench, base: str, tiny_decoder: str | None, plan_name: str, resolution: int, seconds: float
) -> dict[str, Any]:
    """A short training of ``base`` on the demo project; stopped (checkpointed) when ``seconds`` run out.

    The identity branch decodes as the released preset says, except that without ``tiny_decoder``
    (a TAESD folder: offline, no hub download) a ``tiny`` default falls back to the base's VAE.
    """
    from engine.config import preset
    from engine.demo.portraits import make_project
    from engine.events import PreviewSaved, StepDone
    from engine.store import ProjectStore
    from engine.training import TrainingCancelled, train

    plan = FULL if plan_name == "full" else REDUCED
    phase1, phase2 = plan.train_steps
    store = ProjectStore(bench.home)
    if DEMO_PROJECT in store.list():
        store.delete(DEMO_PROJECT)
    project = make_project(bench.home, name=DEMO_PROJECT, embedding_dim=512)
    decoder = preset("released").identity_decoder
    decoder = "vae" if decoder == "tiny" and tiny_decoder is None else decoder
    config = preset(
        "released", base_model=str(base), resolution=resolution, phase1_steps=phase1,
        phase2_steps=phase2, preview_every=phase1 + phase2, preview_steps=plan.preview_steps,
        checkpoint_every=100_000, latent_cache_variants=1, vram_profile=TRAIN_PROFILE,
        identity_decoder=decoder, **({"tiny_decoder_model": tiny_decoder} if tiny_decoder else {}),
    )  # fmt: skip
    events: list = []
    cancel = threading.Event()
    timer = threading.Timer(seconds, cancel.set)
    timer.daemon = True
    began = time.perf_counter()
    timer.start()
    try:
        train(project, config, on_event=events.append, cancel=cancel)
        status = "finished"
    except TrainingCancelled:
        status = f"stopped at its time budget ({seconds:.0f} s)"
    finally:
        timer.cancel()
    steps = [e for e in events if isinstance(e, StepDone)]
    previews = [e for e in events if isinstance(e, PreviewSaved)]
    framed = [flag for e in previews for flag in e.identity_framed]
    result: dict[str, Any] = {
        "base": str(base),
        "project": "engine.demo.portraits.make_project (drawn portraits, exact masks)",
        "profile": TRAIN_PROFILE,
        "resolution": resolution,
        "identity_decoder": decoder,
        "steps": {"phase1": phase1, "phase2": phase2},
        "steps_done": len(steps),
        "status": status,
        "seconds": round(time.perf_counter() - began, 1),
        "steps_per_second": {
            str(phase): round(last.it_per_s, 4)
            for phase in (1, 2)
            for last in [e for e in steps if e.phase == phase][-1:]
        },
        "nonfinite_loss_steps": sum(not all(math.isfinite(v) for v in e.losses.values()) for e in steps),
        "last_losses": steps[-1].losses if steps else None,
        "preview_identity": previews[-1].identity_mean if previews else None,
        "preview_faces_detected": round(1 - sum(framed) / len(framed), 4) if framed else None,
        **method_signals(events),
    }
    return result


def method_signals(events: list) -> dict[str, Any]:
    """The run's attention level and face-detection rate from its last ``MethodReport`` event.

    Looked up by name: the event type is new (`engine.training.monitor`); without one the keys are
    null and ``pending`` says why.
    """
    reports = [e for e in events if type(e).__name__ == "MethodReport"]
    warnings = [e for e in events if type(e).__name__ == "MethodWarning"]
    last = reports[-1] if reports else None
    attention = dict(getattr(last, "attention", None) or {})
    signals: dict[str, Any] = {
        "attention_level": round(statistics.fmean(attention.values()), 8) if attention else None,
        "attention": attention or None,
        "attention_start": dict(getattr(last, "attention_start", None) or {}) or None,
        "outside_share": dict(getattr(last, "outside_share", None) or {}) or None,
        "face_detection_rate": getattr(last, "detection_rate", None),
        "face_found": dict(getattr(last, "face_found", None) or {}) or None,
        "run_scaler_skips": getattr(last, "skipped_steps", None),
        "method_warnings": [getattr(w, "check", "") for w in warnings],
        "method_report": last.to_dict() if last is not None else None,
    }
    if last is None:
        signals["pending"] = PENDING
    return signals


def run_part(argv: list[str]) -> dict[str, Any]:
    """One part of the check in this process, from its arguments (`part_arguments` and the workbench's)."""
    from bench.workbench import Workbench

    parser = argparse.ArgumentParser(prog="gpu_check part", description="One part of the check.")
    parser.add_argument("--worker", choices=("steps", "decode", "train"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--assets", type=Path, required=True)
    parser.add_argument("--tiny-decoder", type=Path, required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--profile")
    parser.add_argument("--kind", choices=(*KINDS, VAE_KIND))
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--deadline", type=float, default=math.inf)
    parser.add_argument("--source", help="model to decode or train (default: the workbench's)")
    parser.add_argument("--source-tiny-decoder", help="TAESD folder for --source ('none': without one)")
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--plan", choices=("full", "reduced"), default="full")
    args = parser.parse_args(argv)
    bench = Workbench(
        model=args.model, base=args.base, assets=args.assets, tiny_decoder=args.tiny_decoder, home=args.home
    )
    bench.activate()
    resolution = args.resolution or bench.resolution
    if args.worker == "steps":
        result = measure_steps(
            bench, args.profile, args.kind, args.max_steps, args.warmup, args.seconds, args.deadline
        )
    elif args.worker == "decode":
        tiny = args.source_tiny_decoder or str(bench.tiny_decoder)
        result = measure_decodes(
            bench, args.source or str(bench.base), None if tiny == "none" else tiny, resolution
        )
    else:
        tiny = args.source_tiny_decoder
        result = real_training(
            bench, args.source, None if tiny in (None, "none") else tiny, args.plan, resolution, args.seconds
        )
    return result


# The check -----------------------------------------------------------------------------------


def run_worker(bench: Workbench, arguments: list[str], timeout: float) -> dict[str, Any]:
    """`run_part` in a fresh worker process (`bench.workers`); its result, or ``{"error": ...}``."""
    from bench.workers import WorkerFailed, run_in_worker

    began = time.perf_counter()
    try:
        found = run_in_worker(run_part, ([*arguments, *bench.to_args()],), timeout)
    except WorkerFailed as failure:
        return {"error": str(failure)}
    return {**found, "worker_seconds": round(time.perf_counter() - began, 1)}


def profile_entry(steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A profile's steps (full, plain and maybe the VAE-decoder full step) and their ratios to plain.

    A ratio is None where a step failed.
    """
    plain = steps.get("plain", {})

    def ratios(kind: str) -> tuple[float | None, float | None]:
        other = steps.get(kind, {})
        if not other or not plain or "error" in other or "error" in plain:
            return None, None
        return (
            round(other["peak_bytes"] / plain["peak_bytes"], 3),
            round(plain["steps_per_second"] / other["steps_per_second"], 3),
        )

    options = next((step["options"] for step in steps.values() if "options" in step), None)
    entry: dict[str, Any] = {"options": options}
    for kind, step in steps.items():
        entry[kind] = {k: v for k, v in step.items() if k not in ("options", "profile", "kind")} or None
    entry["peak_ratio"], entry["step_time_ratio"] = ratios("full")
    if VAE_KIND in steps:
        entry["vae_decoder_peak_ratio"], entry["vae_decoder_step_time_ratio"] = ratios(VAE_KIND)
    return entry


def headline(
    results: dict[str, Any],
    profile_name: str = HEADLINE_PROFILE,
    goals: tuple[float, float, int] = (GOAL_GB, STRETCH_GB, 512),
) -> dict[str, Any]:
    """A profile's full-step peak against the goal and the stretch goal (GB) at a resolution (px):
    SD 1.5's 8 GB profile under 8 and 6 GB at 512 px; SDXL's 12 GB one under 12 and 10 GB at 1024 px."""
    goal, stretch, resolution = goals
    profile = results["profiles"].get(profile_name) or {}
    full = profile.get("full") or {}
    peak = full.get("peak_gb")
    measured = results["device"] == "cuda" and (profile.get("options") or {}).get("mixed_precision") == "fp16"
    judged = peak is not None and measured and results["resolution"] == resolution
    return {
        "profile": profile_name,
        "full_peak_gb": peak,
        "plain_peak_gb": (profile.get("plain") or {}).get("peak_gb"),
        "full_vae_decoder_peak_gb": (profile.get(VAE_KIND) or {}).get("peak_gb"),
        "goal_gb": goal,
        "stretch_gb": stretch,
        "meets_goal": peak < goal if judged else None,
        "meets_stretch": peak < stretch if judged else None,
        "note": None
        if judged
        else f"not judged: the goals are for a CUDA GPU in fp16 at {resolution} px (this run: "
        f"{results['device']}, {results['resolution']} px)",
    }


@dataclass(frozen=True)
class Part:
    """One worker of the check."""

    name: str
    """``<profile>/<kind>`` for steps; ``decode``, ``decode_base`` or ``train``."""
    worker: str
    wanted: float
    """Its timeout when the budget allows."""
    minimum: float
    """Skipped when less than this is left for it."""
    profile: str | None = None
    kind: str | None = None
    family: str = "sd1"
    """Whose workbench the worker runs on: SD 1.5's, or (``sdxl/<profile>/<kind>``) SDXL's."""


def plan_parts(plan: Plan, base: Path | None, sdxl: bool = False) -> list[Part]:
    """The parts in the order they start: the profiles (headline first), the decodes, the training,
    then with ``sdxl`` the SDXL profiles' steps."""
    parts = [
        Part(f"{profile}/{kind}", "steps", plan.step_timeout, plan.minimum, profile, kind)
        for profile in plan.profiles
        for kind in (*KINDS, *((VAE_KIND,) if profile == HEADLINE_PROFILE else ()))
    ]
    parts.append(Part("decode", "decode", plan.decode_timeout, plan.minimum))
    if base is not None:
        parts += [
            Part("decode_base", "decode", plan.decode_timeout, plan.minimum),
            Part("train", "train", plan.train_timeout, plan.train_minimum),
        ]
    if sdxl:
        parts += [
            Part(
                f"sdxl/{profile}/{kind}", "steps", plan.sdxl_step_timeout, plan.minimum, profile, kind, "sdxl"
            )
            for profile in plan.sdxl_profiles
            for kind in KINDS
        ]
    return parts


def part_arguments(
    part: Part, plan: Plan, args: argparse.Namespace, resolution: int, seconds: float
) -> list[str]:
    """The worker's command-line arguments (the workbench's are added by `run_worker`)."""
    if part.worker == "steps":
        return [
            "--worker", "steps", "--profile", str(part.profile), "--kind", str(part.kind),
            "--max-steps", str(plan.max_steps), "--warmup", str(plan.warmup_steps),
            "--seconds", str(min(plan.step_seconds, seconds / 3)), "--deadline", str(time.time() + seconds - 5),
        ]  # fmt: skip
    if part.name == "decode":
        return ["--worker", "decode"]
    sized = ["--source", str(args.base), "--resolution", str(resolution)]
    if part.worker == "decode":
        tiny = str(args.tiny_decoder) if args.tiny_decoder else "none"
        return ["--worker", "decode", *sized, "--source-tiny-decoder", tiny]
    # The run is cancelled (a checkpoint, its events kept) well before the worker's timeout.
    tiny = str(args.tiny_decoder) if args.tiny_decoder else "none"
    return [
        "--worker", "train", *sized, "--source-tiny-decoder", tiny, "--plan", plan.mode,
        "--seconds", str(max(1.0, seconds * 0.8 - 10)),
    ]  # fmt: skip


def allotment(parts: list[Part], index: int, plan: Plan, budget: Budget) -> float:
    """Seconds for ``parts[index]`` starting now: what it wants, less the minimums of the parts after it.

    The later parts' minimums are shared among the ``plan.parallel`` workers.
    """
    reserve = sum(later.minimum for later in parts[index + 1 :]) / plan.parallel
    return budget.allot(parts[index].wanted, reserve)


def run_parts(
    parts: list[Part], plan: Plan, budget: Budget, benches: dict[str, Workbench], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Each part in its own worker process (``plan.parallel`` at a time), each within its `allotment`,
    on its family's workbench (``benches``). A part is skipped when its allotment is under its minimum.
    """

    def one(part: Part) -> dict[str, Any]:
        seconds = allotment(parts, parts.index(part), plan, budget)
        if seconds < part.minimum:
            outcome = {"error": f"skipped: {seconds:.0f} s left of the {budget.total:.0f} s budget"}
            progress(budget, f"{part.name}: {outcome['error']}")
            return outcome
        progress(budget, f"{part.name}: running (up to {seconds:.0f} s)")
        bench = benches[part.family]
        outcome = run_worker(bench, part_arguments(part, plan, args, bench.resolution, seconds), seconds)
        progress(budget, f"{part.name}: {summary(outcome)}")
        return outcome

    with ThreadPoolExecutor(max_workers=plan.parallel) as pool:
        return list(pool.map(one, parts))


def run_check(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from bench.machine import describe
    from bench.workbench import prepare
    from engine.devices import pick_device

    plan = REDUCED if args.reduced else FULL
    budget = Budget(args.budget or plan.total_seconds + (plan.sdxl_seconds if args.sdxl else 0))
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "command": " ".join(["python -m bench.gpu_check", *argv]),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": plan.mode,
        "device": pick_device().type,
        "machine": describe(),
        "model": plan.model,
        "resolution": None,
        "budget_seconds": budget.total,
        "parallel_workers": plan.parallel,
        "profiles": {},
        "decode": None,
        "base": None,
        "sdxl": None,
        "errors": [],
    }
    with tempfile.TemporaryDirectory(prefix="magicapture-gpu-check-") as scratch:
        progress(budget, f"preparing the {plan.model} workbench (random weights; cached after the first run)")
        benches = {"sd1": prepare(plan.model, Path(scratch) / "sd1")}
        if args.sdxl:
            progress(budget, f"preparing the {plan.sdxl_model} workbench")
            benches["sdxl"] = prepare(plan.sdxl_model, Path(scratch) / "sdxl")
        results["resolution"] = benches["sd1"].resolution
        results["prepare_seconds"] = round(budget.elapsed(), 1)
        parts = plan_parts(plan, args.base, args.sdxl)
        outcomes = dict(
            zip([part.name for part in parts], run_parts(parts, plan, budget, benches, args), strict=True)
        )
    results["errors"] = [
        f"{name}: {outcome['error']}" for name, outcome in outcomes.items() if "error" in outcome
    ]
    results["profiles"] = {
        name: profile_entry(
            {kind: outcomes[f"{name}/{kind}"] for kind in (*KINDS, VAE_KIND) if f"{name}/{kind}" in outcomes}
        )
        for name in ("6gb", "8gb", "12gb", "24gb")
        if name in plan.profiles
    }
    results["decode"] = outcomes["decode"]
    if args.base is not None:
        results["base"] = {
            "path": str(args.base),
            "decode": outcomes["decode_base"],
            "training": outcomes["train"],
        }
    results["headline"] = headline(results)
    if args.sdxl:
        results["sdxl"] = sdxl_results(plan, benches["sdxl"].resolution, results["device"], outcomes)
    results["wall_seconds"] = round(budget.elapsed(), 1)
    progress(budget, f"done ({len(results['errors'])} part(s) failed or skipped)")
    return results


def sdxl_results(plan: Plan, resolution: int, device: str, outcomes: dict[str, Any]) -> dict[str, Any]:
    """The SDXL profiles' steps (as ``profiles``) and their headline: the 12 GB profile's peak."""
    found: dict[str, Any] = {
        "model": plan.sdxl_model,
        "resolution": resolution,
        "device": device,
        "profiles": {
            name: profile_entry({kind: outcomes[f"sdxl/{name}/{kind}"] for kind in KINDS})
            for name in plan.sdxl_profiles
        },
    }
    found["headline"] = headline(found, SDXL_HEADLINE_PROFILE, (SDXL_GOAL_GB, SDXL_STRETCH_GB, 1024))
    return found


def summary(outcome: dict[str, Any]) -> str:
    """One progress line for a worker's result."""
    if "error" in outcome:
        return f"failed: {outcome['error']}"
    if "peak_gb" in outcome:
        return (
            f"peak {outcome['peak_gb']:.2f} GB, {outcome['steps_per_second']:.3g} steps/s over "
            f"{outcome['timed_steps']} timed of {outcome['steps']} steps, {outcome['scaler_skips']} scaler "
            f"skip(s), {outcome['nonfinite_loss_steps']} non-finite loss(es) ({outcome['worker_seconds']} s)"
        )
    if "window_vs_full" in outcome:
        face = outcome["window_vs_full"]["face_box"] or {}
        return f"window vs full decode in the face box: max {face.get('max')}, mean {face.get('mean')}"
    return f"{outcome.get('status')}, {outcome.get('steps_done')} steps ({outcome.get('worker_seconds')} s)"


# Table ---------------------------------------------------------------------------------------

HEADER = ("Figure", "Measured", "Goal", "Context")


def _pair(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    return f"max {entry['max']:.1f}, mean {entry['mean']:.2f}"


def _decode_rows(decode: dict[str, Any] | None, label: str) -> list[tuple[str, ...]]:
    if not decode:
        return []
    if "error" in decode:
        return [(f"Decodes ({label})", "failed", "", decode["error"])]
    window, diff = decode["window"], decode["window_vs_full"]
    rows = [
        (
            f"Windowed vs full VAE decode, face box ({label})",
            _pair(diff["face_box"]),
            "",
            f"window edge ({decode['edge_band_px']} px band): {_pair(diff['window_edge'])}; whole window: "
            f"{_pair(diff['window'])}; {window['side_px']} px window; {decode['dtype']} weights, "
            f"decoded in {decode['precision']}; 8-bit levels",
        )
    ]
    tiny = decode.get("tiny_vs_vae")
    if tiny:
        rows.append(
            (
                f"TAESD vs VAE decode, same latents ({label})",
                _pair(tiny["image"]),
                "",
                f"face box: {_pair(tiny['face_box'])}; TAESD window vs VAE full, face box: "
                f"{_pair(tiny['window_face_box'])}",
            )
        )
    return rows


def _gb(value: int) -> float:
    return round(value / 2**30, 3)


def render_table(results: dict[str, Any]) -> str:
    """Markdown for the README: a line naming the run and machine, then one row per figure."""
    machine = results["machine"]
    device = f"{machine['gpu']} ({machine['gpu_memory_gb']} GB)" if machine.get("gpu") else machine["device"]
    model = MODEL_LABELS[results["model"]]
    precision = "fp16 mixed precision" if results["device"] == "cuda" else "fp32"
    lines = [
        f"Measured {results['created'][:10]} by `{results['command']}` on {device}, torch "
        f"{machine['torch']}; {model} at {results['resolution']} px, {precision}, "
        f"{results['wall_seconds']:.0f} s in all.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    rows = _headline_rows(results["headline"], "")
    for name, entry in results["profiles"].items():
        rows += _profile_rows(name, entry)
    sdxl = results.get("sdxl")
    if sdxl:
        label = f"SDXL ({MODEL_LABELS[sdxl['model']]} at {sdxl['resolution']} px)"
        rows += _headline_rows(sdxl["headline"], f"{label}: ")
        for name, entry in sdxl["profiles"].items():
            rows += _profile_rows(f"sdxl {name}", entry)
    rows += _decode_rows(results.get("decode"), "random weights")
    base = results.get("base")
    if base:
        rows += _decode_rows(base.get("decode"), f"--base {Path(base['path']).name}")
        rows += _training_rows(base.get("training"), Path(base["path"]).name)
    for error in results.get("errors", []):
        if not any(error.split(":", 1)[0] in " ".join(row) for row in rows):
            rows.append(("Part not measured", "failed", "", error))
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


MODEL_LABELS = {
    "sd15": "SD 1.5-shaped, random weights",
    "tiny": "tiny demo model",
    "sdxl": "SDXL-shaped, random weights",
    "tiny-sdxl": "tiny demo SDXL",
}


def _headline_rows(head: dict[str, Any], prefix: str) -> list[tuple[str, ...]]:
    if head["full_peak_gb"] is None:
        return []
    if head["meets_goal"] is None:
        goal = f"< {head['goal_gb']:g} GB, stretch < {head['stretch_gb']:g} GB (not judged off a GPU)"
    else:
        goal = (
            f"< {head['goal_gb']:g} GB ({'met' if head['meets_goal'] else 'not met'}); stretch "
            f"< {head['stretch_gb']:g} GB ({'met' if head['meets_stretch'] else 'not met'})"
        )
    plain = head["plain_peak_gb"]
    return [
        (
            f"{prefix}Peak memory of the full phase-2 step, profile {head['profile']} (headline)",
            f"{head['full_peak_gb']:.2f} GB",
            goal,
            f"plain step {plain:.2f} GB" if plain is not None else "plain step failed",
        )
    ]


def _profile_rows(name: str, entry: dict[str, Any]) -> list[tuple[str, ...]]:
    """Peak and speed of each full step against the plain one, and a row per failed step."""
    steps = {kind: entry[kind] for kind in (*KINDS, VAE_KIND) if entry.get(kind)}
    rows = [
        (f"Steps {name}/{kind}", "failed", "", step["error"])
        for kind, step in steps.items()
        if "error" in step
    ]
    plain = steps.get("plain") if "error" not in steps.get("plain", {"error": ""}) else None
    labels = {"full": ("full", "peak_ratio", "step_time_ratio")}
    labels[VAE_KIND] = (
        "full, identity_decoder=vae,",
        "vae_decoder_peak_ratio",
        "vae_decoder_step_time_ratio",
    )
    for kind, (label, peak_key, time_key) in labels.items():
        step = steps.get(kind)
        if step is None or "error" in step:
            continue
        against = (
            f"{plain['peak_gb']:.2f} GB ({_times(entry.get(peak_key))})" if plain else "plain step failed"
        )
        rows.append(
            (
                f"Peak memory, {label} vs plain step (profile {name})",
                f"{step['peak_gb']:.2f} GB vs {against}",
                "",
                _options(entry.get("options") or {}),
            )
        )
        speed = (
            f"{plain['steps_per_second']:.2f} (step time {_times(entry.get(time_key))})" if plain else "n/a"
        )
        rows.append(
            (
                f"Steps per second, {label} vs plain step (profile {name})",
                f"{step['steps_per_second']:.2f} vs {speed}",
                "",
                "; ".join(_health(k, s) for k, s in ((kind, step), ("plain", plain)) if s),
            )
        )
    return rows


def _times(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _health(kind: str, step: dict[str, Any]) -> str:
    scale = f" (scale {step['loss_scale']:g})" if step.get("loss_scale") is not None else ""
    return (
        f"{kind}: {step['nonfinite_loss_steps']} non-finite loss, {step['nonfinite_grad_steps']} non-finite "
        f"gradient, {step['scaler_skips']} scaler skip(s) in {step['steps']} steps{scale}"
    )


def _training_rows(training: dict[str, Any] | None, name: str) -> list[tuple[str, ...]]:
    if not training:
        return []
    figure = f"Short training on {name} (demo project, profile {training.get('profile', TRAIN_PROFILE)})"
    if "error" in training:
        return [(figure, "failed", "", training["error"])]

    def value(key: str) -> str:
        number = training.get(key)
        return "pending" if number is None else f"{number:.3g}"

    speeds = ", ".join(f"phase {k} {v:.2f} steps/s" for k, v in training["steps_per_second"].items())
    context = (
        f"{training['steps_done']} of {sum(training['steps'].values())} steps, {training['status']}; {speeds}; "
        f"{training['nonfinite_loss_steps']} non-finite loss step(s); preview identity "
        f"{training['preview_identity']}, faces detected in previews {training['preview_faces_detected']}; "
        f"scaler skips {training.get('run_scaler_skips')}; warnings: {', '.join(training['method_warnings']) or 'none'}"
    )
    measured = (
        f"attention level {value('attention_level')}, face-detection rate {value('face_detection_rate')}"
    )
    return [(figure, measured, "", context)]


def _options(options: dict[str, Any]) -> str:
    names = {
        "use_8bit_adam": "8-bit Adam",
        "gradient_checkpointing": "checkpointing",
        "vae_slicing": "VAE slicing",
        "train_text_encoder": "text-encoder LoRA",
    }
    on = [label for key, label in names.items() if options.get(key)]
    mixed = options.get("mixed_precision")
    precision = f"{mixed} mixed precision" if mixed not in (None, "no") else "fp32"
    return f"{precision}; " + (", ".join(on) or "no memory options")


def _cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


# Command line --------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reduced", action="store_true", help="tiny model on the CPU, fp32, few steps, two profiles (tests)"
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="a real SD 1.5 (diffusers folder or .safetensors): its decodes and a short training",
    )
    parser.add_argument(
        "--tiny-decoder", type=Path, help="a real TAESD folder to compare with --base's VAE (optional)"
    )
    parser.add_argument(
        "--sdxl",
        action="store_true",
        help="also the SDXL profiles' steps in fp16 at 1024 px (--reduced: the tiny SDXL's 12gb on the CPU)",
    )
    parser.add_argument("--out", type=Path, help=f"JSON file (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--budget", type=float, help="total seconds (default: 450; --reduced: 600, a guard for a loaded CPU)"
    )
    parser.add_argument(
        "--table", action="store_true", help="print the README rows of the JSON file and exit"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.base = args.base.resolve() if args.base else None
    args.tiny_decoder = args.tiny_decoder.resolve() if args.tiny_decoder else None
    out = args.out or DEFAULT_OUT
    if args.table:
        print(render_table(json.loads(Path(out).read_text("utf-8"))))
        return 0
    import torch

    if not args.reduced and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here; the check measures fp16 at 512 px on a GPU. "
            "Run it with --reduced for the CPU smoke check.",
            file=sys.stderr,
        )
        return 2
    for path in (args.base, args.tiny_decoder):
        if path is not None and not path.exists():
            print(f"gpu_check: {path} does not exist.", file=sys.stderr)
            return 2
    try:
        results = run_check(args, argv)
    except Exception:
        traceback.print_exc()
        return 1
    from engine.store import atomic_write_text

    atomic_write_text(Path(out), json.dumps(results, indent=2) + "\n")
    progress(None, f"wrote {out}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
