import json

import numpy as np
import pytest

from banglaslm.data.folder import DataFolder
from banglaslm.data.prepare import prepare
from banglaslm.errors import UserError
from banglaslm.text import normalize
from banglaslm.tokenizer import Tokenizer


def write_docs(folder, n, text="বাংলা ভাষার একটি ছোট বাক্য। "):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:03d}.txt").write_text(f"নথি {i}। " + text * (i % 5 + 1), encoding="utf-8")


def test_bins_meta_and_document_structure(tmp_path, small_books):
    out = tmp_path / "data"
    result = prepare([str(p) for p in small_books], out, vocab_size=500, doc_split="paragraph", progress=False)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    tok = Tokenizer.from_file(out / "tokenizer.json")
    assert meta["tokenizer"]["sha256"] == tok.sha256 and meta["dtype"] == "uint16"
    train, val = (DataFolder(out).tokens(split).read() for split in ("train", "val"))
    for split, arr in (("train", train), ("val", val)):
        s = meta["splits"][split]
        assert len(arr) == s["tokens"] and len(s["shards"]) == 1
        assert arr[0] == tok.eod_id and arr[-1] == tok.eod_id
        assert int((arr == tok.eod_id).sum()) == s["documents"] + 1  # one per doc + the leading one
    total = meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"]
    assert 0.02 * total < meta["splits"]["val"]["documents"] < 0.1 * total  # each document by a seeded hash
    # Nothing truncated: decoding a bin gives back the documents' characters.
    decoded = tok.decode(val.tolist())
    assert len(decoded) >= meta["splits"]["val"]["chars"] - meta["splits"]["val"]["documents"]
    assert "characters/token" in result.summary()


def test_summary_says_why_the_vocabulary_is_smaller_than_asked(tmp_path, small_books):
    """Asked for more merges than the text holds, BPE stops short: the summary says so (the size
    asked is in meta.json), and one document is "1 document"."""
    result = prepare([str(small_books[0]), str(small_books[3])], tmp_path / "d", vocab_size=8000, progress=False)
    got, asked = result.meta["tokenizer"]["vocab_size"], result.meta["vocab_size_asked"]
    assert asked == 8000 and got < asked
    assert f"vocabulary {got:,} (asked 8,000: the text has no more pairs" in result.summary()
    assert "val: 1 document," in result.summary()
    enough = prepare([str(small_books[0])], tmp_path / "e", vocab_size=300, doc_split="paragraph", progress=False)
    assert "asked" not in enough.summary().splitlines()[1]
    # a tokenizer given by path was asked for no size: nothing to explain
    reused = prepare([str(small_books[3])], tmp_path / "f", tokenizer=str(tmp_path / "d" / "tokenizer.json"),
                     doc_split="page", progress=False)
    assert reused.meta["vocab_size_asked"] is None and "asked" not in reused.summary()


def test_split_is_seeded_reproducible_and_by_document(tmp_path):
    write_docs(tmp_path / "src", 40)
    a = prepare([str(tmp_path / "src")], tmp_path / "a", vocab_size=300, seed=7, val_fraction=0.25, progress=False)
    prepare([str(tmp_path / "src")], tmp_path / "b", vocab_size=300, seed=7, val_fraction=0.25, progress=False)
    prepare([str(tmp_path / "src")], tmp_path / "c", vocab_size=300, seed=8, val_fraction=0.25, progress=False)
    val_of = {name: DataFolder(tmp_path / name).tokens("val").read().tobytes() for name in "abc"}
    assert val_of["a"] == val_of["b"] != val_of["c"]
    assert 4 <= a.meta["splits"]["val"]["documents"] <= 18
    # Validation documents are whole documents: each val doc text appears intact in the inputs.
    tok = Tokenizer.from_file(tmp_path / "a" / "tokenizer.json")
    val = DataFolder(tmp_path / "a").tokens("val").read().tolist()
    inputs = {normalize(p.read_text(encoding="utf-8")) for p in (tmp_path / "src").iterdir()}
    pieces = [tok.decode(x) for x in _split(val, tok.eod_id)]
    assert pieces and all(p in inputs for p in pieces)


def _split(ids, sep):
    out, cur = [], []
    for i in ids:
        if i == sep:
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(i)
    return out


def test_char_tokenizer_and_existing_tokenizer_json(tmp_path):
    write_docs(tmp_path / "src", 10)
    char = prepare([str(tmp_path / "src")], tmp_path / "c", tokenizer="char", progress=False)
    assert char.meta["tokenizer"]["kind"] == "char"
    reuse = prepare([str(tmp_path / "src")], tmp_path / "r", tokenizer=str(tmp_path / "c" / "tokenizer.json"), progress=False)
    assert reuse.meta["tokenizer"]["sha256"] == char.meta["tokenizer"]["sha256"]
    assert DataFolder(tmp_path / "c").meta["splits"] == DataFolder(tmp_path / "r").meta["splits"]


def test_uint32_when_vocab_does_not_fit_and_error_when_forced(tmp_path):
    from banglaslm.data.folder import id_dtype

    assert id_dtype(70000, "auto") == np.uint32 and id_dtype(65536, "auto") == np.uint16
    with pytest.raises(UserError, match="too many for uint16"):
        id_dtype(70000, "uint16")


def test_failures_leave_nothing_behind(tmp_path):
    (tmp_path / "one.txt").write_text("শুধু একটি নথি", encoding="utf-8")
    with pytest.raises(UserError, match="only 1 document"):
        prepare([str(tmp_path / "one.txt")], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty.txt").write_text("  \n\u200b\n", encoding="utf-8")
    with pytest.raises(UserError, match="no text"):
        prepare([str(tmp_path / "empty.txt")], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # A table's advice is about rows: doc_split, which it was told to use, does nothing for one.
    (tmp_path / "one.csv").write_text("Title,News\nক,শুধু এক লেখা\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"only 1 document, .*; add rows or files \(a table's row is a document; "):
        prepare([str(tmp_path / "one.csv")], tmp_path / "out", text_column="News", doc_split="page", progress=False)
    (tmp_path / "header.csv").write_text("text\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"the inputs hold no documents \(no rows, or empty files\)"):
        prepare([str(tmp_path / "header.csv")], tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    # An existing data folder survives a failed re-prepare untouched.
    write_docs(tmp_path / "src", 5)
    prepare([str(tmp_path / "src")], tmp_path / "keep", tokenizer="char", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "keep").rglob("*") if p.is_file()}
    (tmp_path / "src" / "zz.txt").write_bytes(b"\xc3\x28 bad")  # invalid UTF-8, no byte-order mark
    with pytest.raises(UserError, match="not UTF-8"):
        prepare([str(tmp_path / "src")], tmp_path / "keep", tokenizer="char", progress=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "keep").rglob("*") if p.is_file()} == before


def test_option_validation(tmp_path):
    write_docs(tmp_path / "src", 3)
    with pytest.raises(UserError, match="val_fraction"):
        prepare([str(tmp_path / "src")], tmp_path / "o", val_fraction=1.5, progress=False)
    with pytest.raises(UserError, match="tokenizer must be"):
        prepare([str(tmp_path / "src")], tmp_path / "o", tokenizer="wordpiece", progress=False)
    with pytest.raises(UserError, match="vocab_size"):
        prepare([str(tmp_path / "src")], tmp_path / "o", vocab_size=100, progress=False)


def test_a_split_out_of_proportion_is_warned_with_the_fix(tmp_path, small_books, capsys):
    """A book and a one-line README split by file: whichever lands in validation, the split is
    far from the asked 20% and `prepare` says so on stderr, naming --doc-split page; split
    by page, the same text gives no warning."""
    from banglaslm.cli import main

    src = tmp_path / "src"
    src.mkdir()
    (src / "book.txt").write_text("\n\n".join(b.read_text(encoding="utf-8") for b in small_books), encoding="utf-8")
    (src / "README.md").write_text("এই ফোল্ডারে একটি বই আছে।\n", encoding="utf-8")
    options = ["--vocab-size", "300", "--val-fraction", "0.2"]
    assert main(["prepare", str(src), "--out", str(tmp_path / "by_file"), *options]) == 0
    err = capsys.readouterr().err
    meta = json.loads((tmp_path / "by_file" / "meta.json").read_text(encoding="utf-8"))
    share = meta["splits"]["val"]["tokens"] / (meta["splits"]["val"]["tokens"] + meta["splits"]["train"]["tokens"])
    assert f"warning: the validation split holds {meta['splits']['val']['tokens']:,} tokens ({share:.2%}" in err
    assert "--val-fraction asked 20%" in err and "with --doc-split page" in err
    assert main(["prepare", str(src), "--out", str(tmp_path / "by_page"), *options, "--doc-split", "page"]) == 0
    assert "warning" not in capsys.readouterr().err
    from banglaslm.data.prepare import val_split_warnings

    # a share under 1% was shown as "asked 0%"
    small = {"val_fraction": 0.001, "doc_split": "page", "splits": {"val": {"tokens": 6200}, "train": {"tokens": 93800}}}
    assert "`val_fraction` asked 0.1%)" in val_split_warnings(small)[0]


def test_pages_train_on_paragraph_breaks_that_paragraphs_turn_into_document_ends(tmp_path, small_books):
    """The same books split by page and by paragraph: the page split's training tokens hold the
    books' paragraph breaks (a model learns to write them), the paragraph split's hold none (each
    break became an end-of-document token), and both hold the same paragraphs' text."""
    texts = {}
    for split in ("page", "paragraph"):
        folder = prepare([str(p) for p in small_books], tmp_path / split, tokenizer="char", doc_split=split,
                         val_fraction=0.1, progress=False).out_dir
        data = DataFolder(folder)
        ids = np.concatenate([data.tokens(s).read() for s in ("train", "val")])
        tokenizer = data.tokenizer()
        texts[split] = tokenizer.decode(ids[ids != tokenizer.eod_id].tolist())
        assert data.meta["doc_split"] == split and data.meta["text_files"] == len(small_books)
    assert texts["page"].count("\n\n") > 100 and texts["paragraph"].count("\n\n") == 0
    assert sorted(texts["page"].replace("\n\n", "")) == sorted(texts["paragraph"].replace("\n\n", ""))


def test_split_warnings_rules():
    def meta(val, train, fraction=0.05, doc_split="paragraph"):
        return {"splits": {"val": {"tokens": val}, "train": {"tokens": train}}, "val_fraction": fraction,
                "doc_split": doc_split}

    from banglaslm.data.prepare import val_split_warnings

    assert val_split_warnings(meta(50_000, 950_000)) == []
    assert "too little to score" in val_split_warnings(meta(2_000, 38_000))[0]  # in proportion, but short
    assert val_split_warnings(meta(3_962, 76_172)) == []  # the quick start's embedded corpus
    assert "too little" in val_split_warnings(meta(10_000, 10_000_000))[0]  # 0.1% where 5% was asked
    assert "raise `val_fraction`" in val_split_warnings(meta(10_000, 10_000_000))[0]
    short = val_split_warnings(meta(40, 32, fraction=0.4))[0]  # more than half already: raising starves training
    assert "too little" in short and short.endswith("; add text") and "raise" not in short
    assert "lower `val_fraction`" in val_split_warnings(meta(600_000, 400_000))[0]
    two_books = val_split_warnings(meta(14_798, 25_036, doc_split="file"))[0]  # one of two books: 37% where 5% was asked
    assert "far more than asked" in two_books and "`doc_split` page" in two_books
    assert val_split_warnings(meta(19_000, 81_000)) == val_split_warnings(meta(150_000, 850_000)) == []  # 19%, 15%: up to 4x
    assert "`doc_split` page" in val_split_warnings(meta(600_000, 400_000, doc_split="file"))[0]
    tables = {**meta(600_000, 400_000, doc_split="file"), "text_files": 0}  # doc_split does nothing to a CSV
    assert "`doc_split`" not in val_split_warnings(tables)[0] and "lower `val_fraction`" in val_split_warnings(tables)[0]


def test_cleaning_options_without_clean_are_refused(tmp_path, small_books):
    """The library refuses what the command line refuses: options for a cleaning that would not run."""
    from banglaslm.data.clean import CleanOptions

    with pytest.raises(UserError, match="min_words filters documents only with `clean`"):
        prepare([str(small_books[0])], tmp_path / "d", clean_options=CleanOptions(min_words=5), progress=False)
    assert not (tmp_path / "d").exists()
    # the defaults, passed explicitly, change nothing and are accepted
    prepare([str(small_books[0])], tmp_path / "e", clean_options=CleanOptions(), doc_split="page", progress=False)


def test_empty_rows_and_files_are_counted_not_lost_silently(tmp_path):
    """Rows that normalization leaves empty (blank, only invisible characters, null) are counted
    in meta.json and the summary; an empty (0-byte) CSV among the inputs holds no rows, as an
    empty JSONL does, instead of stopping the run; every input is listed (not the first 20)."""
    write_docs(tmp_path / "src", 24)
    rows = [{"text": ""}, {"text": "  \u200b "}, {"text": None}, {"text": "একটি সারি"}]
    (tmp_path / "src" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "src" / "none.csv").write_bytes(b"")
    result = prepare([str(tmp_path / "src")], tmp_path / "out", vocab_size=300, progress=False)
    assert result.meta["empty_documents"] == 3
    assert "skipped 3 empty document(s)" in result.summary()
    assert sum(result.meta["splits"][s]["documents"] for s in ("train", "val")) == 24 + 1
    assert len(result.meta["sources"]) == 26 and not any("more" in s for s in result.meta["sources"])


def test_inputs_that_gave_no_text_are_named(tmp_path):
    """A table of only a header, among other inputs, added nothing without a word (a news CSV
    exported without its rows looked like a prepared corpus). Inputs are cut among tasks by whole
    files, so each task names its own."""
    write_docs(tmp_path / "src", 12)
    (tmp_path / "src" / "000a_header.csv").write_text("id,text\n", encoding="utf-8")  # in task 0
    (tmp_path / "src" / "006a_blank.jsonl").write_text('{"text": " "}\n{"text": null}\n', encoding="utf-8")  # 1
    (tmp_path / "src" / "empty.txt").write_bytes(b"")  # 2
    result = prepare([str(tmp_path / "src")], tmp_path / "out", vocab_size=300, tasks=3, progress=False)
    named = sorted(p.rsplit("/", 1)[-1] for p in result.meta["inputs_without_text"])
    assert named == ["000a_header.csv", "006a_blank.jsonl", "empty.txt"]
    assert "note: 3 input(s) gave no text (empty, or a table without rows): " in result.summary()


def test_an_option_no_input_uses_is_said_to_be_ignored(tmp_path, capsys):
    """--doc-split page on tables (one row, one document) and --text-column on text files were
    taken and ignored without a word; meta.json even recorded the split."""
    write_docs(tmp_path / "src", 12)
    rows = "".join(json.dumps({"text": f"সারি {i} " * 30}) + "\n" for i in range(12))
    (tmp_path / "rows.jsonl").write_text(rows, encoding="utf-8")
    a = prepare([str(tmp_path / "rows.jsonl")], tmp_path / "a", tokenizer="char", doc_split="page", progress=False)
    assert "note: --doc-split page applies to .txt/.md files and every input is a table" in capsys.readouterr().err
    b = prepare([str(tmp_path / "src")], tmp_path / "b", tokenizer="char", text_column="News", progress=False)
    assert "note: --text-column News applies to tables" in capsys.readouterr().err
    # meta.json says what the tokenizer and a table's text came from (a course's .model file, its column)
    assert (a.meta["tokenizer_source"], a.meta["text_column"]) == ("char", "text")
    assert b.meta["text_column"] is None  # no table: no column was read
    prepare([str(tmp_path / "src"), str(tmp_path / "rows.jsonl")], tmp_path / "c", tokenizer="char",
            doc_split="page", progress=False)
    assert "note:" not in capsys.readouterr().err  # a text file takes it


def test_a_data_folder_of_other_inputs_is_kept_unless_overwrite(tmp_path, monkeypatch):
    """prepare replaced a data folder without a word, even one a run was trained on: the run
    could then never resume ("tokenized with a different tokenizer"). The same inputs and
    options again keep it (a notebook run twice); others are refused unless `overwrite`."""
    write_docs(tmp_path / "src", 12)
    first = prepare([str(tmp_path / "src")], tmp_path / "data", vocab_size=300, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*") if p.is_file()}
    again = prepare([str(tmp_path / "src")], tmp_path / "data", vocab_size=300, progress=False)
    assert again.kept and again.meta == first.meta and again.summary().startswith(f"kept {tmp_path / 'data'}: ")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*") if p.is_file()} == before
    with pytest.raises(UserError, match=r"data is a data folder prepared from other inputs or options; runs "
                                        r"trained on it need it to resume and to evaluate: choose another output "
                                        r"folder, or add `overwrite` to replace it"):
        prepare([str(tmp_path / "src")], tmp_path / "data", vocab_size=400, progress=False)
    (tmp_path / "src" / "000.txt").write_text("বদলে যাওয়া লেখা " * 20, encoding="utf-8")  # an input changed
    with pytest.raises(UserError, match="prepared from other inputs or options"):
        prepare([str(tmp_path / "src")], tmp_path / "data", vocab_size=300, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*") if p.is_file()} == before
    replaced = prepare([str(tmp_path / "src")], tmp_path / "data", vocab_size=400, progress=False, overwrite=True)
    assert not replaced.kept and replaced.meta["tokenizer"]["sha256"] != first.meta["tokenizer"]["sha256"]
    with pytest.raises(UserError, match="^overwrite replaces a data folder on one machine"):  # it was ignored there
        prepare([str(tmp_path / "src")], tmp_path / "data", vocab_size=300, tasks=2, task_rank=0, overwrite=True)
    # however a path is spelled; and with `overwrite` the same plan is still kept
    monkeypatch.chdir(tmp_path)
    assert prepare(["src"], "data", vocab_size=400, progress=False, overwrite=True).kept
    # a folder of an earlier version (no record of its plan) is refused, saying so
    meta = json.loads((tmp_path / "data" / "meta.json").read_text(encoding="utf-8"))
    del meta["plan_sha256"]
    (tmp_path / "data" / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(UserError, match="data folder of an earlier banglaslm, which did not record what it was "
                                        "prepared from; runs trained on it need it"):
        prepare(["src"], "data", vocab_size=400, progress=False)


def test_a_dataset_input_is_never_taken_as_unchanged(tmp_path):
    """hf: names a dataset whose rows may change under its name: prepared again only with overwrite."""
    (tmp_path / "hub").mkdir()
    rows = "".join(json.dumps({"text": f"সংবাদ {i} " * 20}) + "\n" for i in range(12))
    (tmp_path / "hub" / "train.jsonl").write_text(rows, encoding="utf-8")
    spec = f"hf:{tmp_path / 'hub'}"
    prepare([spec], tmp_path / "data", tokenizer="char", progress=False)
    with pytest.raises(UserError, match=r"prepared from a dataset \(hf:\), whose rows may have changed under its "
                                        r"name; .* add `overwrite` to replace it"):
        prepare([spec], tmp_path / "data", tokenizer="char", progress=False)
    assert not prepare([spec], tmp_path / "data", tokenizer="char", progress=False, overwrite=True).kept
