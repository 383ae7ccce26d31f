"""Running datatrove tasks for `prepare` and `clean`: each task in a process of its own, watched
by its sentinel, running datatrove's own task body (`_run_for_rank`), so completion marks and
skipping stay datatrove's.

Why not `LocalPipelineExecutor.run()`: it starts its pool through a manager process, and when
the out-of-memory killer takes one worker, the manager keeps that worker's pipes open and the
pool waits forever. Here a dead worker stops the command with a one-line error. datatrove's
messages go to each task's log file, and to the terminal only at the level asked for; a task's
exception never goes there, it comes back to the caller as itself.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from loguru import logger

from ..errors import UserError

USER_ERROR_EXIT = 2
REIMPORTED_EXIT = 3  # a worker that was running the caller's script again (`exit_if_reimported`)


class WorkerDied(UserError):
    """A worker process was killed (the out-of-memory killer, kill -9): the tasks done so far
    are good, and the same command again does only the rest."""


def run_tasks(steps: list, tasks: int, logs: Path, ranks, workers: int, command: str,
              console: str | None = None) -> None:
    """Run tasks `ranks` of `tasks` of the pipeline `steps`, `workers` at a time: here, one after
    the other, with one worker or one task; else each in a fresh process. A task's UserError comes
    back as itself; a worker that dies (killed, out of memory) raises a UserError naming
    `command`. `console`: the loguru level from which datatrove's messages also reach the
    terminal (None: its log files only); its progress bars show at INFO and below."""
    ranks = list(ranks)
    if workers == 1 or len(ranks) == 1:
        for rank in ranks:
            run_task(steps, tasks, logs, rank, console)
        return
    context = multiprocessing.get_context("spawn")  # not fork: the parent may hold threads
    waiting, running = list(ranks), {}
    try:
        while waiting or running:
            while waiting and len(running) < workers:
                rank = waiting.pop(0)
                report, send = context.Pipe(duplex=False)  # not a file: the disk may be what is full
                process = context.Process(target=_task_process, args=(steps, tasks, logs, rank, console, send),
                                          daemon=True)
                _start_deaf_to_ctrl_c(process)
                send.close()
                running[process.sentinel] = (process, rank, report)
            for sentinel in multiprocessing.connection.wait(list(running)):
                process, rank, report = running.pop(sentinel)
                process.join()
                _check_exit(process.exitcode, rank, _received(report), command)
    finally:
        for process, _, _ in running.values():
            process.terminate()
            process.join()


def run_task(steps: list, tasks: int, logs: Path, rank: int, console: str | None = None) -> None:
    """Task `rank` of `tasks` in this process through datatrove's task body, which skips it when
    its completion is recorded under `logs` and records it when done."""
    from datatrove.executor import LocalPipelineExecutor

    executor = LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=str(Path(logs) / f"{rank:05d}"),
                                     local_tasks=1, local_rank_offset=rank)
    with _datatrove_output(console):
        executor._run_for_rank(rank)


def _task_process(steps, tasks: int, logs: Path, rank: int, console: str | None, report) -> None:
    """A worker process's body: run the task; a UserError's message, or an OSError's (a full
    disk), goes through the pipe `report` for the parent to raise as its own."""
    _tqdm_without_semaphore()
    try:
        run_task(steps, tasks, logs, rank, console)
    except (UserError, OSError) as exc:
        report.send({"user": [str(exc), exc.param]} if isinstance(exc, UserError) else
                    {"os": [exc.errno, exc.strerror, exc.filename]})
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:  # raised in a worker (Ctrl-C itself is ignored there): the parent says it once
        sys.exit(130)


def _tqdm_without_semaphore() -> None:
    """Give tqdm a thread lock before its first bar. Its default adds a multiprocessing lock, a
    named semaphore the resource tracker (shared with the parent) watches; a worker stopped by
    Ctrl-C (terminate) never releases it, and the tracker then printed "leaked semaphore" under
    the command's one line. A worker draws only its own bars, so the semaphore guarded nothing."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def _start_deaf_to_ctrl_c(process) -> None:
    """Start a worker that ignores SIGINT (kept across exec, and Python then installs no handler
    of its own). Ctrl-C reaches the whole process group: a worker it caught while importing
    printed a traceback before the parent's one line; now the parent alone says "interrupted"
    and stops the workers (terminate). A Ctrl-C in the few milliseconds of a start is lost (the
    next one stops the command). Holding it by blocking SIGINT instead fails twice over: the
    spawned worker starts with an empty signal mask, and the parent's other (native) threads
    take a signal its main thread blocks, where the ignore then discards it."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        process.start()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def exit_if_reimported() -> None:
    """Exit at once from a worker that is importing the caller's script anew, as a spawned process
    does before its task: a script that calls prepare() or clean() outside `if __name__ ==
    "__main__":` would run them again in every worker (and stop on their lock). The parent then
    names the fix."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # multiprocessing's own start-up flag
        os._exit(REIMPORTED_EXIT)


def _received(report) -> dict | None:
    """What a worker sent before it exited (its error), or None (it sent nothing: it died)."""
    try:
        return report.recv() if report.poll() else None
    except EOFError:
        return None
    finally:
        report.close()


def _check_exit(code: int, rank: int, report: dict | None, command: str) -> None:
    if code == 0:
        return
    if code == USER_ERROR_EXIT and report is not None:
        if "os" in report:
            raise OSError(*report["os"])
        raise UserError(*report["user"])
    if code == REIMPORTED_EXIT:
        raise UserError(f"{command} runs `workers` in processes that import the calling script again, and this "
                        f"one calls {command}() outside `if __name__ == \"__main__\":`; put the call under that "
                        "guard, or use workers=1", param="workers")
    if code == 130:  # the worker was interrupted: so is the command
        raise KeyboardInterrupt
    if code is not None and code < 0:
        raise WorkerDied(f"a {command} worker died (task {rank}, signal {-code}: killed, or out of memory); run the "
                        "same command again, with fewer `workers` if memory is short")
    raise RuntimeError(f"{command}'s task {rank} failed (exit code {code}); its traceback is above")


def _no_exception(record) -> bool:
    return record["exception"] is None


def _to_stderr(message: str) -> None:
    """A loguru sink that writes to whatever `sys.stderr` is at the time (loguru's own keeps the
    stream it was given, stale once a caller that redirected stderr has put it back)."""
    sys.stderr.write(message)


def _console(level: str | None) -> None:
    logger.remove()
    if level is not None:
        logger.add(_to_stderr, level=level, filter=_no_exception)


@contextmanager
def _datatrove_output(console: str | None) -> Iterator[None]:
    """While the block runs: datatrove's task logger writes its file as usual, but the terminal
    gets only `console`-level messages; its deduplication progress bars show at INFO and below."""
    import datatrove.executor.base as base
    import datatrove.pipeline.dedup.exact_dedup as exact
    import datatrove.pipeline.dedup.minhash as minhash
    from tqdm import tqdm

    def add_task_logger(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        logger.add(logfile, level="DEBUG", catch=False)  # a full disk raises here, not a traceback on stderr
        return logfile

    def close_task_logger(logfile) -> None:
        logger.complete()
        _console(console)
        logfile.close()

    saved = base.add_task_logger, base.close_task_logger, exact.tqdm, minhash.tqdm
    quiet_bars = console is None or logger.level(console).no > logger.level("INFO").no
    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger
    exact.tqdm = minhash.tqdm = partial(tqdm, disable=quiet_bars)
    _console(console)
    try:
        yield
    finally:
        base.add_task_logger, base.close_task_logger, exact.tqdm, minhash.tqdm = saved
        logger.remove()
        logger.add(_to_stderr)  # datatrove's default: every message, to stderr
