import math

import pytest
import torch
import torch.nn.functional as F

from banglaslm.errors import UserError
from banglaslm.evaluation.perplexity import evaluate_file, evaluate_text, score_tokens
from banglaslm.runfolder import load_model


def brute_force_nats(model, ids):
    """Score token t with the `block` tokens before it (maximal context), one by one."""
    block = model.config.block_size
    total = 0.0
    for t in range(1, len(ids)):
        ctx = torch.tensor([ids[max(0, t - block):t]])
        logits, _ = model(ctx)
        total -= F.log_softmax(logits[0, -1], -1)[ids[t]].item()
    return total


def test_sliding_window_scores_every_token_once(trained_run):
    loaded = load_model(trained_run)
    ids = [loaded.tokenizer.eod_id] + loaded.tokenizer.encode("আমার সোনার বাংলা, আমি তোমায় ভালোবাসি। " * 4)
    assert len(ids) > 2 * loaded.config.model.block_size
    with torch.no_grad():
        exact = brute_force_nats(loaded.model, ids)
        stride1 = score_tokens(loaded.model, ids, stride=1)
        half = score_tokens(loaded.model, ids, stride=loaded.config.model.block_size // 2)
    # stride 1 is exactly maximal context for every token
    assert stride1 == pytest.approx(exact, rel=1e-4)
    # a coarser stride scores each token once with less context: close, not equal
    assert half == pytest.approx(exact, rel=0.05)


@pytest.mark.parametrize("stride_div", [1, 2, 3])
def test_batched_windows_score_as_one_window_at_a_time(trained_run, stride_div):
    """Windows scored many per forward pass (right-padded) give what one window per pass gives,
    up to float rounding; 7 extra ids make the last window shorter than the others."""
    loaded = load_model(trained_run)
    block = loaded.config.model.block_size
    ids = [loaded.tokenizer.eod_id] + loaded.tokenizer.encode("নদীর ধারে একটি ছোট গ্রাম ছিল। " * 12)[:5 * block + 7]
    stride = max(1, block // stride_div)
    one_by_one = score_tokens(loaded.model, ids, stride, tokens_per_pass=block)
    batched = score_tokens(loaded.model, ids, stride)
    assert batched == pytest.approx(one_by_one, rel=1e-5)


def test_metrics_are_consistent(trained_run, tmp_path):
    loaded = load_model(trained_run)
    f = tmp_path / "t.txt"
    f.write_text("নদীর ধারে একটি ছোট গ্রাম ছিল।\n", encoding="utf-8")
    r = evaluate_file(loaded, f)
    nats = r.loss * r.tokens
    assert r.perplexity == pytest.approx(math.exp(r.loss))
    assert r.bits_per_char == pytest.approx(nats / math.log(2) / r.chars)
    assert r.bits_per_byte == pytest.approx(nats / math.log(2) / len("নদীর ধারে একটি ছোট গ্রাম ছিল।".encode()))
    assert r.chars == len("নদীর ধারে একটি ছোট গ্রাম ছিল।")


def test_empty_and_missing_files(trained_run, tmp_path):
    loaded = load_model(trained_run)
    (tmp_path / "e.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(UserError, match="no text"):
        evaluate_file(loaded, tmp_path / "e.txt")
    with pytest.raises(UserError, match="not found"):
        evaluate_file(loaded, tmp_path / "none.txt")
    with pytest.raises(UserError, match="stride"):
        evaluate_text(loaded, "ক খ", stride=10_000)


def test_compressed_and_non_text_files(trained_run, tmp_path):
    import gzip

    loaded = load_model(trained_run)
    text = "নদীর ধারে একটি ছোট গ্রাম ছিল।\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    (tmp_path / "t.txt.gz").write_bytes(gzip.compress(text.encode()))
    plain, packed = evaluate_file(loaded, tmp_path / "t.txt"), evaluate_file(loaded, tmp_path / "t.txt.gz")
    assert (packed.tokens, packed.chars, packed.loss) == (plain.tokens, plain.chars, plain.loss)
    (tmp_path / "held_out.pdf").write_bytes(b"%PDF-1.7\n")
    with pytest.raises(UserError, match="PDF file, not text: extract its text first"):
        evaluate_file(loaded, tmp_path / "held_out.pdf")
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(b'{"text": "x"}\n{"text": "y"}\n'))
    assert evaluate_file(loaded, tmp_path / "docs.jsonl.gz").chars == 2  # its rows, not its braces


def test_a_table_is_scored_row_by_row_as_training_reads_it(trained_run, tmp_path, capsys):
    """The course's held-out data is a news CSV: eval refused it ("write the text of its documents
    to a .txt file first"). Each row of the text column is a document after the end-of-document
    token, as prepare writes the validation split."""
    import csv

    from banglaslm.cli import main

    loaded = load_model(trained_run)
    rows = [("এক", "নদীর ধারে একটি ছোট গ্রাম ছিল।"), ("দুই", ""), ("তিন", "সকালে বৃষ্টি হল, বিকেলে রোদ।")]
    with open(tmp_path / "news.csv", "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([("Title", "News"), *rows])
    result = evaluate_file(loaded, tmp_path / "news.csv", text_column="News")
    eod, encode = loaded.tokenizer.eod_id, loaded.tokenizer.encode
    ids = [eod, *encode(rows[0][1]), eod, *encode(rows[2][1])]  # the empty row is no document
    assert result.tokens == len(ids) - 1 and result.chars == len(rows[0][1]) + len(rows[2][1])
    assert result.loss * result.tokens == pytest.approx(brute_force_nats(loaded.model, ids), rel=1e-5)
    with pytest.raises(UserError, match=r"news.csv has no column 'text' \(it has: 'Title', 'News'\)"):
        evaluate_file(loaded, tmp_path / "news.csv")
    capsys.readouterr()
    assert main(["eval", str(trained_run), "--text", str(tmp_path / "news.csv"), "--text-column", "News", "--json"]) == 0
    assert f'"loss": {result.loss}' in capsys.readouterr().out


def test_text_the_tokenizer_cannot_spell_is_warned_not_trusted(tmp_path, small_books, capsys):
    """Text mostly lost to unknown tokens scored better bits per char than the model's own
    language, with nothing said but the unknown share."""
    from conftest import TINY_SETTINGS, run_cli, set_args

    from banglaslm.data.prepare import prepare

    prepare([str(small_books[0])], tmp_path / "d", tokenizer="char", doc_split="paragraph", progress=False)
    code, err = run_cli(["train", "--data", tmp_path / "d", "--out", tmp_path / "r",
                         *set_args({**TINY_SETTINGS, "train.max_iters": 10, "train.warmup_iters": 2})])
    assert code == 0, err
    (tmp_path / "zh.txt").write_text("天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。" * 20, encoding="utf-8")
    (tmp_path / "bn.txt").write_text(small_books[0].read_text(encoding="utf-8")[:3000], encoding="utf-8")
    foreign = evaluate_file(load_model(tmp_path / "r"), tmp_path / "zh.txt")
    assert foreign.unknown_share > 0.5 and len(foreign.warnings()) == 1
    assert not evaluate_file(load_model(tmp_path / "r"), tmp_path / "bn.txt").warnings()
    capsys.readouterr()
    code, err = run_cli(["eval", tmp_path / "r", "--text", tmp_path / "zh.txt", tmp_path / "bn.txt"])
    assert code == 0 and err.count("warning: ") == 1 and "zh.txt" in err and "are unknown" in err, err


def test_scores_are_made_without_dropout_and_leave_the_models_mode(trained_run):
    """evaluate_text scored a model left in training mode (a caller's own loop) with dropout on:
    a different number each call."""
    loaded = load_model(trained_run)
    for module in loaded.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    text = "নদীর ধারে একটি ছোট গ্রাম ছিল। " * 4
    reference = evaluate_text(loaded, text).bits_per_char
    loaded.model.train()
    assert [evaluate_text(loaded, text).bits_per_char for _ in range(2)] == [reference] * 2
    assert loaded.model.training


def test_a_file_whose_text_names_a_file_is_scored(trained_run, tmp_path, monkeypatch):
    """The check for a path given as text refused a file whose one line named another file."""
    loaded = load_model(trained_run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "a.txt").write_text("notes.txt", encoding="utf-8")
    assert evaluate_file(loaded, tmp_path / "a.txt").chars == len("notes.txt")
    with pytest.raises(UserError, match="is the path of a file"):
        evaluate_text(loaded, "notes.txt")
