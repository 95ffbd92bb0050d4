"""Benchmark 5: the studio's launch-to-ready time and its latency under a running training.

Launch: ``magicapture-studio --demo --no-browser --port P --data-dir D`` in a subprocess, timed
until ``GET /`` answers 200, against a bare Gradio app (one Markdown block) launched the same way.

Latency: a server process (``python -m bench.studio --serve ...``) builds the demo studio, adds
the astronaut as source and reference photo, and launches it; this process times ``GET /``
(a light request: the page) first with nothing running, then while the studio's own job runner
trains the demo model in the server process (the studio's usual set-up: one process, training in
a worker thread). Ratios: p50 and p95 under training over idle.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.settings import Sizes
    from bench.workbench import Workbench

READY_TIMEOUT = 300.0
WARMUP_REQUESTS = 3
REQUEST_GAP = 0.05
"""Seconds between two timed requests."""
BARE_GRADIO = (
    "import sys\nimport gradio as gr\n"
    "with gr.Blocks() as demo:\n    gr.Markdown('hello')\n"
    "demo.launch(server_name='127.0.0.1', server_port=int(sys.argv[1]), quiet=True)\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 30.0) -> float:
    """Seconds one ``GET`` takes to return its whole body; raises unless the answer is 200."""
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        answer.read()
        if answer.status != 200:
            raise OSError(f"{url} answered {answer.status}.")
    return time.perf_counter() - began


def wait_ready(url: str, process: subprocess.Popen, began: float) -> float:
    """Seconds from ``began`` until ``url`` answers 200; raises if the process dies or the time runs out."""
    while time.perf_counter() - began < READY_TIMEOUT:
        if process.poll() is not None:
            raise RuntimeError(
                f"The process serving {url} exited with code {process.returncode} before answering."
            )
        with contextlib.suppress(OSError):
            get(url, timeout=5.0)
            return time.perf_counter() - began
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {READY_TIMEOUT:.0f} s.")


def studio_command() -> list[str]:
    """The ``magicapture-studio`` script next to this interpreter (or on the PATH)."""
    script = Path(sys.executable).with_name("magicapture-studio")
    found = str(script) if script.is_file() else shutil.which("magicapture-studio")
    if found is None:
        raise RuntimeError("The magicapture-studio command is not installed; run `pip install -e .` first.")
    return [found]


def launch_seconds(command: list[str], url: str, log: Path) -> float:
    """Launch-to-ready seconds of ``command``, which is stopped afterwards."""
    with open(log, "w") as output:
        began = time.perf_counter()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            return wait_ready(url, process, began)
        finally:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def latencies(url: str, count: int) -> list[float]:
    values = []
    for _ in range(count):
        values.append(get(url))
        time.sleep(REQUEST_GAP)
    return values


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": round(1000 * statistics.median(values), 2), "p95_ms": round(1000 * cuts[94], 2)}


def send(process: subprocess.Popen, command: str, expect: str) -> None:
    """Send one line to the server and wait for its answer line ``expect``."""
    process.stdin.write(command + "\n")
    process.stdin.flush()
    while True:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"The studio server exited while answering {command!r}.")
        if line.strip() == expect:
            return
        if line.startswith("error:"):
            raise RuntimeError(f"The studio server failed: {line[6:].strip()}")


def run(bench: Workbench, sizes: Sizes, command: str) -> dict[str, Any]:
    """Benchmark entry: launch-to-ready against bare Gradio, and ``GET /`` latency idle and under training."""
    scratch = bench.home.parent / "studio"
    scratch.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    studio = launch_seconds(
        [*studio_command(), "--demo", "--no-browser", "--port", str(port), "--data-dir", str(scratch / "launch")],
        url, scratch / "launch.log",
    )  # fmt: skip
    bare = launch_seconds([sys.executable, "-c", BARE_GRADIO, str(port)], url, scratch / "bare.log")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.studio", "--serve", "--port", str(port), "--data-dir", str(scratch / "serve"),
         "--steps", str(sizes.training_steps)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        send(server, "ping", "ready")
        wait_ready(url, server, time.perf_counter())
        latencies(url, WARMUP_REQUESTS)
        idle = latencies(url, sizes.studio_requests)
        send(server, "train", "training")
        busy = latencies(url, sizes.studio_requests)
        send(server, "status", "running")
        send(server, "quit", "bye")
    finally:
        stop(server)
    idle_stats, busy_stats = percentiles(idle), percentiles(busy)
    return {
        "what": "GET / latency while the studio's job runner trains the demo model in the same process",
        "baseline": "the same requests with no job running",
        "ratio": round(busy_stats["p50_ms"] / idle_stats["p50_ms"], 3),
        "ratio_p95": round(busy_stats["p95_ms"] / idle_stats["p95_ms"], 3),
        "idle": idle_stats,
        "under_training": busy_stats,
        "requests": sizes.studio_requests,
        "launch": {
            "what": "magicapture-studio --demo --no-browser: launch to the first 200 on GET /",
            "baseline": "a bare Gradio Blocks app (one Markdown) launched the same way",
            "ratio": round(studio / bare, 3),
            "studio_seconds": round(studio, 3),
            "bare_gradio_seconds": round(bare, 3),
            "note": "the demo kit was already built (it is cached), as on every launch but the first",
        },
        "command": command,
    }


def serve(port: int, data_dir: Path, steps: int) -> None:
    """The latency server: the demo studio with a project, driven by lines on stdin."""
    from app import configure_environment

    root = configure_environment(data_dir, demo=True)
    from engine.demo import build_demo_kit, default_kit_folder, use_demo_kit

    kit = build_demo_kit(default_kit_folder())
    use_demo_kit(kit)
    from bench.workbench import PROJECT, add_photos
    from engine.store import ProjectStore
    from studio.app import LaunchOptions, Studio, launch
    from studio.train import make_config, submit_training

    add_photos(root)
    studio = Studio(ProjectStore(root), demo=kit)
    launch(studio, LaunchOptions(port=port, open_browser=False), block=False)
    job = None
    for line in sys.stdin:
        order = line.strip()
        if order == "ping":
            answer = "ready"
        elif order == "train":
            config = make_config(studio, "fast", "cpu", {"phase1_steps": steps, "phase2_steps": steps})
            job = submit_training(studio, studio.store.open(PROJECT), config)
            while job.active and not any(type(event).__name__ == "StepDone" for event in job.event_list()):
                time.sleep(0.05)
            answer = (
                "training" if job.active else f"error: the training ended early ({job.status}: {job.error})"
            )
        elif order == "status":
            answer = (
                "running"
                if job is not None and job.active
                else f"error: the training is not running ({job and job.status})"
            )
        else:
            if job is not None:
                studio.runner.cancel(job.id)
                studio.runner.wait(job, timeout=60)
            print("bye", flush=True)
            os._exit(0)  # Gradio's server threads do not stop on their own
        print(answer, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.studio", description="The latency benchmark's studio server."
    )
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    try:
        serve(args.port, args.data_dir, args.steps)
    except Exception as error:
        print(f"error: {type(error).__name__}: {error}", flush=True)
        raise


if __name__ == "__main__":
    main()
