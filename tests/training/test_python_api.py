"""The Python API as a notebook uses it: cells run again with the same objects, paths given as a
string or a Path, the defaults the CLI has."""

import os

import pytest
import torch
from conftest import TINY_SETTINGS

from banglaslm.config import build_config
from banglaslm.data.prepare import prepare
from banglaslm.errors import UserError
from banglaslm.training.finetune import finetune
from banglaslm.training.trainer import train


def test_train_leaves_the_config_it_was_given_as_it_was(data_dir, tmp_path):
    """train() wrote the data's vocabulary and max_iters into the caller's config: the next cell's
    run on other data then had the wrong vocabulary."""
    config = build_config(overrides={**TINY_SETTINGS, "train.max_iters": 6, "train.warmup_iters": 1,
                                     "train.eval_interval": 3, "train.threads": 1})
    before = config.to_dict()
    threads = torch.get_num_threads()
    result = train(data_dir, tmp_path / "run", config, max_iters=4, progress=False)
    assert result.iterations == 4
    assert config.to_dict() == before and config.model.vocab_size == 0
    assert torch.get_num_threads() == threads  # train.threads was that run's


def test_one_path_is_one_input_and_paths_may_be_path_objects(small_books, tmp_path):
    """A string where a list goes was read letter by letter: "/" first, and the whole disk walked."""
    folder = small_books[0].parent
    as_string = prepare(str(folder), tmp_path / "a", vocab_size=300)
    as_path = prepare([folder], tmp_path / "b", vocab_size=300)
    assert as_string.meta["splits"]["train"]["digest"] == as_path.meta["splits"]["train"]["digest"]
    with pytest.raises(UserError, match="list of paths"):
        prepare([folder, 3], tmp_path / "c", vocab_size=300)
    assert not (tmp_path / "c").exists()


def test_finetune_in_python_has_the_cli_defaults(trained_run, tmp_path):
    """finetune(data=None) crashed where the CLI takes the embedded instruction set, and a short
    max_iters was refused for the warm-up the CLI shortens to fit."""
    result = finetune(trained_run, None, tmp_path / "chat", max_iters=4, progress=False, say=lambda *_: None)
    assert result.iterations == 4
    assert "everyday" in (tmp_path / "chat" / "data_meta.json").read_text(encoding="utf-8")
    assert os.path.isdir(tmp_path / "chat")


def test_a_runs_config_json_is_a_config_file(trained_run):
    """A run's own config.json, the obvious file to start another run like it, was refused for its
    header ("'format' must be a table of keys"). Its vocabulary size was its data's: a new run
    takes its own data's (0), or data with a larger vocabulary would be refused."""
    from banglaslm.runfolder import RunFolder
    saved = RunFolder(trained_run).load_config()
    again = build_config(file=trained_run / "config.json")
    assert saved.model.vocab_size > 0 and again.model.vocab_size == 0
    again.model.vocab_size = saved.model.vocab_size
    assert again.to_dict() == saved.to_dict()


def test_arguments_of_the_wrong_kind_are_named_with_the_fix(trained_run, data_dir, tmp_path):
    """A run folder's path where a loaded model goes, a list of prompts, a dict of settings or
    a Path to evaluate_text each failed as an AttributeError deep inside."""
    from banglaslm.config import SamplingParams
    from banglaslm.evaluation.perplexity import evaluate_file, evaluate_text
    from banglaslm.generation.engine import Engine, generate
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    cases = [
        (lambda: generate(str(trained_run), "আমি"), f"^loaded must be a loaded model, got str .*load_model\\('{trained_run}'\\)"),
        (lambda: evaluate_file(trained_run, "x.txt"), "^loaded must be a loaded model, got PosixPath"),
        (lambda: evaluate_text(loaded, tmp_path / "a.txt"), "^text must be a str, got PosixPath.*use evaluate_file"),
        (lambda: evaluate_file(loaded, None), "^path must be a file's path"),
        (lambda: generate(loaded, ["আমি", "তুমি"]), r"^prompt must be one text.*Engine\(loaded.model"),
        (lambda: generate(loaded, "আমি".encode()), r"^prompt must be text \(str\), got bytes.*decode"),
        (lambda: generate(loaded, None), r"^prompt must be text \(str\), got NoneType"),
        (lambda: generate(loaded, "আমি", {"temperature": 0.5}), r"^params must be SamplingParams.*SamplingParams\(\*\*"),
        (lambda: Engine(loaded.model, loaded.tokenizer).generate("আমি", SamplingParams()), r"^prompts must be a list.*\[prompt\]"),
        (lambda: train(data_dir, tmp_path / "r1", {"train": {"max_iters": 2}}), r"^config must be a RunConfig.*overrides="),
        (lambda: train(data_dir, tmp_path / "r2", "tiny"), r"^config must be a RunConfig.*build_config\('tiny'\)"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


@pytest.mark.parametrize("given, message", [
    ({"vocab_size": 8000.0}, "vocab_size must be an integer, got float 8000.0"),
    ({"vocab_size": "600"}, "vocab_size must be an integer, got str '600'"),
    ({"val_fraction": "0.1"}, "val_fraction must be a number, got str '0.1'"),
    ({"tokenizer": 5}, "tokenizer must be text, got int 5"),
    ({"workers": True}, "workers must be an integer, got bool True"),
])
def test_options_of_the_wrong_kind_in_python_are_named(small_books, tmp_path, given, message):
    """The command line converts its text; in Python 8000.0 or "600" failed deep inside with a TypeError."""
    from banglaslm.data.clean import clean

    with pytest.raises(UserError, match=f"^{message}$"):
        prepare([str(small_books[0])], tmp_path / "out", **given)
    with pytest.raises(UserError, match="^workers must be an integer, got str '2'$"):
        clean([str(small_books[0])], tmp_path / "out", workers="2")
    assert not (tmp_path / "out").exists()
