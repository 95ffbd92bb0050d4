"""Worker processes forked from one server that has imported the ML stack once.

A fresh interpreter spends 5 to 10 CPU-seconds importing torch, diffusers, peft and transformers
before any work, and the GPU check runs a dozen workers. multiprocessing's forkserver imports
`PRELOAD` once in a clean server process (one that never touched CUDA or a thread pool) and forks
each worker from it: every worker still has its own memory, CUDA context and peak counters, and one
that overruns its time is killed. A worker's output goes to a log file whose tail explains a failure.

Where CUDA is available the server preloads nothing: bitsandbytes (which diffusers and peft import)
asks CUDA for its devices when imported, and a process forked after that cannot use CUDA. There
each worker imports for itself, as a fresh interpreter would.

On a CPU the resident set of a forked worker counts only the library pages it touches, so its
peak is smaller than a fresh interpreter's; `bench.memory`, whose CPU figures are committed, keeps
fresh interpreters.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

PRELOAD = [
    "torch", "torchvision", "transformers", "diffusers", "peft", "accelerate", "bitsandbytes", "cv2",
    "onnxruntime", "insightface", "onnx2torch", "engine.training", "engine.faces", "engine.identity",
    "bench.steps",
]  # fmt: skip
"""What the workers import; a module that fails to import here is imported (or fails) in the worker."""
TAIL_LINES = 6


def preload_modules() -> list[str]:
    """`PRELOAD` on a machine without CUDA; nothing where CUDA is available (see the module's docstring)."""
    import torch

    return [] if torch.cuda.is_available() else list(PRELOAD)


@functools.cache
def _server() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload_modules())
    return context


class WorkerFailed(Exception):
    """The worker raised, died or ran out of time; the message says which, with its last output."""


def _child(connection: Any, log: str, function: Callable[..., dict[str, Any]], arguments: tuple) -> None:
    with open(log, "ab", buffering=0) as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    try:
        connection.send((True, function(*arguments)))
    except BaseException:  # the parent reports it; a worker's failure is data, not a crash of the check
        connection.send((False, traceback.format_exc()))


def _tail(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-TAIL_LINES:])


def run_in_worker(
    function: Callable[..., dict[str, Any]], arguments: tuple = (), timeout: float | None = None
) -> dict[str, Any]:
    """``function(*arguments)`` in a worker forked from the preloaded server; its result.

    ``function`` must be importable by name (a module-level function). Raises `WorkerFailed`
    when it raises, when the worker dies, or after ``timeout`` seconds (the worker is killed).
    """
    with tempfile.TemporaryDirectory(prefix="magicapture-worker-") as scratch:
        log = str(Path(scratch) / "output.log")
        context = _server()
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(writer, log, function, arguments))
        process.start()
        writer.close()
        try:
            if not reader.poll(timeout):
                raise WorkerFailed(f"timed out after {timeout:.0f} s (its time budget)")
            try:
                succeeded, payload = reader.recv()
            except EOFError:
                process.join()
                output = Path(log).read_text("utf-8", errors="replace")
                raise WorkerFailed(f"exit {process.exitcode}: {_tail(output)}") from None
        finally:
            process.kill()
            process.join()
            reader.close()
    if not succeeded:
        raise WorkerFailed(_tail(payload))
    return payload
