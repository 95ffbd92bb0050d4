"""bench.workers: a worker forked from the preloaded server returns its result, and each way it can
fail (it raises, it dies, it overruns) comes back as `WorkerFailed` with what explains it."""

from __future__ import annotations

import os
import time

import pytest

from bench.workers import WorkerFailed, run_in_worker


def pid_and_preloaded(name: str) -> dict:
    import sys

    return {"pid": os.getpid(), "preloaded": name in sys.modules, "torch": "torch" in sys.modules}


def raise_with_output(message: str) -> dict:
    print("about to fail")
    raise ValueError(message)


def die(code: int) -> dict:
    print("dying now", flush=True)
    os._exit(code)


def sleep(seconds: float) -> dict:
    time.sleep(seconds)
    return {}


def test_a_worker_runs_in_another_process_with_the_stack_already_imported() -> None:
    found = run_in_worker(pid_and_preloaded, ("diffusers",))
    assert found["pid"] != os.getpid()
    assert found["preloaded"] and found["torch"]  # imported by the server, not by this worker's call
    assert run_in_worker(pid_and_preloaded, ("diffusers",))["pid"] != found["pid"]  # a fresh worker each time


def test_an_exception_in_the_worker_is_reported_with_its_message() -> None:
    with pytest.raises(WorkerFailed, match="ValueError: no faces in the batch"):
        run_in_worker(raise_with_output, ("no faces in the batch",))


def test_a_worker_that_dies_reports_its_exit_code_and_last_output() -> None:
    with pytest.raises(WorkerFailed, match="exit 3: dying now"):
        run_in_worker(die, (3,))


def test_a_worker_past_its_time_is_killed() -> None:
    began = time.perf_counter()
    with pytest.raises(WorkerFailed, match="timed out after 1 s"):
        run_in_worker(sleep, (600.0,), timeout=1.0)
    assert time.perf_counter() - began < 300  # killed, not waited for


def test_where_cuda_is_available_the_server_preloads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """bitsandbytes probes CUDA when imported; a worker forked after that could not use the GPU."""
    import torch

    from bench.workers import PRELOAD, preload_modules

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert preload_modules() == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert preload_modules() == PRELOAD and "bitsandbytes" in PRELOAD
