"""Background jobs: one GPU job at a time in a worker thread of the app, with a visible queue.

A job's state lives here, in the server process, not in a browser session: closing or reloading
the tab loses nothing, and every tab sees the same queue. The work function receives its `Job`
and reports engine events through `Job.emit`; it should stop early when `Job.cancel` is set.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from engine import errors

logger = logging.getLogger(__name__)

MAX_EVENTS = 20_000
"""Events kept per job; the oldest are dropped beyond this (training writes them all to disk)."""
FINISHED_KEPT = 50

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)


class JobRefused(Exception):
    """A job was not queued; the message says why."""


@dataclass(eq=False)
class Job:
    """One unit of background work (a training, a batch of generations...)."""

    id: str
    kind: str
    project: str
    title: str
    work: Callable[[Job], Any] = field(repr=False)
    key: str | None = None
    """Jobs sharing a key may not be queued twice (e.g. one training per project)."""
    status: str = QUEUED
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS), repr=False)
    history: list[Any] = field(default_factory=list, repr=False)
    """Events from before the job, shown ahead of its own (a resumed training's run so far)."""
    estimate: Any = None
    """The pre-flight estimate of the job's work (`engine.preflight.Estimate`), refined while it runs."""

    def emit(self, event: Any) -> None:
        """Record an engine event (called from the worker thread)."""
        self.events.append(event)

    def event_list(self) -> list[Any]:
        """A copy of the events so far, safe to read while the job runs."""
        while True:
            try:
                return list(self.events)
            except RuntimeError:  # appended to during the copy
                continue

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class JobRunner:
    """Runs submitted jobs one at a time, in submission order, in one daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._finished: deque[Job] = deque(maxlen=FINISHED_KEPT)
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._held: dict[str, str] = {}
        """Projects no job may start for, with what is being done to them (see `hold`)."""

    def submit(
        self, kind: str, project: str, title: str, work: Callable[[Job], Any], *, key: str | None = None
    ) -> Job:
        """Queue ``work``; raises `JobRefused` when a job with the same ``key`` is queued or running."""
        with self._lock:
            if self._closing:
                raise JobRefused("The studio is shutting down; start the job again after it restarts.")
            if project in self._held:
                raise JobRefused(
                    f"Project {project} is being {self._held[project]}; no job can start for it."
                )
            for other in self._active_jobs():
                if key is not None and other.key == key:
                    raise JobRefused(
                        f"{other.title} is already {_where(other)}; wait for it to finish or cancel it first."
                    )
            job = Job(
                id=f"job-{next(self._ids)}", kind=kind, project=project, title=title, work=work, key=key
            )
            self._queue.append(job)
            self._ensure_worker()
            self._lock.notify_all()
            return job

    @contextlib.contextmanager
    def hold(self, project: str, action: str) -> Iterator[None]:
        """Keep every job of ``project`` out while the block runs, e.g. while it is ``"deleted"``.

        Raises `JobRefused`, naming the job, when one of the project is queued or running.
        """
        with self._lock:
            if project in self._held:
                raise JobRefused(f"Project {project} is already being {self._held[project]}.")
            for job in self._active_jobs():
                if job.project == project:
                    raise JobRefused(
                        f"{job.title} is {_where(job)}; cancel it or let it finish before the project is {action}."
                    )
            self._held[project] = action
        try:
            yield
        finally:
            with self._lock:
                del self._held[project]

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job at once, or ask a running one to stop; False if it is not active."""
        with self._lock:
            for job in self._queue:
                if job.id == job_id:
                    self._queue.remove(job)
                    job.cancel.set()
                    self._finish(job, CANCELLED)
                    return True
            if self._running is not None and self._running.id == job_id:
                self._running.cancel.set()
                return True
            return False

    def running(self) -> Job | None:
        with self._lock:
            return self._running

    def queued(self) -> list[Job]:
        with self._lock:
            return list(self._queue)

    def jobs(self) -> list[Job]:
        """The running job, then the queue in order, then finished jobs newest first."""
        with self._lock:
            return self._all_jobs()

    def latest(self, project: str, kind: str) -> Job | None:
        """The newest job of ``kind`` for ``project`` (active or finished)."""
        with self._lock:
            matches = [job for job in self._all_jobs() if job.project == project and job.kind == kind]
        return max(matches, key=lambda job: job.submitted, default=None)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until ``job`` has finished; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while job.active:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and wait up to ``timeout`` seconds for the running job to stop."""
        with self._lock:
            self._closing = True
            for job in list(self._queue):
                self.cancel(job.id)
            if self._running is not None:
                self._running.cancel.set()
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _active_jobs(self) -> list[Job]:
        return ([self._running] if self._running else []) + list(self._queue)

    def _all_jobs(self) -> list[Job]:
        return self._active_jobs() + sorted(self._finished, key=lambda job: -(job.finished or 0))

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work_loop, name="studio-jobs", daemon=True)
            self._thread.start()

    def _finish(self, job: Job, status: str) -> None:
        job.status = status
        job.finished = time.time()
        self._finished.append(job)
        self._lock.notify_all()

    def _work_loop(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                job.status, job.started = RUNNING, time.time()
                self._running = job
            status = self._run(job)
            with self._lock:
                self._running = None
                self._finish(job, status)

    @staticmethod
    def _run(job: Job) -> str:
        try:
            job.result = job.work(job)
        except Exception as error:  # the job fails, the studio lives on
            if job.cancel.is_set():
                return CANCELLED
            job.error = user_message(error)
            if is_user_error(error):
                logger.warning("Job %s (%s) failed: %s", job.id, job.title, one_line(job.error))
            else:
                logger.exception("Job %s (%s) failed", job.id, job.title)
            return FAILED
        return CANCELLED if job.cancel.is_set() else DONE


def _where(job: Job) -> str:
    return "running" if job.status == RUNNING else "waiting in the queue"


def is_user_error(error: BaseException) -> bool:
    """Whether ``error``'s message is a sentence for the user: a `JobRefused` or one of the engine's
    user errors (`engine.errors.UserError`, as the CLI tells them). Anything else is a bug."""
    return isinstance(error, (JobRefused, errors.UserError))


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces."""
    return " ".join(text.split())


def user_message(error: BaseException) -> str:
    """The sentence to show for ``error``: its own message, or a generic one with its type."""
    text = str(error).strip()
    if not text:
        return f"The job stopped with an unexpected {type(error).__name__}; see the terminal for details."
    return text
