import json

import pytest

from banglaslm.config import PRESETS, RunConfig, build_config, parse_set_args, validate
from banglaslm.errors import UserError


def test_defaults_are_the_course_setup():
    cfg = build_config()
    m = cfg.model
    assert (m.arch, m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == ("gpt", 8, 8, 512, 128, 0.2)
    assert (cfg.train.beta1, cfg.train.beta2, cfg.train.weight_decay, cfg.train.grad_clip) == (0.9, 0.95, 0.1, 1.0)
    assert build_config("course-58m").to_dict() == cfg.to_dict()


def test_precedence_preset_file_set(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\nn_layer = 3\n[train]\nbatch_size = 5\n", encoding="utf-8")
    cfg = build_config("tiny", f, parse_set_args(["batch_size=7", "model.dropout=0"]))
    assert cfg.model.n_layer == 3 and cfg.train.batch_size == 7 and cfg.model.dropout == 0.0
    assert cfg.model.arch == "modern"  # from the preset
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("overrides, message", [
    ({"model.n_layr": "2"}, r"unknown config key 'model.n_layr' \(did you mean model.n_layer\?\)"),
    ({"batch_size": "many"}, "expected an integer"),
    ({"arch": "llama"}, "expected one of gpt, modern"),
    ({"n_embd": "100", "n_head": "3"}, "divisible"),
    ({"dropout": "1"}, r"must be in \[0, 1\)"),
    ({"learning_rate": "-1"}, "must be > 0"),
    ({"warmup_iters": "99", "max_iters": "10"}, "exceeds"),
    ({"device": "tpu"}, "train.device"),
    ({"tie_embeddings": "maybe"}, "expected true, false or auto"),
])
def test_bad_values(overrides, message):
    with pytest.raises(UserError, match=message):
        build_config(overrides=overrides)


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'huge'; choose one of: " + ", ".join(PRESETS)):
        build_config("huge")
    bad = tmp_path / "c.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        build_config(file=bad)
    with pytest.raises(UserError, match="config file not found"):
        build_config(file=tmp_path / "none.json")
    with pytest.raises(UserError, match="key=value"):
        parse_set_args(["n_layer"])


def test_a_config_files_suffix_says_its_format_in_any_case(tmp_path):
    """UP.TOML was read as JSON ("not valid TOML: Expecting value", a JSON parser's words), and a
    .yaml or a folder were named as invalid or missing."""
    toml = tmp_path / "UP.TOML"
    toml.write_text("[model]\nn_layer = 3\n", encoding="utf-8")
    assert build_config(file=toml).model.n_layer == 3
    (tmp_path / "c.Json").write_text('{"model": {"n_layer": 5}}', encoding="utf-8")
    assert build_config(file=tmp_path / "c.Json").model.n_layer == 5
    (tmp_path / "c.yaml").write_text("model:\n  n_layer: 3\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"c.yaml: give a .toml or .json file"):
        build_config(file=tmp_path / "c.yaml")
    with pytest.raises(UserError, match="is a folder; give a .toml or .json file"):
        build_config(file=tmp_path)


def test_a_key_given_twice_in_a_json_config_is_refused(tmp_path):
    """json kept the last of two `max_iters`, dropping the other without a word (TOML refuses it)."""
    twice = tmp_path / "c.json"
    twice.write_text('{"train": {"max_iters": 100, "learning_rate": 0.001, "max_iters": 5}}', encoding="utf-8")
    with pytest.raises(UserError, match=r"c.json is not valid JSON: the key 'max_iters' is given twice; keep one"):
        build_config(file=twice)
    (tmp_path / "t.toml").write_text("[train]\nmax_iters = 100\nmax_iters = 5\n", encoding="utf-8")
    with pytest.raises(UserError, match="not valid TOML"):
        build_config(file=tmp_path / "t.toml")


@pytest.mark.parametrize("key, hint, command", [
    ("train.lr", "train.learning_rate", "train"), ("train.batchsize", "train.batch_size", "train"),
    ("finetune.epoch", "finetune.epochs", "finetune"), ("wd", "weight_decay", "train"),
    # the right name in another section, always offered whole (it offered lora_dropout, which
    # then set finetune.lora_dropout and left pretraining without dropout)
    ("train.dropout", "model.dropout", "train"), ("model.learning_rate", "train.learning_rate", "train"),
    ("dropuot", "model.dropout", "train"), ("n_layr", "model.n_layer", "train"),
    ("train.dtype", "train.precision", "train"),  # nanoGPT's name: it was offered train.device
    ("model.dtype", "train.precision", "train"), ("model.lr", "train.learning_rate", "train"),  # not model.precision
    ("train.fp16", "train.precision", "train"), ("amp", "precision", "train"),  # fp16 was offered beta1
    ("train.mixed_precision", "train.precision", "train"),
])
def test_an_unknown_key_suggests_the_key_and_the_help_that_lists_it(key, hint, command):
    with pytest.raises(UserError, match=rf"did you mean {hint}\?\); `banglaslm {command} --help` lists them"):
        build_config("tiny", overrides={key: 1})


@pytest.mark.parametrize("value, written", [("float16", "fp16"), ("bfloat16", "bf16"), ("torch.float32", "fp32"),
                                            ("half", "fp16")])
def test_a_precision_spelled_as_a_dtype_is_told_our_spelling(value, written):
    with pytest.raises(UserError, match=rf"expected one of auto, fp32, bf16, fp16 \({value} is written {written} here\)"):
        build_config("tiny", overrides={"train.precision": value})
    with pytest.raises(UserError, match=r"expected one of auto, fp32, bf16, fp16$"):
        build_config("tiny", overrides={"train.precision": "fp8"})


@pytest.mark.parametrize("value, tied", [("auto", None), ("false", False), ("true", True), ("no", False),
                                         (False, False), (None, None)])
def test_tie_embeddings_takes_auto_or_a_bool_from_the_cli_and_files(value, tied, tmp_path):
    cfg = build_config("tiny", overrides={"model.tie_embeddings": value})
    assert cfg.model.tie_embeddings is tied
    assert cfg.model.tied_head is (True if tied is None else tied)  # auto: modern ties
    assert build_config(overrides={"model.tie_embeddings": value}).model.tied_head is bool(tied)  # gpt: untied
    f = tmp_path / "c.json"  # a saved config.json carries null for auto, and reads back the same
    f.write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    assert build_config(file=f).model.tie_embeddings is tied
    assert RunConfig.from_dict({"model": {"arch": "modern"}}).model.tied_head  # configs from before the key


def test_the_help_says_auto_for_a_default_left_to_other_settings():
    from banglaslm.config import describe_fields

    line = next(x for x in describe_fields().splitlines() if x.split()[0] == "model.tie_embeddings")
    assert line.split()[1] == "auto"


@pytest.mark.parametrize("section, field, value, expected", [
    ("train", "lr_schedule", "linear", "expected one of cosine, wsd"),
    ("model", "arch", "llama", "expected one of gpt, modern"),
    ("train", "precision", "fp64", "expected one of"),
    ("model", "n_layer", "1", "expected an integer, not str"),
    ("train", "batch_size", 4.0, "expected an integer, not float"),
    ("train", "learning_rate", "3e-4", "expected a number, not str"),
    ("train", "max_iters", True, "expected an integer"),
])
def test_a_config_built_in_python_is_checked_like_one_from_the_cli(section, field, value, expected):
    """validate() took any value in a dataclass built in Python: lr_schedule="linear" trained and
    then the run's own config.json read as damaged; n_layer="1" failed deep in the trainer."""
    config = build_config()
    setattr(getattr(config, section), field, value)
    with pytest.raises(UserError, match=expected):
        validate(config)


def test_python_numbers_of_the_natural_kind_pass():
    config = build_config()
    config.model.dropout, config.train.learning_rate, config.model.tie_embeddings = 0, 1, None  # int for a float
    validate(config)


def test_a_misspelled_section_is_refused_even_when_empty(tmp_path):
    """{"trian": {}} was ignored without a word (a misspelled key inside a section is caught, an
    empty section held none): the run went on with the defaults the user meant to change."""
    for text, fmt in (('{"model": {"n_layer": 2}, "trian": {}}', "json"), ('[model]\nn_layer = 2\n[trian]\n', "toml")):
        path = tmp_path / f"c.{fmt}"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(UserError, match=r"c\.\w+: unknown section 'trian'; did you mean 'train'\?"):
            build_config(file=path)
