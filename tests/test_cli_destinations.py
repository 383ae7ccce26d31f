"""Where commands write: one writer per folder, destinations checked before any work, OS errors
as one line, and nothing a killed writer left lasts beyond the next run."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TINY_SETTINGS, one_line_error, run_cli, set_args, stop_training_at

from banglaslm.cli import main
from banglaslm.fileio import exclusive


def test_a_second_writer_is_refused_naming_the_holder(trained_run, small_books, tmp_path, capsys):
    hf = tmp_path / "source-hf"
    assert main(["export", str(trained_run), "--format", "hf", "--out", str(hf)]) == 0
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"prompt": "নদী কোথায়?", "completion": "গ্রামের পাশে।"}, ensure_ascii=False) + "\n"
                     + json.dumps({"prompt": "আকাশ কেমন?", "completion": "নীল।"}, ensure_ascii=False) + "\n",
                     encoding="utf-8")
    capsys.readouterr()
    targets = {  # each command, and what it writes
        "prepare": (["prepare", *small_books, "--doc-split", "paragraph", "--out", tmp_path / "data"], tmp_path / "data"),
        "export": (["export", trained_run, "--format", "hf", "--out", tmp_path / "hf"], tmp_path / "hf"),
        "gguf": (["export", trained_run, "--format", "gguf", "--out", tmp_path / "m.gguf"], tmp_path / "m.gguf"),
        "report": (["report", trained_run, "--out", tmp_path / "rep"], tmp_path / "rep"),
        "lm-eval-task": (["lm-eval-task", small_books[0], "--out", tmp_path / "task"], tmp_path / "task" / "bangla_ppl"),
        "import": (["import", hf, "--out", tmp_path / "imported"], tmp_path / "imported"),
        "finetune": (["finetune", trained_run, "--data", chats, "--out", tmp_path / "ft"], tmp_path / "ft"),
    }
    for name, (argv, target) in targets.items():
        with exclusive(target):
            code, err = run_cli(argv)
        one_line_error(code, err, f"is being written by another banglaslm process (pid {os.getpid()}")
        assert not target.exists(), name
        assert list(tmp_path.glob(".*")) == [], name  # the lock goes with its holder


def test_two_trainings_into_one_run_folder(data_dir, tmp_path):
    run = tmp_path / "run"
    long_run = {**TINY_SETTINGS, "train.max_iters": 100000, "train.eval_interval": 10, "train.warmup_iters": 5}
    first = subprocess.Popen([sys.executable, "-m", "banglaslm", "train", "--data", str(data_dir), "--out", str(run),
                              *set_args(long_run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "latest.safetensors").exists():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        code, err = run_cli(["train", "--data", data_dir, "--out", run, *set_args(TINY_SETTINGS)])
        one_line_error(code, err, f"(pid {first.pid} on")
        code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume"])
        one_line_error(code, err, "being written by another banglaslm process")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no clean-up at all: a stale lock stays behind
        first.wait()
    assert (tmp_path / ".run.lock").exists()
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--resume", "--max-iters", "12"])
    assert code == 0, err  # the dead holder's lock is taken over
    assert not (tmp_path / ".run.lock").exists()


def test_destinations_that_are_not_ours(trained_run, data_dir, small_books, tmp_path):
    (tmp_path / "f").write_text("a file", encoding="utf-8")
    code, err = run_cli(["prepare", *small_books, "--out", tmp_path / "f" / "sub"])
    one_line_error(code, err, "is a file, not a folder")
    # A run folder is not a data folder: its tokenizer must survive.
    tokenizer = (trained_run / "tokenizer.json").read_bytes()
    code, err = run_cli(["prepare", *small_books, "--doc-split", "paragraph", "--out", trained_run])
    one_line_error(code, err, "not a banglaslm data folder")
    assert (trained_run / "tokenizer.json").read_bytes() == tokenizer
    # A user's project folder is not a run folder.
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"mine": true}', encoding="utf-8")
    code, err = run_cli(["train", "--data", data_dir, "--out", project, *set_args(TINY_SETTINGS)])
    one_line_error(code, err, "not a banglaslm run folder")
    assert json.loads((project / "config.json").read_text()) == {"mine": True}
    assert [p.name for p in project.iterdir()] == ["config.json"]
    # The data folder is not a run folder either, and an input folder is not an output.
    code, err = run_cli(["train", "--data", data_dir, "--out", data_dir, *set_args(TINY_SETTINGS)])
    one_line_error(code, err, "is a data folder (prepare wrote it); give --out a new folder for the run")
    code, err = run_cli(["train", "--data", trained_run, "--out", tmp_path / "r", *set_args(TINY_SETTINGS)])
    one_line_error(code, err, "is a run folder (train wrote it), not a data folder; give --data a folder")
    code, err = run_cli(["train", "--data", data_dir, "--out", project, *set_args(TINY_SETTINGS)])
    one_line_error(code, err, "(an earlier run folder there would be continued with --resume)")
    books = tmp_path / "books"
    books.mkdir()
    for book in small_books[:2]:
        (books / book.name).write_bytes(book.read_bytes())
    code, err = run_cli(["prepare", books, "--doc-split", "paragraph", "--out", books])
    one_line_error(code, err, "holds the input")
    assert sorted(p.name for p in books.iterdir()) == sorted(b.name for b in small_books[:2])
    # An output inside an input folder was accepted, and the next run read it (or, after Ctrl-C,
    # its work folder) as input.
    for command in (["prepare", "--doc-split", "paragraph"], ["clean"]):
        code, err = run_cli([command[0], books, *command[1:], "--out", books / "out"])
        one_line_error(code, err, f"is inside the input folder {books}")
    assert sorted(p.name for p in books.iterdir()) == sorted(b.name for b in small_books[:2])


def test_the_current_folder_is_not_replaced(small_books, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["prepare", *small_books, "--doc-split", "paragraph", "--out", "."])
    one_line_error(code, err, "is the current folder")
    assert list(tmp_path.iterdir()) == []


def test_os_errors_are_one_line(data_dir, small_books, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    import banglaslm.checkpoint as checkpoint

    # A full disk while a checkpoint is written: one line, and the last complete checkpoint stays.
    # (safetensors reports it as its own error, not an OSError: that gave a traceback.)
    run = tmp_path / "run"
    real, calls = safetensors.torch.save_file, {"n": 0}

    def disk_full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(*args, **kwargs)
    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    code, err = run_cli(["train", "--data", data_dir, "--out", run, *set_args(TINY_SETTINGS)])
    one_line_error(code, err, "No space left on device")
    assert "free some space" in err
    assert checkpoint.read_state(run / "checkpoints" / "latest.safetensors")["iter"] == 10
    assert not list((run / "checkpoints").glob(".*"))  # the half-written one is gone
    # A read-only file system (simulated: this test may run as root, which ignores permissions).
    import banglaslm.data.folder as folder

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "d"))
    monkeypatch.setattr(folder, "atomic_write_json", read_only)
    code, err = run_cli(["prepare", *small_books, "--doc-split", "paragraph", "--out", tmp_path / "d"])
    one_line_error(code, err, "Read-only file system")
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.*"))


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_run(trained_run, small_books, tmp_path):
    import shutil

    (tmp_path / ".data.abc123.tmp").mkdir()  # what a prepare killed half-way leaves beside its target
    (tmp_path / ".data.abc123.tmp" / "train.bin").write_bytes(b"\0" * 100)
    code, err = run_cli(["prepare", *small_books, "--doc-split", "paragraph", "--out", tmp_path / "data"])
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    leftover = run / "checkpoints" / ".latest.safetensors.xyz.tmp"  # a checkpoint killed mid-write
    leftover.write_bytes(b"partial")
    code, err = run_cli(["train", "--data", tmp_path / "data", "--out", run, "--resume"])
    assert not leftover.exists()


def test_metrics_deleted_mid_run_are_written_again(data_dir, tmp_path):
    from banglaslm.config import build_config
    from banglaslm.training.trainer import Trainer

    trainer = Trainer(build_config(overrides={**TINY_SETTINGS, "train.max_iters": 30}), data_dir, tmp_path / "run",
                      progress=False)
    real = trainer._step

    def step(it, prefetch):
        if it == 17:
            (tmp_path / "run" / "metrics.jsonl").unlink()
        return real(it, prefetch)
    trainer._step = step
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    iters = [r["iter"] for r in records if "split" not in r]
    assert iters == list(range(0, 30, TINY_SETTINGS["train.log_interval"]))
    assert [r["iter"] for r in records if r.get("split") == "val"] == [0, 10, 20, 30]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks")
def test_resume_of_a_run_that_never_wrote_a_config_is_nothing_to_resume(data_dir, tmp_path):
    code, err = run_cli(["train", "--data", data_dir, "--out", tmp_path / "none", "--resume"])
    one_line_error(code, err, "nothing to resume")


def test_overwrite_replaces_only_an_earlier_export(trained_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes", encoding="utf-8")
    code, err = run_cli(["export", trained_run, "--format", "hf", "--out", mine, "--overwrite"])
    one_line_error(code, err, "not a banglaslm HF export folder")
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "my notes"
    code, _ = run_cli(["export", trained_run, "--format", "hf", "--out", tmp_path / "hf"])
    assert code == 0
    code, err = run_cli(["export", trained_run, "--format", "hf", "--out", tmp_path / "hf"])
    one_line_error(code, err, "is an earlier HF export folder; choose another HF export folder, or add --overwrite")
    code, err = run_cli(["export", trained_run, "--format", "hf", "--out", tmp_path / "hf", "--overwrite"])
    assert code == 0, err  # an earlier export is replaced
    text = tmp_path / "notes.gguf"
    text.write_text("not a model", encoding="utf-8")
    code, err = run_cli(["export", trained_run, "--format", "gguf", "--out", text, "--overwrite"])
    one_line_error(code, err, "is not a GGUF file")
    assert text.read_text(encoding="utf-8") == "not a model"


def test_a_preset_on_resume_may_not_undo_the_runs_own_settings(data_dir, tmp_path, monkeypatch):
    """`--preset tiny --set train.max_iters=8 ...`, then the resume repeating only `--preset tiny`:
    the preset would put max_iters back at its 2,400, so the resume is refused naming the key,
    and the run is left as it was; the same resume without --preset keeps the saved 8."""
    from banglaslm import checkpoint

    run = tmp_path / "run"
    short = ["--set", "train.max_iters=8", "--set", "train.eval_iters=2"]
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--preset", "tiny", *short])
    one_line_error(code, err, "train.warmup_iters (50) exceeds train.max_iters (8); give more steps, or a shorter "
                              "warm-up (train.warmup_iters=N)")  # the fix named, as for --max-iters
    short += ["--set", "train.warmup_iters=4"]
    code, _ = run_cli(["train", "--data", data_dir, "--out", run, "--preset", "tiny", *short])
    assert code == 0
    before = (run / "checkpoints" / "latest.safetensors").read_bytes()
    code, err = run_cli(["train", "--data", data_dir, "--out", run, "--preset", "tiny", "--resume"])
    one_line_error(code, err, "would change the saved run's train.max_iters 8 → 2400")
    assert "train.eval_iters 2 → 10" in err and "train.warmup_iters 4 → 50" in err and "drop --preset" in err
    assert (run / "checkpoints" / "latest.safetensors").read_bytes() == before
    assert run_cli(["train", "--data", data_dir, "--out", run, "--resume"])[0] == 0
    assert checkpoint.read_state(run / "checkpoints" / "latest.safetensors")["iter"] == 8
    assert run_cli(["train", "--data", data_dir, "--out", run, "--preset", "tiny", "--resume", *short])[0] == 0
    # the same command plus --resume, as an interrupted run is told, with --max-iters in it
    again = tmp_path / "again"
    first = ["train", "--data", data_dir, "--out", again, "--preset", "tiny", "--max-iters", 6,
             "--set", "train.warmup_iters=2", "--set", "train.eval_iters=1", "--set", "train.eval_interval=3"]
    stop_training_at(monkeypatch, 3)
    assert run_cli(first)[0] == 130
    monkeypatch.undo()
    code, err = run_cli([*first, "--resume"])
    assert code == 0, err
    assert checkpoint.read_state(again / "checkpoints" / "latest.safetensors")["iter"] == 6


def test_ctrl_c_while_the_command_line_is_read_is_one_line(monkeypatch, capsys):
    """Building the parser imports torch (seconds): Ctrl-C then exits 130 with one line, no traceback."""
    import banglaslm.cli as cli

    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["prepare", "x", "--out", "y"]) == 130
    assert capsys.readouterr().err.strip() == "banglaslm: interrupted"
