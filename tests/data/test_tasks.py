"""The datatrove task runner that prepare and clean share: a worker killed outright (as the
out-of-memory killer would) stops the command with the fix instead of hanging it, and a task's
UserError comes back as one line, with no traceback on the terminal, in a worker or in-process."""

import errno
import os
from pathlib import Path

import pytest
from datatrove.pipeline.base import PipelineStep

from banglaslm.data.clean import Stage, run_stages
from banglaslm.data.tasks import run_tasks
from banglaslm.errors import UserError


class DiesInTask1(PipelineStep):
    """A step whose task 1 is killed outright."""

    name = "dies"

    def run(self, data=None, rank=0, world_size=1):
        if rank == 1:
            os.kill(os.getpid(), 9)
        return
        yield


class DiskFullInTask0(PipelineStep):
    name = "disk full"

    def run(self, data=None, rank=0, world_size=1):
        if rank == 0:
            raise OSError(errno.ENOSPC, "No space left on device", "/data/out/train/00000.bin")
        return
        yield


class RefusesInTask0(PipelineStep):
    name = "refuses"

    def run(self, data=None, rank=0, world_size=1):
        if rank == 0:
            raise UserError("bad input in task 0; fix it", param="inputs")
        return
        yield


def test_a_prepare_worker_that_dies_stops_prepare_with_the_fix(tmp_path):
    with pytest.raises(UserError, match="a prepare worker died .*task 1.* run the same command again"):
        run_tasks([DiesInTask1()], 2, tmp_path / "logs", [0, 1], workers=2, command="prepare")


def test_a_clean_worker_that_dies_stops_clean_too(tmp_path):
    with pytest.raises(UserError, match="a clean worker died .*task 1"):
        run_stages([Stage("dies", [DiesInTask1()], 2)], tmp_path / "logs", workers=2, console="WARNING")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_tasks_user_error_comes_back_as_itself_without_a_traceback(tmp_path, capfd, workers):
    with pytest.raises(UserError, match="bad input in task 0") as caught:
        run_tasks([RefusesInTask0()], 2, tmp_path / "logs", [0, 1], workers=workers, command="clean",
                  console="WARNING")
    assert caught.value.param == "inputs"
    err = capfd.readouterr().err
    assert "Traceback" not in err and "bad input" not in err
    assert "bad input in task 0" in (tmp_path / "logs" / "00000" / "logs" / "task_00000.log").read_text()


def test_a_full_disk_in_a_worker_comes_back_as_the_os_error(tmp_path, capfd):
    """A worker's OSError (a full disk) printed its traceback and came back as "task 0 failed
    (exit code 1)": it comes back as itself, which the command line prints as one line."""
    with pytest.raises(OSError) as caught:
        run_tasks([DiskFullInTask0()], 2, tmp_path / "logs", [0, 1], workers=2, command="prepare")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == "/data/out/train/00000.bin"
    assert "Traceback" not in capfd.readouterr().err


def test_a_dead_worker_keeps_the_tasks_done_for_the_rerun(tmp_path, small_books, monkeypatch):
    """The message says to run the command again, but prepare deleted its work folder, so the
    rerun started over: the tasks done stay, and the rerun gives the same folder as one run."""
    from banglaslm.data import prepare as prepare_module
    from banglaslm.data.tasks import WorkerDied

    inputs = [str(p) for p in small_books]
    options = {"vocab_size": 400, "doc_split": "paragraph", "tasks": 3, "progress": False}
    real = prepare_module.run_tasks

    def dies_in_encode(steps, tasks, logs, ranks, *args, **kwargs):
        if Path(logs).name == "encode":
            raise WorkerDied("a prepare worker died (task 2, signal 9: killed, or out of memory); run the same "
                             "command again")
        return real(steps, tasks, logs, ranks, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "run_tasks", dies_in_encode)
    with pytest.raises(WorkerDied):
        prepare_module.prepare(inputs, tmp_path / "d", **options)
    work = tmp_path / ".d.prepare"
    assert all((work / "read" / f"{r:05d}.json").is_file() for r in range(3)) and (work / "split.json").is_file()
    monkeypatch.setattr(prepare_module, "run_tasks", real)
    again = prepare_module.prepare(inputs, tmp_path / "d", **options)
    once = prepare_module.prepare(inputs, tmp_path / "once", **options)
    assert again.meta["splits"]["train"]["digest"] == once.meta["splits"]["train"]["digest"] and not work.exists()


class InterruptedInTask1(PipelineStep):
    name = "interrupted"

    def run(self, data=None, rank=0, world_size=1):
        if rank == 1:
            raise KeyboardInterrupt
        return
        yield


def test_a_worker_stopped_by_ctrl_c_stops_the_command_quietly(tmp_path, capfd):
    """A worker's Ctrl-C printed "Process SpawnProcess-3:" and its exit read as a failed task."""
    with pytest.raises(KeyboardInterrupt):
        run_tasks([InterruptedInTask1()], 2, tmp_path / "logs", [0, 1], workers=2, command="prepare")
    err = capfd.readouterr().err
    assert "SpawnProcess" not in err and "Traceback" not in err


def test_ctrl_c_while_workers_start_prints_one_line(tmp_path):
    """Ctrl-C reaches the whole process group: a worker it caught while still importing printed
    multiprocessing's traceback above the command's "interrupted"."""
    import signal
    import subprocess
    import sys
    import time

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(40):  # one document a task, each task a fresh worker: workers start all the time
        (texts / f"{i}.txt").write_text(f"অনুচ্ছেদ {i}: এখানে কিছু বাংলা লেখা আছে।\n" * 50, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "banglaslm", "clean", str(texts), "--workers", "2",
                             "--shard-docs", "1", "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                            preexec_fn=_hears_ctrl_c)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(children.read_text().split()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # tasks done, workers starting
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert output.strip().splitlines() == ["banglaslm clean: interrupted"]
    assert not (tmp_path / "out").exists()


def _hears_ctrl_c():
    """In a command's child before exec: SIGINT as a terminal gives it, whatever this test process
    inherited (a shell's background job, `cmd &`, starts with SIGINT ignored, and so did the
    command, which then ran to the end)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _report_ctrl_c_disposition(send) -> None:
    import signal

    send.send(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_a_worker_is_deaf_to_ctrl_c_and_the_parent_hears_it_again():
    """A worker must ignore SIGINT from its first instruction (a Ctrl-C during its imports printed
    a traceback), and the parent's own handler must be back once the worker has started."""
    import multiprocessing
    import signal

    from banglaslm.data.tasks import _start_deaf_to_ctrl_c

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's command has it
    try:
        context = multiprocessing.get_context("spawn")
        report, send = context.Pipe(duplex=False)
        process = context.Process(target=_report_ctrl_c_disposition, args=(send,))
        _start_deaf_to_ctrl_c(process)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert report.recv() is True
        process.join()
    finally:
        signal.signal(signal.SIGINT, inherited)


BAR_THEN_WAIT = '''
import time
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from tqdm import tqdm


class BarThenWait(PipelineStep):
    name = "bar then wait"

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def run(self, data=None, rank=0, world_size=1):
        tqdm(total=1, disable=True)  # tqdm's lock is made with its first bar, shown or not
        (Path(self.folder) / f"{rank}.ready").touch()
        time.sleep(120)
        return
        yield
'''

RUN_BAR_TASKS = '''
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from bar_then_wait import BarThenWait
from banglaslm.data.tasks import run_tasks

if __name__ == "__main__":
    try:
        run_tasks([BarThenWait(sys.argv[1])], 2, Path(sys.argv[1]) / "logs", [0, 1], workers=2, command="clean")
    except KeyboardInterrupt:
        sys.exit(130)
'''


def test_ctrl_c_after_a_progress_bar_leaves_no_leaked_semaphore_warning(tmp_path):
    """tqdm's first bar in a worker made a multiprocessing semaphore; the worker, stopped by
    Ctrl-C, never released it, and the resource tracker printed "leaked semaphore" under the
    command's one line (CI caught it in the test above, when the Ctrl-C came mid-task)."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "bar_then_wait.py").write_text(BAR_THEN_WAIT)
    (tmp_path / "run.py").write_text(RUN_BAR_TASKS)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=_hears_ctrl_c)
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(list(tmp_path.glob("*.ready"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(tmp_path.glob("*.ready"))) == 2, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130 and "leaked" not in output and "Traceback" not in output, output
