"""The worker thread: the one thread that touches the model.

Requests hand it jobs in arrival order: small ones run at once; jobs that start generations
add their sequences to one continuous batch (`generation.batching`), where each joins after its
prefill and leaves when it ends; long work that is not generation (scoring an echoed prompt)
runs one piece (a forward pass) per decode step, between the batch's steps. Before every step
or piece its job's cancel flag and deadline are checked, so a client that leaves or a request
past its time-out stops its work. The event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import UserError
from ..generation.batching import Batch, Sequence
from .schemas import APIError


class Stopped(Exception):
    """Raised inside the worker when a generation is cancelled or out of time."""


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry once it is back", type="server_error",
                    code="server_shutdown")


def request_error(error: BaseException, job: "Job") -> BaseException:
    """What a request that failed on the worker answers: 503 when the server is stopping, 408
    past its time-out, 400 for settings the engine refused, anything else as it is."""
    if isinstance(error, Stopped) and job.shut_down:
        return shutting_down()
    if isinstance(error, Stopped) and job.timed_out:
        return APIError(408, "the request took longer than the server's time-out",
                        type="timeout_error", code="timeout")
    if isinstance(error, UserError):
        return APIError(400, str(error), param=error.param, code="invalid_value")
    return error


def _settle(done: Callable[[Any, BaseException | None], None], result, error) -> None:
    try:
        done(result, error)
    except Exception:  # noqa: BLE001 - the request's event loop is gone
        pass


class Job:
    """A request's work on the worker: `fn(job)` runs there; `resolve(result, error)` answers."""

    def __init__(self, fn: Callable[["Job"], Any], deadline: float):
        self.fn = fn
        self.deadline = deadline
        self.cancelled = threading.Event()
        self.timed_out = False
        self.shut_down = False  # cancelled because the server is stopping
        self.finished = False  # set when its generations have all ended
        self.resolve: Callable[[Any, BaseException | None], None] = lambda result, error: None

    def cancel(self, shut_down: bool = False) -> None:
        self.shut_down = self.shut_down or shut_down
        self.cancelled.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Stopped("cancelled")
        if time.monotonic() > self.deadline:
            self.timed_out = True
            raise Stopped("timed out")


class Admit:
    """What a job returns to start generations: the sequences join the batch, and their own
    callbacks answer the request (the worker does not)."""

    def __init__(self, sequences: list[Sequence]):
        self.sequences = sequences


class Steps:
    """What a job returns to run long work in pieces: each `next(pieces)` is one piece (a forward
    pass), taken between two decode steps of the batch, so the generations of other requests go
    on meanwhile; the generator's return value answers the request."""

    def __init__(self, pieces: Iterator):
        self.pieces = pieces


class GenerationWorker:
    """One thread runs everything that touches the model, in arrival order: small jobs at once,
    generations in a continuous batch (batching.py), where each request joins after its prefill
    and leaves when it ends, and `Steps` jobs a piece per decode step. Every sequence and piece
    checks its job's cancel flag and deadline first."""

    def __init__(self, batch: Batch):
        self.batch = batch
        self._queue: queue.Queue = queue.Queue()
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._jobs: list[Job] = []  # jobs with sequences waiting or running, or pieces to run
        self._pieces: list[tuple[Job, Iterator, Callable]] = []  # Steps jobs' work and how each answers
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.closing = False  # set at shutdown: every job from then on is refused

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="banglaslm-generate", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            busy = not self.batch.idle or bool(self._waiting) or bool(self._pieces)
            try:
                item = self._queue.get(block=not busy)
            except queue.Empty:
                item = None
            while item is not None:  # everything that arrived, in order
                self._take(*item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            try:
                while self._waiting and not self.batch.full:
                    self.batch.add(self._waiting.popleft())
                if not self.batch.idle:
                    self.batch.step()
            except Exception as exc:  # noqa: BLE001 - a bug: fail what runs (500s), keep serving
                self.batch.abort(exc)
            self._pieces = [item for item in self._pieces if self._run_piece(*item)]
            self._jobs = [job for job in self._jobs if not job.finished]

    @staticmethod
    def _run_piece(job: Job, pieces: Iterator, done: Callable) -> bool:
        """One piece of a Steps job's work; False once it has answered (done, failed, stopped)."""
        try:
            job.check()
            next(pieces)
        except StopIteration as end:
            result, error = end.value, None
        except BaseException as exc:  # noqa: BLE001 - handed to the request; the worker lives on
            result, error = None, exc
        else:
            return True
        job.finished = True
        pieces.close()
        _settle(done, result, error)
        return False

    def _take(self, job: Job, done: Callable[[Any, BaseException | None], None]) -> None:
        try:
            if self.closing:
                job.cancel(shut_down=True)
            if job.cancelled.is_set():  # its client left while it waited, or the server is stopping
                raise Stopped("cancelled")
            result = job.fn(job)
        except BaseException as exc:  # handed to the request; the worker lives on
            _settle(done, None, exc)
            return
        if isinstance(result, (Admit, Steps)):
            self._jobs.append(job)
            if isinstance(result, Steps):
                self._pieces.append((job, result.pieces, done))
            else:
                self._waiting.extend(result.sequences)
            if self.closing:  # cancel_all ran while this job was being taken
                job.cancel(shut_down=True)
        else:
            job.finished = True
            _settle(done, result, None)

    def cancel_all(self) -> None:
        """Stop every running or waiting generation and refuse new ones (at shutdown: their
        requests answer 503 `server_shutdown`). Safe from a signal handler: it only sets flags,
        which the worker reads before each step. The idle thread itself is a daemon."""
        self.closing = True
        for job in list(self._jobs):
            job.cancel(shut_down=True)

    def submit(self, job: Job, done: Callable[[Any, BaseException | None], None]) -> None:
        self._ensure_thread()
        self._queue.put((job, done))

    async def run(self, job: Job) -> Any:
        """Run `job` on the worker; its result (or its exception, raised here)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result, error):
            if future.done():
                return
            if error is not None:
                future.set_exception(request_error(error, job))
            else:
                future.set_result(result)

        # A job that starts generations (Admit) answers through job.resolve when they end.
        job.resolve = lambda r, e: loop.call_soon_threadsafe(settle, r, e)
        self.submit(job, job.resolve)
        try:
            return await future
        finally:
            if not future.done():  # the request was cancelled while waiting
                job.cancel()
