"""Bad input through the command line: one line on stderr, non-zero exit, no traceback,
nothing half-written. `cli_here` runs the CLI's main in this process (the subprocess path, an
interpreter start, is covered by test_end_to_end and the serve/chat test here)."""

import json
import subprocess
import sys

import pytest
from conftest import (
    TINY_SETTINGS,
    assert_user_error,
    cli_here,
    one_line_error,
    run_cli,
    set_args,
)


def test_prepare_bad_inputs(tmp_path):
    out = tmp_path / "out"
    assert_user_error(cli_here("prepare", tmp_path / "missing.txt", "--out", out), "input not found")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "empty2.txt").write_text("\n", encoding="utf-8")
    assert_user_error(cli_here("prepare", tmp_path / "empty.txt", tmp_path / "empty2.txt", "--out", out), "no text")
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)))
    assert_user_error(cli_here("prepare", tmp_path / "bin.txt", "--out", out), "binary")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    assert_user_error(cli_here("prepare", tmp_path / "latin1.txt", "--out", out), "not UTF-8")
    # a cleaning option without --clean would filter nothing: refused rather than ignored
    (tmp_path / "ok.txt").write_text("বাংলা ভাষা\n\nআরেকটি অনুচ্ছেদ", encoding="utf-8")
    assert_user_error(cli_here("prepare", tmp_path / "ok.txt", "--out", out, "--min-words", 5), "--min-words filters "
                      "documents only with --clean")
    assert not out.exists()


def test_vocabulary_too_large_for_dtype(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {f"w{i}": i for i in range(70000)}
    vocab["</s>"] = 70000
    Tokenizer(models.WordLevel(vocab, unk_token="w0")).save(str(tmp_path / "big.json"))
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("w1 w2", encoding="utf-8")
    r = cli_here("prepare", tmp_path / "0.txt", tmp_path / "1.txt", tmp_path / "2.txt", "--out", tmp_path / "o",
            "--tokenizer", tmp_path / "big.json", "--dtype", "uint16")
    assert_user_error(r, "too many for uint16")
    assert not (tmp_path / "o").exists()


def test_train_bad_config(tmp_path, data_dir):
    run = tmp_path / "run"
    assert_user_error(cli_here("train", "--data", data_dir, "--out", run, "--preset", "giant"), "unknown preset 'giant'")
    assert_user_error(cli_here("train", "--data", data_dir, "--out", run, "--set", "model.layers=2"), "unknown config key")
    assert_user_error(cli_here("train", "--data", data_dir, "--out", run, "--set", "train.batch_size=x"), "expected an integer")
    assert_user_error(cli_here("train", "--data", tmp_path, "--out", run), "not a prepared data folder")
    assert_user_error(cli_here("train", "--data", data_dir, "--out", run, "--resume"), "nothing to resume")
    assert not run.exists()


def test_train_does_not_take_finetune_settings_it_would_ignore(tmp_path, data_dir):
    """`train --set finetune.lora_rank=4` (or a LoRA run's config.json as --config) trained every
    weight and saved lora_rank 4 in the new run's config.json."""
    from conftest import TINY_SETTINGS, set_args

    from banglaslm.config import build_config
    from banglaslm.errors import UserError
    from banglaslm.training.trainer import train

    run = tmp_path / "run"
    steps = {**TINY_SETTINGS, "train.max_iters": 2, "train.warmup_iters": 1, "train.eval_interval": 2}
    one_line_error(*run_cli(["train", "--data", data_dir, "--out", run, *set_args(steps), "--set", "finetune.lora_rank=4"]),
                   "finetune.lora_rank is a setting of `banglaslm finetune`; train trains every weight")
    config = tmp_path / "lora.json"
    config.write_text(json.dumps({"train": {"seed": 7}, "finetune": {"lora_rank": 4, "loss_on": "assistant"}}),
                      encoding="utf-8")
    r = cli_here("train", "--data", data_dir, "--out", run, *set_args(steps), "--config", config)
    assert r.returncode == 0, r.stderr
    assert f"note: train sets the finetune section of {config} aside (finetune.lora_rank)" in r.stderr
    saved = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert saved["finetune"]["lora_rank"] == 0 and saved["train"]["seed"] == 7  # the rest of --config holds
    lora = build_config(overrides={**TINY_SETTINGS, "finetune.lora_rank": 2})
    with pytest.raises(UserError, match="config has finetune settings, which are for `finetune`"):
        train(data_dir, tmp_path / "api", lora, progress=False)
    assert not (tmp_path / "api").exists()


def test_corpus_too_small_for_one_block(tmp_path):
    for i, word in enumerate(("ছোট", "বড়", "মাঝারি")):
        (tmp_path / f"{i}.txt").write_text(word, encoding="utf-8")
    data = tmp_path / "d"
    assert cli_here("prepare", *[tmp_path / f"{i}.txt" for i in range(3)], "--out", data, "--tokenizer", "char").returncode == 0
    r = cli_here("train", "--data", data, "--out", tmp_path / "run", "--preset", "tiny")
    assert_user_error(r, "no stretch of one block")


def test_mismatched_tokenizer_and_damaged_checkpoint(tmp_path, trained_run, small_books):
    import shutil

    other = tmp_path / "other"
    assert cli_here("prepare", *small_books, "--out", other, "--tokenizer", "char", "--doc-split", "paragraph").returncode == 0
    assert_user_error(cli_here("train", "--data", other, "--out", trained_run, "--resume"), "different tokenizer")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best = run / "checkpoints" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:1000])  # the advice names the flag that picks the other one
    assert_user_error(cli_here("generate", run, "--prompt", "আমি"), "use the other checkpoint (--checkpoint latest)")
    assert cli_here("generate", run, "--prompt", "আমি", "--checkpoint", "latest").returncode == 0
    for name in ("best", "latest"):
        ckpt = run / "checkpoints" / f"{name}.safetensors"
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    assert_user_error(cli_here("generate", run, "--prompt", "আমি"), "damaged or truncated")
    assert_user_error(cli_here("eval", run, "--text", small_books[0]), "damaged or truncated")
    # A run folder whose tokenizer.json was swapped no longer matches its checkpoint.
    run2 = tmp_path / "run2"
    shutil.copytree(trained_run, run2)
    shutil.copy(other / "tokenizer.json", run2 / "tokenizer.json")
    assert_user_error(cli_here("generate", run2, "--prompt", "আমি"), "does not match")


@pytest.mark.parametrize("args, fragment", [
    (["--prompt", ""], "prompt is empty"),
    (["--prompt", "আমি", "--temperature", "-0.5"], "temperature must be >= 0 (0 decodes greedily"),
    (["--prompt", "আমি", "--top-p", "0"], "top-p must be in (0, 1]"),
    (["--prompt", "আমি", "--top-p", "2"], "top-p must be in (0, 1]"),
])
def test_generate_bad_options(trained_run, args, fragment):
    assert_user_error(cli_here("generate", trained_run, *args), fragment)


def test_prompt_file_mistakes_name_the_file(trained_run, tmp_path):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "blank.txt").write_text(" \n\u200d\n", encoding="utf-8")  # nothing once normalized
    for name in ("empty.txt", "blank.txt"):
        assert_user_error(cli_here("generate", trained_run, "--prompt-file", tmp_path / name),
                          f"the prompt file {tmp_path / name} holds no text")
    assert_user_error(cli_here("generate", trained_run, "--prompt-file", tmp_path), "is a folder; give one text file")
    assert_user_error(cli_here("generate", trained_run, "--prompt-file", tmp_path / "nope.txt"), "not found")


def test_generate_and_eval_json(trained_run, small_books, tmp_path):
    r = cli_here("generate", trained_run, "--prompt", "আমার", "--max-new-tokens", "12", "--seed", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"text", "prompt", "tokens"} and out["prompt"] == "আমার" and 0 <= out["tokens"] <= 12
    r = cli_here("eval", trained_run, "--text", small_books[0], small_books[1], "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2
    assert set(rows[0]) == {"file", "loss", "perplexity", "bits_per_byte", "bits_per_char", "tokens", "chars",
                            "unknown_share", "byte_fallback_share"}
    assert rows[0]["file"] == str(small_books[0]) and rows[0]["tokens"] > 1000
    blank = tmp_path / "blank.txt"  # every file is checked before any is scored
    blank.write_text(" \u200b\n", encoding="utf-8")
    for wrong, fragment in ((tmp_path / "typo.txt", "text file not found"), (blank, "holds no text")):
        r = cli_here("eval", trained_run, "--text", small_books[0], wrong, "--json")
        assert_user_error(r, fragment)
        assert r.stdout == ""  # not the first file's scores, then the error


def test_quantized_eval_stays_within_one_percent_and_generate_runs(trained_run, small_books):
    """--quantize on eval and generate: bits per character on real text within 1% of float32."""
    bpc = {}
    for kind in ("none", "int8", "bf16"):
        r = cli_here("eval", trained_run, "--text", small_books[0], "--json", "--quantize", kind)
        assert r.returncode == 0, r.stderr
        bpc[kind] = json.loads(r.stdout)["bits_per_char"]
    assert abs(bpc["int8"] / bpc["none"] - 1) < 0.01 and abs(bpc["bf16"] / bpc["none"] - 1) < 0.01, bpc
    assert bpc["int8"] != bpc["none"]  # it did run on other weights
    r = cli_here("generate", trained_run, "--prompt", "আমার", "--max-new-tokens", "12", "--greedy",
            "--json", "--quantize", "int8")
    assert r.returncode == 0 and json.loads(r.stdout)["tokens"] > 0, r.stderr
    r = cli_here("generate", trained_run, "--prompt", "আমার", "--quantize", "int4")
    assert r.returncode == 2 and "invalid choice: 'int4'" in r.stderr


def test_train_help_lists_every_config_key():
    r = cli_here("train", "--help")
    assert r.returncode == 0
    for key in ("model.arch", "model.n_layer", "train.learning_rate", "train.precision", "presets: tiny"):
        assert key in r.stdout


def test_a_path_that_is_not_a_run_folder_says_what_it_is_and_what_to_give(trained_run, data_dir, tmp_path):
    """An HF export given to generate was told "has no checkpoint yet; train it first", and a
    checkpoint file "run folder not found"."""
    from banglaslm.interop.hf_export import export_hf

    hf = export_hf(trained_run, tmp_path / "hf")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    text = tmp_path / "held.txt"
    text.write_text("আমি বাংলায় গান গাই।\n", encoding="utf-8")
    cases = {hf: f"{hf} is a Hugging Face model folder, not a banglaslm run folder; import it first: banglaslm "
                 f"import {hf} --out RUN_DIR",
             trained_run / "checkpoints" / "best.safetensors": f"is a checkpoint file; give its run folder, {trained_run} ",
             data_dir: f"is a data folder (prepare wrote it), not a run folder; train a model on it: banglaslm "
                       f"train --data {data_dir} --out RUN_DIR",
             gguf: "is a GGUF file (for llama.cpp); give the run folder it was exported from"}
    for path, message in cases.items():
        for command in (["generate", path, "--prompt", "আমি"], ["eval", path, "--text", text], ["serve", path],
                        ["export", path, "--format", "hf", "--out", tmp_path / "out"], ["report", path]):
            code, err = run_cli(command)
            one_line_error(code, err, message)
    assert not (tmp_path / "out").exists()


def test_finetune_help_names_every_row_shape_it_reads():
    """ShareGPT's `conversations` were read but the help for --data did not say so."""
    from banglaslm.data.conversations import as_conversation

    help_text = " ".join(cli_here("finetune", "--help").stdout.split())
    rows = {"messages": {"messages": [{"role": "user", "content": "ক"}, {"role": "assistant", "content": "খ"}]},
            "conversations": {"conversations": [{"from": "human", "value": "ক"}, {"from": "gpt", "value": "খ"}]},
            "instruction": {"instruction": "ক", "output": "খ"}, "prompt": {"prompt": "ক", "completion": "খ"}}
    for key, row in rows.items():
        assert as_conversation(row, "row")[-1]["content"] == "খ"  # a shape that reads ...
        assert f"`{key}`" in help_text, key                  # ... is named in the help


def test_every_command_has_help(capsys):
    # help is generated from signatures; a "%" in a help text once made argparse crash on --help
    from banglaslm.cli import COMMANDS, main

    for command in [None, *COMMANDS]:
        with pytest.raises(SystemExit) as done:
            main([*([command] if command else []), "--help"])
        assert done.value.code == 0, command
        out = capsys.readouterr().out
        assert out.startswith("usage: banglaslm") and "Traceback" not in out, command


def test_export_import_round_trip_through_the_cli(trained_run, tmp_path):
    hf, back = tmp_path / "hf", tmp_path / "back"
    r = cli_here("export", trained_run, "--format", "hf", "--out", hf)
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {p.name for p in hf.iterdir()}
    assert json.loads((hf / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    r = cli_here("import", hf, "--out", back)
    assert r.returncode == 0, r.stderr
    a = cli_here("generate", trained_run, "--prompt", "আমার", "--greedy", "--max-new-tokens", "10", "--json")
    b = cli_here("generate", back, "--prompt", "আমার", "--greedy", "--max-new-tokens", "10", "--json")
    assert json.loads(a.stdout)["text"] == json.loads(b.stdout)["text"]
    assert_user_error(cli_here("export", trained_run, "--format", "hf", "--out", hf), "")


def test_gguf_export_through_the_cli(trained_run, trained_gpt_run, tmp_path):
    gguf = pytest.importorskip("gguf")
    out = tmp_path / "m.gguf"
    r = cli_here("export", trained_run, "--format", "gguf", "--out", out, "--gguf-type", "q8_0")
    assert r.returncode == 0, r.stderr
    assert "note: llama-cpp-python 0.3.36 crashed" in r.stderr and "n_batch=1" in r.stderr  # its known q8_0 fault
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen35"
    assert any(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in reader.tensors)
    assert_user_error(cli_here("export", trained_run, "--format", "gguf", "--out", out), "exists")
    folder = f"{tmp_path / 'new'}/"  # a folder, by its slash, though not made yet: not a file named "new"
    assert_user_error(cli_here("export", trained_run, "--format", "gguf", "--out", folder), "names a folder (it ends in a slash); give the path")
    assert not (tmp_path / "new").exists()
    assert_user_error(cli_here("import", out, "--out", tmp_path / "back"), "is a file; import reads a Hugging Face")
    assert cli_here("export", trained_run, "--format", "gguf", "--out", out, "--overwrite").returncode == 0
    # The course GPT's exact GELU is not llama.cpp's: refused unless accepted explicitly.
    g = tmp_path / "gpt.gguf"
    assert_user_error(cli_here("export", trained_gpt_run, "--format", "gguf", "--out", g),
                      "GELU (logits differ by ~1e-3, near-ties can flip); allow the approximation with --approximate-gelu")
    from banglaslm.config import ModelConfig
    from banglaslm.errors import UserError
    from banglaslm.interop.gguf_export import check_gguf_exportable
    with pytest.raises(UserError, match="allow the approximation with `approximate_gelu`, or"):  # Python's name there
        check_gguf_exportable(ModelConfig(arch="gpt", vocab_size=100))
    assert not g.exists()
    r = cli_here("export", trained_gpt_run, "--format", "gguf", "--out", g, "--approximate-gelu")
    assert r.returncode == 0 and "note:" in r.stderr and g.is_file()


def test_generate_stream_prints_the_same_text_as_json(trained_run):
    common = ["--prompt", "আমার", "--max-new-tokens", "25", "--seed", "7", "--temperature", "1.3", "--top-k", "40"]
    streamed = cli_here("generate", trained_run, *common, "--stream")
    whole = cli_here("generate", trained_run, *common, "--json")
    assert streamed.returncode == 0 and whole.returncode == 0, streamed.stderr + whole.stderr
    assert streamed.stdout == "আমার" + json.loads(whole.stdout)["text"] + "\n"
    assert_user_error(cli_here("generate", trained_run, *common, "--stream", "--json"), "cannot be combined")
    assert_user_error(cli_here("generate", trained_run, "--prompt", "ক", "--min-p", "2"), "--min-p")


def test_report_command(trained_run, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("নদীর ধারে একটি ছোট গ্রাম ছিল। সেখানে সবাই মিলেমিশে থাকত।\n", encoding="utf-8")
    out = tmp_path / "rep"
    r = cli_here("report", trained_run, "--text", text, "--out", out)
    assert r.returncode == 0, r.stderr
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "loss.png" in card and str(text.name) in card
    assert (out / "tokenizer.png").read_bytes()[:4] == b"\x89PNG"
    assert_user_error(cli_here("report", tmp_path / "nope"), "not found")


def test_serve_and_chat_commands(trained_run):
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "banglaslm", "serve", str(trained_run), "--port", str(port),
                               "--quantize", "int8"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.time() < deadline and server.poll() is None, server.stderr.read() if server.poll() is not None else "timeout"
                time.sleep(0.3)
        body = json.dumps({"model": trained_run.name, "prompt": "আমার", "max_tokens": 5, "temperature": 0}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            out = json.loads(r.read())
        assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] <= 5
    finally:
        server.terminate()
        server.wait(timeout=30)
    chat = subprocess.run([sys.executable, "-m", "banglaslm", "chat", str(trained_run), "--seed", "1",
                           "--max-new-tokens", "8", "--quantize", "bf16"], input="/temp 0.5\nনমস্কার\n/quit\n", capture_output=True,
                          text=True, timeout=120)
    assert chat.returncode == 0 and "Traceback" not in chat.stderr, chat.stderr
    assert "আপনি> নমস্কার\n" in chat.stdout  # a piped line is echoed after its prompt


def test_lm_eval_task_command(tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("নদীর ধারে  একটি গ্রাম।\n\n\nসেখানে থাকে এক কৃষক।", encoding="utf-8")
    out = tmp_path / "task"
    assert_user_error(cli_here("lm-eval-task", tmp_path / "missing.txt", "--out", out), "missing.txt")
    assert not out.exists()
    done = cli_here("lm-eval-task", text, "--out", out, "--name", "bn_test")
    assert done.returncode == 0, done.stderr
    assert "--tasks bn_test" in done.stdout
    [doc] = [json.loads(line) for line in (out / "bn_test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert doc["text"] == "নদীর ধারে একটি গ্রাম।\n\nসেখানে থাকে এক কৃষক।"  # normalized, one document
    assert "task: bn_test" in (out / "bn_test.yaml").read_text(encoding="utf-8")


def test_cli_defaults_are_the_library_defaults():
    # Flags are built from the library's signatures and dataclasses: nothing restated, nothing drifts.
    import inspect

    from banglaslm.chat import CHAT_DEFAULTS
    from banglaslm.cli import build_parser, picked
    from banglaslm.config import SamplingParams
    from banglaslm.data.prepare import prepare
    from banglaslm.interop.gguf_export import export_gguf
    from banglaslm.server.run import run_server

    parser = build_parser()
    args = parser.parse_args(["generate", "RUN", "--prompt", "x"])
    assert SamplingParams(**picked(args, SamplingParams)) == SamplingParams()
    args = parser.parse_args(["chat", "RUN"])
    assert SamplingParams(**picked(args, SamplingParams)) == SamplingParams(**CHAT_DEFAULTS)
    for argv, function in ((["prepare", "x.txt", "--out", "o"], prepare),
                           (["export", "RUN", "--format", "gguf", "--out", "o"], export_gguf),
                           (["serve", "RUN"], run_server)):
        args = parser.parse_args(argv)
        chosen = picked(args, function)
        assert chosen, argv
        for name, value in chosen.items():
            assert value == inspect.signature(function).parameters[name].default, (argv, name)
    assert parser.parse_args(["export", "R", "--format", "gguf", "--out", "o"]).dtype == "f16"


def test_library_errors_name_parameters_and_the_cli_names_flags(tmp_path):
    from banglaslm.config import SamplingParams
    from banglaslm.data.prepare import prepare
    from banglaslm.errors import UserError

    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("আমার সোনার বাংলা", encoding="utf-8")
    with pytest.raises(UserError, match=r"^val_fraction must be") as caught:
        prepare([str(tmp_path)], tmp_path / "o", val_fraction=2)
    assert caught.value.param == "val_fraction"
    with pytest.raises(UserError, match=r"^top_k must be at least 1"):
        SamplingParams(top_k=0).validate()
    assert_user_error(cli_here("prepare", tmp_path, "--out", tmp_path / "o", "--val-fraction", "2"), "--val-fraction must be")
    assert_user_error(cli_here("prepare", tmp_path, "--out", tmp_path / "o", "--vocab-size", "5"), "--vocab-size 5 is too small")
    assert not (tmp_path / "o").exists()


def test_a_stop_typed_as_backslash_n_is_a_line_break(trained_run):
    """`--stop "\\n"`, as people type it, reached generate as a backslash and an n, which never matched."""
    from banglaslm.cli import unescape

    assert unescape(r"\n") == "\n" and unescape(r"a\tb") == "a\tb" and unescape(r"\\n") == "\\n" and unescape("।") == "।"
    base = ["generate", trained_run, "--prompt", "আমি", "--greedy", "--max-new-tokens", "60", "--json"]
    typed, real = (json.loads(cli_here(*base, "--stop", stop).stdout) for stop in (r"\n", "\n"))
    assert typed == real and "\n" not in typed["text"]


def test_choices_are_read_in_any_letter_case():
    """`export --format GGUF` printed argparse's usage and "invalid choice"."""
    from banglaslm.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["export", "r", "--format", "GGUF", "--out", "o"]).format == "gguf"
    assert parser.parse_args(["generate", "r", "--prompt", "ক", "--quantize", "INT8"]).quantize == "int8"
    assert parser.parse_args(["prepare", "a.txt", "--out", "o", "--doc-split", "Page"]).doc_split == "page"
    assert parser.parse_args(["clean", "a.txt", "--out", "o", "--preset", "Literature"]).preset == "literature"
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "r", "--prompt", "ক", "--quantize", "int9"])


def test_generate_says_when_the_model_wrote_nothing(trained_run):
    """A chat-tuned run that ended the text at once printed the prompt alone, as if nothing ran."""
    args = ["generate", str(trained_run), "--prompt", "আমি", "--greedy", "--max-new-tokens", "4"]
    first = cli_here(*args, "--json")
    text = json.loads(first.stdout)["text"]
    assert text.strip() and "wrote nothing" not in first.stderr
    for extra in (["--json"], ["--stream"]):  # a stop string at its first character: nothing is left
        r = cli_here(*args, *extra, "--stop", text.strip()[0])
        assert r.returncode == 0 and "note: the model wrote nothing after the prompt" in r.stderr, r.stderr
        assert "began with a --stop string" in r.stderr  # the reason it wrote nothing is named


def test_max_iters_given_twice_with_different_lengths_is_said(data_dir, trained_run, tmp_path, capsys):
    """`--set train.max_iters=100 --max-iters 60` trained 60 without a word."""
    from banglaslm.cli import main

    tiny = {k: v for k, v in TINY_SETTINGS.items() if k != "train.max_iters"}
    for command in (["train", "--data", str(data_dir), *set_args({**tiny, "train.warmup_iters": 1})],
                    ["finetune", str(trained_run)]):
        out = tmp_path / command[0]
        assert main([*command, "--out", str(out), "--set", "max_iters=100", "--max-iters", "2"]) == 0
        assert "note: --max-iters 2 sets the run's length; --set max_iters=100 is set aside" in capsys.readouterr().err
        assert json.loads((out / "config.json").read_text())["train"]["max_iters"] == 2


def test_an_interrupted_resume_is_told_to_run_the_same_command_again(tmp_path, monkeypatch, capsys):
    """Ctrl-C on `train ... --resume` said "the same command plus --resume", which it had."""
    from banglaslm import cli
    from banglaslm.training.trainer import TrainingInterrupted

    def interrupted(args):
        raise TrainingInterrupted(7, tmp_path / "latest.safetensors")
    monkeypatch.setitem(cli.COMMANDS, "train", interrupted)
    for extra, advice in (([], "continue with the same command plus --resume"),
                          (["--resume"], "run the same command again to continue")):
        assert cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *extra]) == 130
        assert capsys.readouterr().err.strip().endswith(advice)


def test_several_keys_after_one_set_say_to_repeat_it(capsys, tmp_path):
    """`--set model.n_layer=2 model.n_embd=64` printed the top-level usage and "unrecognized arguments"."""
    from banglaslm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--set", "model.n_layer=2",
              "model.n_embd=64"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert "--set takes one KEY=VALUE; repeat it for each key: --set model.n_embd=64" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SystemExit):  # finetune: argparse took the second key for its SOURCE
        main(["finetune", "--out", str(tmp_path / "f"), "--set", "train.max_iters=1", "finetune.lora_rank=8"])
    assert "repeat it for each key: --set finetune.lora_rank=8" in capsys.readouterr().err
    for args, key in ((["finetune", "r", "--out", "o", "--lora-rank", "4"], "finetune.lora_rank"),
                      (["train", "--data", "d", "--out", "o", "--learning-rate=3e-4"], "train.learning_rate")):
        with pytest.raises(SystemExit):  # a config key written as an option
            main(args)
        assert f"is no option; config keys go through --set: --set {key}=VALUE" in capsys.readouterr().err


def test_an_interrupted_prepare_says_a_rerun_goes_on(tmp_path):
    """Ctrl-C during prepare printed only "interrupted", though the same command goes on from its work folder."""
    import argparse

    from banglaslm.cli import _unsaved_hint
    from banglaslm.data.prepare import work_folder

    args = argparse.Namespace(command="prepare", out=str(tmp_path / "data"))
    assert _unsaved_hint(args) == ""  # nothing done yet: nothing to go on from
    work_folder(tmp_path / "data").mkdir()
    assert _unsaved_hint(args) == f"; the same command again goes on from the work done ({tmp_path / '.data.prepare'})"


def test_a_run_without_a_best_checkpoint_says_latest_was_read(trained_run, tmp_path, capsys):
    """export and eval fell back to latest without a word, and export said "(best)"."""
    import shutil

    from banglaslm.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "best.safetensors").unlink()
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    out, err = capsys.readouterr()
    assert f"exported {run} (latest) to" in out
    assert "has no best checkpoint yet (no validation so far); reading latest" in err
