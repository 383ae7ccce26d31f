"""Shared fixtures: real text from ../shared/data (skipped cleanly when absent) and small
prepared data folders / trained runs built once per test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LITERATURE = SHARED / "bangla-literature"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"

# A config small enough to train in a second or two on a CPU, with dropout so that the RNG
# state matters for exact resume.
TINY_SETTINGS = {
    "model.arch": "modern", "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32,
    "model.block_size": 32, "model.dropout": 0.1, "train.batch_size": 4, "train.max_iters": 40,
    "train.warmup_iters": 5, "train.eval_interval": 10, "train.eval_iters": 2,
    "train.log_interval": 5, "train.learning_rate": 3e-3, "train.precision": "fp32",
}


def cli(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "banglaslm", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def cli_here(*args) -> subprocess.CompletedProcess:
    """What `cli` returns, from `banglaslm.cli.main` run in this process: the same command line
    without starting an interpreter and importing torch again (seconds a call), for checks of
    what a command prints and returns."""
    import contextlib
    import io

    from banglaslm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse: --help, or a malformed command line
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_user_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    """A user mistake: exit code 2 and one line on stderr, naming `fragment`, no traceback."""
    one_line_error(result.returncode, result.stderr.strip(), fragment)


def run_cli(argv) -> tuple[int, str]:
    """The command line in this process (`cli_here`): its exit code and stderr."""
    result = cli_here(*argv)
    return result.returncode, result.stderr.strip()


def one_line_error(code: int, err: str, fragment: str) -> None:
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    assert fragment in err, err


def set_args(settings: dict) -> list[str]:
    out = []
    for k, v in settings.items():
        out += ["--set", f"{k}={v}"]
    return out


def records(run: Path) -> list[dict]:
    """Every row of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def val_losses(run: Path) -> list[float]:
    """The validation losses a run logged, in order."""
    return [r["loss"] for r in records(run) if r.get("split") == "val"]


def require_literature() -> Path:
    if not LITERATURE.is_dir():
        pytest.skip(f"shared Bangla corpus not found at {LITERATURE}")
    return LITERATURE


def hf_offline(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """Offline for this process: the variables, and the copies huggingface_hub / datasets
    made of them at import time (another test may have imported them already)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        mp.setenv(var, "1")
    mp.setenv("HF_DATASETS_CACHE", str(cache))
    import datasets.config
    import huggingface_hub.constants

    mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    mp.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    mp.setattr(datasets.config, "HF_DATASETS_CACHE", cache)


@pytest.fixture(scope="session")
def literature() -> Path:
    return require_literature()


@pytest.fixture(scope="session")
def small_books(tmp_path_factory) -> list[Path]:
    """Four smaller books (a few hundred KB of real Bangla) from ../shared/data; where that
    folder is absent, four files made from the embedded corpus's registers instead, so the
    pipeline tests still run on a user's machine."""
    if LITERATURE.is_dir():
        names = ["Historic_Charyapad.txt", "MichaelMadhusudanDutta_Poetry_Chaturdashpadi.txt",
                 "RabindranathTagore_Songs_Bhanusimha.txt", "SukumarRay_Poetry_KhaiKhai.txt"]
        return [LITERATURE / n for n in names]
    from banglaslm.data.corpus import corpus_dir

    folder = tmp_path_factory.mktemp("embedded_books")
    books = []
    for register in ("stories", "essays", "news", "verse"):
        book = folder / f"{register}.txt"
        parts = sorted((corpus_dir() / register).glob("*.txt"))
        book.write_text("\n\n".join(p.read_text(encoding="utf-8") for p in parts), encoding="utf-8")
        books.append(book)
    return books


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, small_books) -> Path:
    from banglaslm.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "d"
    prepare([str(p) for p in small_books], out, vocab_size=600, doc_split="paragraph", progress=False)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir) -> Path:
    from banglaslm.config import build_config
    from banglaslm.training.trainer import train

    run = tmp_path_factory.mktemp("run") / "r"
    train(data_dir, run, build_config(overrides=TINY_SETTINGS), progress=False)
    return run


@pytest.fixture(autouse=True)
def _quiet_tokenizers(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", os.environ.get("TOKENIZERS_PARALLELISM", "true"))


@pytest.fixture(scope="session")
def trained_gpt_run(tmp_path_factory, data_dir) -> Path:
    """Like `trained_run`, with the course "gpt" arch (learned positions, LayerNorm, GELU, untied head)."""
    from banglaslm.config import build_config
    from banglaslm.training.trainer import train

    run = tmp_path_factory.mktemp("gpt_run") / "r"
    train(data_dir, run, build_config(overrides={**TINY_SETTINGS, "model.arch": "gpt"}), progress=False)
    return run


@pytest.fixture(scope="session")
def trained_untied_run(tmp_path_factory, data_dir) -> Path:
    """Like `trained_run`, with the output head untied from the embedding (`model.tie_embeddings=false`)."""
    from banglaslm.config import build_config
    from banglaslm.training.trainer import train

    run = tmp_path_factory.mktemp("untied_run") / "r"
    train(data_dir, run, build_config(overrides={**TINY_SETTINGS, "model.tie_embeddings": "false"}), progress=False)
    return run


@pytest.fixture(scope="session")
def chat_base_run(tmp_path_factory, data_dir) -> Path:
    """Like `trained_run`, with a context that holds a whole short conversation (64 tokens), for
    fine-tuning tests."""
    from banglaslm.config import build_config
    from banglaslm.training.trainer import train

    run = tmp_path_factory.mktemp("chat_base") / "r"
    settings = {**TINY_SETTINGS, "model.block_size": 64, "model.n_embd": 48, "model.dropout": 0.0}
    train(data_dir, run, build_config(overrides=settings), progress=False)
    return run


def stop_training_at(monkeypatch, iteration: int) -> None:
    """Make every trainer stop at `iteration` as Ctrl-C would: it saves, then raises
    TrainingInterrupted (`monkeypatch.undo()` lets training run on)."""
    from banglaslm.training.trainer import Trainer

    step = Trainer._step

    def stopping(self, it, prefetch):
        if it == iteration:
            self._stop_signal = 2
        return step(self, it, prefetch)

    monkeypatch.setattr(Trainer, "_step", stopping)
