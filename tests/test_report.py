"""The run report: folder contents, numbers that agree with `evaluate`, atomic writes and
one-line errors. (The tokenizer study is tested in evaluation/test_tokenizer_study.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banglaslm.errors import UserError
from banglaslm.evaluation.perplexity import evaluate_file
from banglaslm.report import write_report
from banglaslm.runfolder import load_model

BANGLA = (
    "আমাদের গ্রামের পাশ দিয়ে একটি ছোট নদী বয়ে গেছে। বর্ষাকালে নদীতে অনেক জল থাকে, "
    "আর ছেলেমেয়েরা নৌকা নিয়ে খেলা করে।\n\n"
    "সকালবেলা মা রান্নাঘরে ভাত রাঁধেন, বাবা মাঠে কাজ করতে যান। স্কুলে যাওয়ার আগে আমি বই গুছিয়ে নিই। "
    "বিকেলে আমরা মাঠে ফুটবল খেলি, সন্ধ্যায় পড়তে বসি।\n"
)
PNGS = ("loss.png", "lr.png", "throughput.png", "tokenizer.png")
FAST = {"bpe_vocab_sizes": (300, 1000)}
CHEAP = {"bpe_vocab_sizes": (), "prompts": (), "html_page": False}  # for tests of the write itself


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("texts") / "sample.txt"
    path.write_text(BANGLA, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def loaded(trained_run):
    return load_model(trained_run)


@pytest.fixture(scope="module")
def report(trained_run, text_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    return write_report(trained_run, [text_file], out_dir=out, **FAST)


def test_report_folder_has_card_plots_and_html(report):
    assert report.is_dir()
    for name in PNGS:
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 5000, name
    card = (report / "README.md").read_text(encoding="utf-8")
    for name in PNGS:
        assert f"]({name})" in card  # relative links
    for section in ("## Model", "## Training", "## Data", "## Evaluation", "## Samples", "## Tokenizer"):
        assert section in card
    assert "one document is a paragraph of a text file or a row of a table" in card  # the data's doc_split
    page = (report / "report.html").read_text(encoding="utf-8")
    assert '<img src="loss.png"' in page and "<table>" in page
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_card_numbers_match_the_model_and_evaluate(report, loaded, trained_run, text_file):
    card = (report / "README.md").read_text(encoding="utf-8")
    assert f"| parameters | {loaded.model.num_params():,} |" in card
    assert f"| vocabulary | {loaded.tokenizer.vocab_size:,} |" in card
    row = next(line for line in card.splitlines() if line.startswith(f"| {text_file.name} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    expected = evaluate_file(loaded, text_file)
    loss, ppl, bpb, bpc, tokens = map(float, cells[1:6])
    # as the training table writes them: 4 decimals, perplexity 2 (802.807725 was printed)
    assert cells[1:5] == [f"{expected.loss:.4f}", f"{expected.perplexity:.2f}", f"{expected.bits_per_byte:.4f}",
                          f"{expected.bits_per_char:.4f}"]
    assert tokens == expected.tokens

    info = json.loads((report / "report.json").read_text(encoding="utf-8"))
    assert info["evaluations"][0]["loss"] == pytest.approx(expected.loss, rel=1e-9)
    meta = json.loads((trained_run / "data_meta.json").read_text(encoding="utf-8"))
    assert f"| train | {meta['splits']['train']['documents']:,} |" in card
    assert info["training"]["iterations"] > 0 and info["training"]["tokens_seen"] > 0
    assert len(info["samples"]) == 3 and all(s["tokens"] >= 1 for s in info["samples"])


def test_samples_are_reproducible(report, loaded):
    from banglaslm.config import SamplingParams
    from banglaslm.generation.engine import generate
    from banglaslm.report import SAMPLE_SETTINGS

    info = json.loads((report / "report.json").read_text(encoding="utf-8"))
    for sample in info["samples"]:
        again = generate(loaded, sample["prompt"], SamplingParams(seed=sample["seed"], **SAMPLE_SETTINGS))
        assert again.text == sample["text"]
    card = (report / "README.md").read_text(encoding="utf-8")
    assert info["samples"][0]["prompt"] + info["samples"][0]["text"].replace("```", "'''") in card


def test_failed_write_leaves_no_report(trained_run, text_file, tmp_path, monkeypatch):
    import banglaslm.report as report_mod

    def boom(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(report_mod, "plot_tokenizers", boom)
    with pytest.raises(RuntimeError):
        write_report(trained_run, [text_file], out_dir=tmp_path / "rep", **CHEAP)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_report(report, trained_run, text_file, monkeypatch):
    import banglaslm.report as report_mod

    before = {p.name: p.read_bytes() for p in report.iterdir()}
    monkeypatch.setattr(report_mod, "render_markdown", lambda info: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_report(trained_run, [text_file], out_dir=report, **CHEAP)
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before
    assert sorted(p.name for p in report.parent.iterdir()) == [report.name]


def test_bad_inputs_are_user_errors(trained_run, text_file, tmp_path):
    with pytest.raises(UserError, match="run folder not found"):
        write_report(tmp_path / "nope", [text_file])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a banglaslm run folder"):
        write_report(tmp_path / "empty", [text_file])
    out = tmp_path / "rep"
    with pytest.raises(UserError, match="text file not found"):
        write_report(trained_run, [tmp_path / "missing.txt"], out_dir=out)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xc3\x28 abc")  # invalid UTF-8, no byte-order mark
    with pytest.raises(UserError, match="not UTF-8"):
        write_report(trained_run, [bad], out_dir=out)
    empty = tmp_path / "blank.txt"
    empty.write_text("   \n", encoding="utf-8")
    with pytest.raises(UserError):
        write_report(trained_run, [empty], out_dir=out, **CHEAP)
    assert not out.exists()
    with pytest.raises(UserError, match="holds the run folder"):
        write_report(trained_run, [text_file], out_dir=trained_run)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match="not a banglaslm report"):
        write_report(trained_run, [text_file], out_dir=other)
    assert (other / "keep.txt").read_text(encoding="utf-8") == "mine"
    for err in (UserError,):
        try:
            write_report(tmp_path / "nope")
        except err as exc:
            assert "\n" not in str(exc)


def test_summary_and_plots_without_metrics(tmp_path):
    from banglaslm.config import build_config
    from banglaslm.report import training_summary
    from banglaslm.training.metrics import plot_loss, plot_series

    cfg = build_config(overrides={"model.block_size": 16, "train.batch_size": 2, "train.grad_accum_steps": 3})
    summary = training_summary([], cfg, iterations=10)
    assert summary["tokens_seen"] == 10 * 16 * 2 * 3
    assert summary["best_val_loss"] is None and summary["median_tokens_per_s"] is None
    plot_loss([], tmp_path / "loss.png")
    plot_series([], "lr", "learning rate", "lr", tmp_path / "lr.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    records = [{"iter": 0, "loss": 5.0, "lr": 1e-3, "tokens_per_s": 10.0},
               {"iter": 5, "loss": 4.0, "lr": 2e-3, "tokens_per_s": 100.0},
               {"iter": 10, "loss": 3.0, "lr": 2e-3, "tokens_per_s": 300.0},
               {"iter": 10, "split": "train", "loss": 3.1}, {"iter": 10, "split": "val", "loss": 3.5},
               {"iter": 20, "split": "val", "loss": 3.6}]
    summary = training_summary(records, cfg, iterations=20)
    assert summary["median_tokens_per_s"] == 200.0  # the first step (warm-up) is left out
    assert summary["best_val_loss"] == 3.5 and summary["final_val_loss"] == 3.6
    assert summary["evaluations"] == 2


def test_a_run_stopped_before_its_end_says_of_how_many():
    """The card of a run stopped by Ctrl-C at 10 of 200 iterations said "iterations | 10" alone."""
    from banglaslm.config import build_config
    from banglaslm.report import _iterations, training_summary

    cfg = build_config(overrides={"train.max_iters": 200})
    assert _iterations(training_summary([], cfg, iterations=10)) == "10 of 200 planned (it stopped before its end)"
    assert _iterations(training_summary([], cfg, iterations=200)) == "200"
    cfg.train.time_limit_min = 5.0  # max_iters only caps a time-limited run: it ends at its time
    assert _iterations(training_summary([], cfg, iterations=10)) == "10"


def test_an_imported_run_has_no_best_validation_loss(trained_run, tmp_path):
    # An imported run was never evaluated: its checkpoint's "best" is the largest float (JSON has
    # no inf), which the card once printed as a 309-digit loss.
    from banglaslm.interop.hf_export import export_hf
    from banglaslm.interop.hf_import import import_hf

    export_hf(trained_run, tmp_path / "hf")
    run = import_hf(tmp_path / "hf", tmp_path / "imported")
    out = write_report(run, [], out_dir=tmp_path / "report", **FAST)
    card = (out / "README.md").read_text(encoding="utf-8")
    # it says where it came from, and invents no training settings or advice for it
    assert "Imported from the Hugging Face folder `hf`" in card and str(tmp_path) not in card  # a card is shared
    assert "peak learning rate" not in card and "train.eval_interval" not in card
    assert "Imported: what it was trained on is not recorded here." in card
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["training"]["best_val_loss"] is None
    # not "trained with banglaslm", and no empty plots of a training that did not happen here
    assert "imported from Hugging Face (`llama`)" in card and "trained with banglaslm" not in card
    assert not {"loss.png", "lr.png", "throughput.png"} & {p.name for p in out.iterdir()}


def test_control_characters_in_samples_are_shown_escaped():
    """A barely trained or imported model can write NUL and other control characters: raw in
    README.md they made grep call it a binary file."""
    from banglaslm.report import _samples_section

    info = {"sampling": {"max_new_tokens": 4, "temperature": 0.8, "top_k": 50},
            "samples": [{"prompt": "আমি\x05", "text": " ভাত\x00খাই\x1e\nনা\tহ্যাঁ", "seed": 0, "tokens": 4}]}
    card = "\n".join(_samples_section(info))
    assert "\\x00" in card and "\\x1e" in card and "`আমি\\x05`" in card
    assert not any(ord(ch) < 32 and ch not in "\n\t" for ch in card) and "না\tহ্যাঁ" in card


def test_a_finetuned_run_reports_its_source_and_conversations(trained_run, tmp_path):
    from banglaslm.runfolder import RunFolder
    from banglaslm.training.finetune import finetune, finetune_config

    chats = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"প্রশ্ন {i}"}, {"role": "assistant", "content": f"উত্তর {i}"}]}
            for i in range(20)]
    chats.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = finetune_config(RunFolder(trained_run).load_config(),
                             overrides={"train.max_iters": 2, "train.eval_interval": 1, "train.eval_iters": 1,
                                        "finetune.lora_rank": 2})
    run = finetune(trained_run, [str(chats)], tmp_path / "ft", config, progress=False, say=lambda line: None).run_dir
    card = (write_report(run, [], out_dir=tmp_path / "report", **CHEAP) / "README.md").read_text(encoding="utf-8")
    assert f"Started from the weights of `{trained_run.name}`" in card and "LoRA adapters of rank 2" in card
    assert str(trained_run.parent) not in card
    meta = json.loads((run / "data_meta.json").read_text(encoding="utf-8"))
    train = meta["splits"]["train"]
    assert f"| train | {train['conversations']:,} | {train['blocks']:,} | {train['tokens']:,} |" in card
    assert "chats.jsonl" in card and "`?`" not in card
    # Its samples are answers to questions in the chat template, as `chat` streams them; they were
    # plain continuations of text, which a fine-tuned model is not meant for.
    from banglaslm import Engine, SamplingParams, load_model
    from banglaslm.chat_template import chat_stops, encode_chat
    from banglaslm.report import CHAT_PROMPTS, SAMPLE_SETTINGS

    out = write_report(run, [], out_dir=tmp_path / "chat_report", bpe_vocab_sizes=(), html_page=False)
    info = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [(s["prompt"], s["chat"]) for s in info["samples"]] == [(p, True) for p in CHAT_PROMPTS]
    loaded = load_model(run)
    for sample in info["samples"]:
        context, _ = encode_chat(loaded.tokenizer, [{"role": "user", "content": sample["prompt"]}])
        params = SamplingParams(seed=sample["seed"], stop=chat_stops(tokenizer=loaded.tokenizer), **SAMPLE_SETTINGS)
        assert "".join(Engine(loaded).stream(context, params)).lstrip() == sample["text"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.count("**Question**") == len(CHAT_PROMPTS) and "**Prompt**" not in card


def test_a_table_is_evaluated_row_by_row_as_eval_does(trained_run, loaded, tmp_path):
    """`report --text news.csv` was refused ("write the text of its documents to a .txt file");
    it scores the rows of the text column as `eval --text-column` does."""
    import csv

    from banglaslm.evaluation.perplexity import evaluate_file

    rows = [("এক", "নদীর ধারে একটি ছোট গ্রাম ছিল।"), ("দুই", "সকালে বৃষ্টি হল, বিকেলে রোদ।")]
    with open(tmp_path / "news.csv", "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([("Title", "News"), *rows])
    report = write_report(trained_run, [tmp_path / "news.csv"], out_dir=tmp_path / "rep", text_column="News", **CHEAP)
    card = (report / "README.md").read_text(encoding="utf-8")
    expected = evaluate_file(loaded, tmp_path / "news.csv", text_column="News")
    row = next(line for line in card.splitlines() if line.startswith("| news.csv |"))
    assert [c.strip() for c in row.strip("|").split("|")][1] == f"{expected.loss:.4f}"
