"""Values that are not numbers, or out of range, in every command: a one-line error naming the
flag or key before any work starts, never a traceback, never silently another value."""

import subprocess
import sys

import pytest
import torch
from conftest import TINY_SETTINGS
from conftest import run_cli as run

BOOK_TEXT = "আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।\n\nচিরদিন তোমার আকাশ, তোমার বাতাস।\n"


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "t.txt"
    path.write_text(BOOK_TEXT, encoding="utf-8")
    return path


@pytest.mark.parametrize("setting, fragment", [
    ("train.learning_rate=nan", "train.learning_rate: must be a finite number"),
    ("train.learning_rate=inf", "train.learning_rate: must be a finite number"),
    ("model.rope_theta=nan", "model.rope_theta: must be a finite number"),
    ("train.grad_clip=nan", "train.grad_clip: must be a finite number"),
    ("train.time_limit_min=-5", "train.time_limit_min: must be >= 0"),
    ("train.seed=-1", "train.seed: must be in [0,"),
    ("model.n_layer=inf", "expected an integer"),
    ("train.batch_size=1e400", "expected an integer"),
    ("model.dropout=nan", "model.dropout: must be a finite number"),
    ("train.batch_size=100000", "GiB to train"),
])
def test_train_settings(data_dir, tmp_path, setting, fragment):
    code, err = run(["train", "--data", data_dir, "--out", tmp_path / "run", "--set", setting])
    assert code == 2 and len(err.splitlines()) == 1 and fragment.replace(":", "") in err.replace(":", ""), err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "99999999999999999999999"], "--seed must be in [0,"),
    (["--seed=-3"], "--seed must be in [0,"),
    (["--max-new-tokens", "1000000000"], "--max-new-tokens must be in [1, 100,000]"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature=-inf"], "--temperature must be a finite number"),
    (["--top-p", "nan"], "--top-p must be a finite number"),
    (["--repetition-penalty", "inf"], "--repetition-penalty must be a finite number"),
    (["--presence-penalty", "nan"], "--presence-penalty must be a finite number"),
])
def test_generate_options(trained_run, args, fragment):
    code, err = run(["generate", trained_run, "--prompt", "আমি", *args])
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err


def test_a_temperature_that_underflows_decodes_greedily(trained_run):
    tiny = run(["generate", trained_run, "--prompt", "আমি", "--temperature", "1e-45", "--max-new-tokens", "12",
                "--seed", "3"])
    greedy = run(["generate", trained_run, "--prompt", "আমি", "--greedy", "--max-new-tokens", "12"])
    assert tiny[0] == greedy[0] == 0


def test_eval_and_prepare_options(trained_run, text, tmp_path):
    code, err = run(["eval", trained_run, "--text", text, "--stride", "0"])
    assert code == 2 and "--stride must be between 1" in err
    for seed in ("-1", str(2**64)):
        code, err = run(["prepare", text, "--doc-split", "paragraph", "--out", tmp_path / "d", "--seed", seed])
        assert code == 2 and "--seed must be in [0," in err, err
    code, err = run(["prepare", text, "--doc-split", "paragraph", "--out", tmp_path / "d", "--val-fraction", "nan"])
    assert code == 2 and "--val-fraction must be between 0 and 1" in err
    code, err = run(["train", "--data", tmp_path / "d", "--out", tmp_path / "r", "--max-iters", "-5"])
    assert code == 2 and "--max-iters" in err
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_chat_survives_bad_settings(trained_run):
    # A bad /seed or /temp is an error line and the conversation goes on; a temperature that
    # underflows decodes greedily instead of ending the session.
    script = "/seed 99999999999999999999999\n/temp nan\n/temp 1e-45\nনমস্কার\n/max 0\nআবার\n/quit\n"
    chat = subprocess.run([sys.executable, "-m", "banglaslm", "chat", str(trained_run), "--max-new-tokens", "6"],
                          input=script, capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0 and "Traceback" not in chat.stderr, chat.stderr
    out = chat.stdout
    assert "error: /seed: seed must be in [0," in out and "error: /temp: temperature must be a finite number" in out
    assert "error: /max: max_new_tokens must be in [1," in out
    assert out.count("সহকারী: ") == 2  # both messages were answered


def test_library_gets_the_same_checks():
    from banglaslm.config import SamplingParams, build_config
    from banglaslm.errors import UserError

    with pytest.raises(UserError, match="temperature must be a finite number"):
        SamplingParams(temperature=float("nan")).validate()
    with pytest.raises(UserError, match="train.learning_rate: must be a finite number"):
        build_config(overrides={**TINY_SETTINGS, "train.learning_rate": float("inf")})
    assert SamplingParams(temperature=1e-45).decodes_greedily and not SamplingParams().decodes_greedily


@pytest.mark.parametrize("command", ["eval", "generate", "chat"])
def test_device_option_is_checked_in_one_line(trained_run, text, command):
    extra = {"eval": ["--text", text], "generate": ["--prompt", "আমি"], "chat": []}[command]
    code, err = run([command, trained_run, *extra, "--device", "tpu"])
    assert code == 2 and len(err.splitlines()) == 1 and "--device must be auto, cpu, cuda or cuda:N" in err, err
    if not torch.cuda.is_available():
        code, err = run([command, trained_run, *extra, "--device", "cuda"])
        assert code == 2 and "--device is cuda but no CUDA GPU is available" in err, err
