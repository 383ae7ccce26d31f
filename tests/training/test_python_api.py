"""The Python API as a notebook uses it: cells run again with the same objects, paths given as a
string or a Path, the defaults the CLI has."""

import json
import os
from pathlib import Path

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
    from banglaslm.interop.hf_import import import_hf
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    held = tmp_path / "held.txt"  # a str naming it was scored as the text "/tmp/.../held.txt"
    held.write_text("নদীর ধারে একটি ছোট গ্রাম ছিল।\n", encoding="utf-8")
    cases = [
        (lambda: generate(str(trained_run), "আমি"), f"^loaded must be a loaded model, got str .*load_model\\('{trained_run}'\\)"),
        (lambda: evaluate_file(trained_run, "x.txt"), "^loaded must be a loaded model, got PosixPath"),
        (lambda: evaluate_text(loaded, tmp_path / "a.txt"), "^text must be a str, got PosixPath.*use evaluate_file"),
        (lambda: evaluate_file(loaded, None), "^path must be a file's path"),
        (lambda: evaluate_text(loaded, str(held)), "^text is the path of a file, .*evaluate_file\\(loaded, "),
        (lambda: import_hf(None, tmp_path / "r3"), "^hf_dir must be a Hugging Face model folder's path"),
        (lambda: generate(loaded, ["আমি", "তুমি"]), r"^prompt must be one text.*Engine\(loaded.model"),
        (lambda: generate(loaded, "আমি".encode()), r"^prompt must be text \(str\), got bytes.*decode"),
        (lambda: generate(loaded, None), r"^prompt must be text \(str\), got NoneType"),
        (lambda: generate(loaded, "আমি", {"temperature": 0.5}), r"^params must be SamplingParams.*SamplingParams\(\*\*"),
        (lambda: Engine(loaded.model, loaded.tokenizer).generate("আমি", SamplingParams()), r"^prompts must be a list.*\[prompt\]"),
        (lambda: train(data_dir, tmp_path / "r1", {"train": {"max_iters": 2}}), r"^config must be a RunConfig.*overrides="),
        (lambda: train(data_dir, tmp_path / "r2", "tiny"), r"^config must be a RunConfig.*build_config\('tiny'\)"),
        (lambda: train(data_dir, tmp_path / "r2", max_iters=0), r"^max_iters must be at least 1, got 0$"),
        (lambda: train(data_dir, tmp_path / "r2", max_iters=3), r"^max_iters 3 is below the warm-up's 200 steps"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message):
            call()
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


@pytest.mark.parametrize("given, message", [
    ({"vocab_size": 8000.0}, "vocab_size must be an integer, got float 8000.0"),
    ({"vocab_size": "600"}, "vocab_size must be an integer, got str '600'"),
    ({"val_fraction": "0.1"}, "val_fraction must be a number, got str '0.1'"),
    ({"tokenizer": 5}, "tokenizer must be text or a path, got int 5"),
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


def test_a_tokenizer_given_as_a_path_is_read(data_dir, small_books, tmp_path):
    """inputs and out_dir took a Path, tokenizer was refused one ("must be text, got PosixPath")."""
    result = prepare([str(small_books[0])], tmp_path / "out", tokenizer=Path(data_dir) / "tokenizer.json",
                     doc_split="page", progress=False)
    assert result.meta["tokenizer"]["sha256"] == \
        json.loads((Path(data_dir) / "meta.json").read_text(encoding="utf-8"))["tokenizer"]["sha256"]


def test_numpy_numbers_work_where_python_numbers_do(trained_run, small_books, tmp_path):
    """A notebook's counts are NumPy's: seed=np.int64(3) failed in torch's seeding, vocab_size=
    np.int64(300) in writing meta.json (leaving a staging folder), a config's np.int64 was refused."""
    import json

    import numpy as np

    from banglaslm.config import SamplingParams, validate
    from banglaslm.evaluation.perplexity import evaluate_text
    from banglaslm.generation.engine import generate
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    assert generate(loaded, "আমি", SamplingParams(max_new_tokens=4, greedy=np.bool_(True))).text == \
        generate(loaded, "আমি", SamplingParams(max_new_tokens=4, greedy=True)).text
    as_numpy = SamplingParams(max_new_tokens=np.int64(8), seed=np.int64(3), temperature=np.float32(0.5),
                              logit_bias={np.int64(5): np.float64(-100.0)})
    as_python = SamplingParams(max_new_tokens=8, seed=3, temperature=0.5, logit_bias={5: -100.0})
    assert generate(loaded, "আমি", as_numpy).text == generate(loaded, "আমি", as_python).text
    text = "আমার সোনার বাংলা, আমি তোমায় ভালোবাসি। " * 8
    assert evaluate_text(loaded, text, stride=np.int64(4)) == evaluate_text(loaded, text, stride=4)
    result = prepare([str(p) for p in small_books], tmp_path / "d", vocab_size=np.int64(300), seed=np.int64(1))
    assert json.loads((tmp_path / "d" / "meta.json").read_text(encoding="utf-8"))["vocab_size_asked"] == 300
    assert result.meta["seed"] == 1
    config = build_config()
    config.train.max_iters, config.model.dropout = np.int64(700), np.float32(0.25)
    validate(config)
    assert type(config.train.max_iters) is int and config.train.max_iters == 700 and config.model.dropout == 0.25


def test_settings_of_the_wrong_kind_in_python_are_named(trained_run):
    """greedy="no" decoded greedily; a float stride was a TypeError from a slice; a list for
    logit_bias an AttributeError."""
    from banglaslm.config import SamplingParams
    from banglaslm.evaluation.perplexity import evaluate_text
    from banglaslm.generation.engine import generate
    from banglaslm.runfolder import load_model

    loaded = load_model(trained_run)
    text = "আমার সোনার বাংলা, আমি তোমায় ভালোবাসি। " * 8
    for call, message in [
        (lambda: generate(loaded, "আমি", SamplingParams(greedy="no")), "^greedy must be True or False, got 'no'"),
        (lambda: generate(loaded, "আমি", SamplingParams(logit_bias=[1, 2])), "^logit_bias must be a dict"),
        (lambda: evaluate_text(loaded, text, stride=2.5), "^stride must be an integer, got float 2.5"),
        (lambda: evaluate_text(loaded, text, stride="4"), "^stride must be an integer, got str '4'"),
    ]:
        with pytest.raises(UserError, match=message):
            call()


def test_prepare_with_workers_from_a_script_without_a_main_guard_names_the_guard(small_books, tmp_path):
    """Each worker process imports the calling script again: one that calls prepare() at its top
    level ran it once per worker, which stopped on the first one's lock with a traceback each."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text("from banglaslm import prepare\n"
                      f"prepare({[str(p) for p in small_books[:2]]!r}, 'out', vocab_size=300, workers=2, "
                      "progress=False)\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.count("Traceback") == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        'calls prepare() outside `if __name__ == "__main__":`; put the call under that guard, or use workers=1')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["script.py"]


def test_engine_takes_a_loaded_model_and_names_what_it_cannot_take(trained_run, tmp_path):
    """Ids outside the vocabulary reached the C decode step ("refused its input (status 2)") or
    the embedding (IndexError); an array or tensor of ids was a ValueError about truth values;
    Engine(loaded) an AttributeError deep inside."""
    import numpy as np

    from banglaslm import Engine
    from banglaslm.config import SamplingParams
    from banglaslm.runfolder import load_model
    from banglaslm.tokenizer import Tokenizer

    loaded = load_model(trained_run)
    engine, params = Engine(loaded), SamplingParams(max_new_tokens=6, greedy=True)
    ids = engine.encode_prompt("আমার সোনার")
    [[want]] = Engine(loaded.model, loaded.tokenizer).generate_ids([ids], params)
    for same in (tuple(ids), np.array(ids), torch.tensor(ids)):
        [[got]] = engine.generate_ids([same], params)
        assert got.token_ids == want.token_ids
        assert "".join(engine.stream(same, params)) == want.text
    assert [c.token_ids for [c] in engine.generate_ids(np.array([ids, ids]), params)] == [want.token_ids] * 2
    # a torch.compile'd model recompiled at every decode step (its cache length changes): it runs eager
    assert Engine(torch.compile(loaded.model), loaded.tokenizer).model is loaded.model
    vocab = loaded.tokenizer.vocab_size
    char = Tokenizer.build_char("আমি " + "".join(map(chr, range(0x4E00, 0x4E00 + vocab))))
    for call, message in [
        (lambda: engine.generate_ids([[0, vocab]], params), rf"^context holds {vocab}, not a token id of this model \(0..{vocab - 1}\)"),
        (lambda: Engine(loaded, use_kernel=False).generate_ids([[0, -5]], params), "^context holds -5, not a token id"),
        (lambda: "".join(engine.stream([0, 2.0], params)), "^context holds 2.0, not a token id"),
        (lambda: engine.generate_ids(ids, params), r"^contexts must be a list of contexts .*use \[ids\] for one"),
        (lambda: engine.generate_ids(torch.tensor(ids), params), r"^contexts must be a list of contexts"),
        (lambda: Engine(str(trained_run)), r"^model must be a model \(GPT\) or a loaded model.*load_model"),
        (lambda: Engine(loaded.model, str(trained_run / "tokenizer.json")), r"^tokenizer must be a Tokenizer"),
        (lambda: Engine(loaded.model, char), rf"^tokenizer has {char.vocab_size:,} tokens, more than the model's"),
        (lambda: Engine(loaded, keep="3"), r"^keep must be a whole number of tokens"),
    ]:
        with pytest.raises(UserError, match=message):
            call()


def test_paths_texts_and_ids_of_the_wrong_kind_are_named(trained_run, small_books, tmp_path):
    """None for a path, a loaded model for its folder, a DataFrame or a text for the inputs, a str
    where a list of texts goes, an int where a list of ids goes: each was a TypeError or
    AttributeError deep inside, or (a str for encode_batch) encoded letter by letter."""
    import pandas as pd

    from banglaslm.interop.hf_export import export_hf
    from banglaslm.runfolder import load_model
    from banglaslm.text import normalize

    loaded = load_model(trained_run)
    tok = loaded.tokenizer
    cases = [
        (lambda: load_model(None), r"^run_dir must be a run folder's path \(str or Path\), got NoneType None$"),
        (lambda: train(None, tmp_path / "r", build_config("tiny")), r"^data_dir must be a data folder's path"),
        (lambda: train([], tmp_path / "r", build_config("tiny")), r"^data_dir must be a data folder's path"),
        (lambda: prepare([str(small_books[0])], None), r"^out_dir must be an output folder's path"),
        (lambda: prepare(pd.DataFrame({"text": ["ক", "খ"]}), tmp_path / "o"), r"^inputs must be a path .*got DataFrame text 0 ক 1 খ$"),
        (lambda: prepare(["আমার সোনার বাংলা\nআমি তোমায় ভালোবাসি"], tmp_path / "o"), r"is text, not a path; write it to a .txt file"),
        (lambda: export_hf(loaded, tmp_path / "hf"), rf"^run_dir must be a run folder's path, got LoadedModel .*loaded from {trained_run}$"),
        (lambda: normalize(None), r"^text must be text \(str\), got NoneType"),
        (lambda: tok.encode(b"abc"), r"^text must be text \(str\), got bytes"),
        (lambda: tok.encode_batch("আমি"), r"^texts must be a list of texts, got str 'আমি': use \[text\] for one$"),
        (lambda: train(None, tmp_path / "r", build_config("tiny")), r"^data_dir must be a data folder's path"),
        (lambda: tok.decode(5), r"^ids must be a list of token ids, got int 5: use \[token_id\] for one$"),
        (lambda: tok.save(tmp_path), r"is a folder; save to a file in it, e.g. .*tokenizer.json$"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)
    assert tok.decode(torch.tensor(tok.encode("আমি ভাত খাই"))) == "আমি ভাত খাই"
    texts = [normalize("আমি ভাত খাই"), normalize("তুমি কোথায়")]  # encode_batch takes normalized text
    assert tok.encode_batch(t for t in texts) == tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
