import gzip
import json
import re
import shlex
import unicodedata

import pytest
from conftest import require_literature

from banglaslm.data.sources import (
    PAGE_CHARS,
    iter_documents,
    iter_records,
    iter_rows,
    looks_like_legacy_font,
    pages,
    read_whole_text,
    resolve_inputs,
    text_rate,
)
from banglaslm.errors import UserError


def at(path) -> str:
    """`path` as a fix command names it (quoted for the shell), as a regex."""
    return re.escape(shlex.quote(str(path)))

_UNICODE = ["অ", "আ", "ই", "ঈ", "উ", "ঊ", "ঋ", "এ", "ঐ", "ও", "ঔ", "ক", "খ", "গ", "ঘ", "ঙ", "চ", "ছ", "জ", "ঝ",
            "ঞ", "ট", "ঠ", "ড", "ঢ", "ণ", "ত", "থ", "দ", "ধ", "ন", "প", "ফ", "ব", "ভ", "ম", "য", "র", "ল", "শ",
            "ষ", "স", "হ", "\u09dc", "\u09dd", "\u09df", "ৎ", "ং", "ঃ", "ঁ", "া", "ী", "ু", "ূ", "ৃ", "্", "।",
            *"০১২৩৪৫৬৭৮৯"]
_BIJOY = ["A", "Av", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S",
          "T", "U", "V", "W", "X", "Y", "Z", "_", "`", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k",
          "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "x", "y", "~", "…", "&", "|", *"0123456789"]
_KEYS = dict(zip(_UNICODE, _BIJOY, strict=True))
_BEFORE = {"ি": ("w", ""), "ে": ("‡", ""), "ৈ": ("‰", ""), "ো": ("‡", "v"), "ৌ": ("‡", "Š")}


def to_bijoy(text: str) -> str:
    """Bangla text as a SutonnyMJ typist's keys store it (conjuncts aside): what Bangladeshi
    news archives and office files often hold."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFKC", text).replace("\u09bc", ""):
        if ch in _BEFORE:  # a sign drawn before its consonant is typed before it
            out[-1:] = [_BEFORE[ch][0], *out[-1:], _BEFORE[ch][1]]
        else:
            out.append(_KEYS.get(ch, ch))
    return "".join(out)



def docs(inputs, **kw):
    return list(iter_documents(resolve_inputs([str(i) for i in inputs]), **kw))


def test_text_files_folders_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("এক", encoding="utf-8")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "two.md").write_text("দুই\n\nতিন", encoding="utf-8")
    (tmp_path / "a" / "skip.bin").write_bytes(b"\x00\x01")
    assert docs([tmp_path / "a"]) == ["এক", "দুই\n\nতিন"]
    assert docs([tmp_path / "a" / "sub" / "two.md"], doc_split="paragraph") == ["দুই", "তিন"]
    assert docs([str(tmp_path / "a" / "**" / "*.md")]) == ["দুই\n\nতিন"]


def test_pages_keep_every_paragraph_break_and_fill_to_the_page_size(small_books):
    """A page split of real books loses nothing (its pages, joined by blank lines, are the book's
    paragraphs joined by blank lines), keeps the breaks inside pages, and fills each page: no page
    holds more than PAGE_CHARS characters of paragraphs unless it is one paragraph, and none could
    have taken the next page's first paragraph."""
    for book in small_books:
        paragraphs = docs([book], doc_split="paragraph")
        book_pages = docs([book], doc_split="page")
        assert "\n\n".join(book_pages) == "\n\n".join(paragraphs)
        assert 1 < len(book_pages) < len(paragraphs)
        assert any("\n\n" in page for page in book_pages)
        in_pages = [page.split("\n\n") for page in book_pages]
        for page, following in zip(in_pages, in_pages[1:] + [None]):
            size = sum(map(len, page))
            assert size <= PAGE_CHARS or len(page) == 1
            assert following is None or size + len(following[0]) > PAGE_CHARS
    assert list(pages(["x" * 5000, "ab", "cd"], max_chars=10)) == ["x" * 5000, "ab\n\ncd"]
    assert list(pages([])) == []


def test_jsonl_csv_parquet(tmp_path):
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"text": "প্রথম"}, ensure_ascii=False) + "\n\n" + json.dumps({"text": "দ্বিতীয়"}, ensure_ascii=False) + "\n",
        encoding="utf-8")
    assert docs([tmp_path / "d.jsonl"]) == ["প্রথম", "দ্বিতীয়"]
    # The course's case: news CSV with the text in a column called News, quoted newlines included.
    (tmp_path / "news.csv").write_text('Date,News\n2024-01-01,"শেয়ারবাজারে\nসূচক বেড়েছে"\n2024-01-02,টাকা\n', encoding="utf-8")
    assert docs([tmp_path / "news.csv"], text_column="News") == ["শেয়ারবাজারে\nসূচক বেড়েছে", "টাকা"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["ক", "খ", None]}), tmp_path / "t.parquet")
    assert docs([tmp_path / "t.parquet"], text_column="body") == ["ক", "খ", ""]


def test_hf_dataset_path_on_local_files(tmp_path):
    # `hf:NAME` goes through `datasets.load_dataset`; a local folder of data files stands in
    # for a hub dataset (no network in tests).
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hub_like"
    folder.mkdir()
    pq.write_table(pa.table({"News": ["সংবাদ এক", "সংবাদ দুই"], "id": [1, 2]}), folder / "train.parquet")
    assert docs([f"hf:{folder}"], text_column="News") == ["সংবাদ এক", "সংবাদ দুই"]
    with pytest.raises(UserError, match="no column 'text'"):
        docs([f"hf:{folder}"])


def test_hf_splits_kinds_builders_and_damaged_files(tmp_path, monkeypatch, capsys):
    """What `datasets` did without a word: read "train" only (a folder's test.jsonl was dropped),
    one kind of file of a folder's two (its parquet dropped), every .json under the current
    folder for hf:json; and a damaged file was a pyarrow traceback."""
    split = tmp_path / "split"
    split.mkdir()
    for name in ("train", "test", "validation"):
        (split / f"{name}.jsonl").write_text("".join(json.dumps({"text": f"{name} {i}"}) + "\n" for i in range(2)),
                                             encoding="utf-8")
    assert docs([f"hf:{split}"]) == ["train 0", "train 1"]
    assert "reads the split 'train'; its other splits (validation, test) are not read: give each as another " \
           f"input, hf:{split}::SPLIT" in capsys.readouterr().err
    assert docs([f"hf:{split}::test"]) == ["test 0", "test 1"]
    assert docs([f"hf:{split}::train+validation"]) == ["train 0", "train 1", "validation 0", "validation 1"]
    assert "other splits (test) are not read" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"has no split 'dev' \(it has: train, validation, test\); name one as "
                                        r"hf:.*split::SPLIT"):
        docs([f"hf:{split}::dev"])

    import pyarrow as pa
    import pyarrow.parquet as pq

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "part1.jsonl").write_text('{"text": "এক"}\n', encoding="utf-8")
    pq.write_table(pa.table({"text": ["দুই"]}), mixed / "part2.parquet")
    with pytest.raises(UserError, match=r"holds data files of several kinds: json \(part1.jsonl\), parquet "
                                        r"\(part2.parquet\).*give the folder without 'hf:'"):
        docs([f"hf:{mixed}"])
    assert sorted(docs([mixed])) == ["এক", "দুই"]
    (mixed / "part1.jsonl").unlink()  # a hub repository's clone: its metadata beside the data is no kind
    (mixed / "dataset_infos.json").write_text("{}", encoding="utf-8")
    assert docs([f"hf:{mixed}"]) == ["দুই"]

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"hf:json is `datasets`' json builder, which reads every matching file under "
                                        r"the current folder"):
        resolve_inputs(["hf:json"])

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "a.jsonl").write_text('{"text": "এক"}\n{"text": "দু\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"^could not read dataset '.*damaged' \(.+; 0 rows read\); check its files$"):
        docs([f"hf:{damaged}"])


@pytest.mark.parametrize("spec, message", [
    ("hf:{tmp}/news.csv", r"hf:.*news.csv names a file; 'hf:' is for a dataset .*: pass .*news.csv without 'hf:'"),
    ("hf:{tmp}/news.csv:cfg", r"names a file"),
    ("hf:{tmp}/missing", r"dataset folder not found: .*missing .*check the path"),
    ("hf:./missing/x", r"dataset folder not found: ./missing/x"),
    ("hf:a/b/c", r"dataset folder not found: a/b/c"),
])
def test_hf_spec_naming_a_file_or_a_missing_folder_is_refused_without_the_hub(tmp_path, monkeypatch, spec, message):
    """`hf:news.csv` waited 28 s on hub retries, then said it "couldn't reach 'news.csv' on the Hub"."""
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("went to the hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "news.csv").write_text("text\nক\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        resolve_inputs([spec.format(tmp=tmp_path)])


def test_pipes_and_standard_input_are_refused_or_passed_over_not_waited_on(tmp_path, capsys):
    """A named pipe inside an input folder blocked prepare for ever; `prepare -` said "input not
    found: -" and `prepare /dev/stdin` fed by a pipe called it a broken symbolic link."""
    import os

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "book.txt").write_text("লেখা", encoding="utf-8")
    os.mkfifo(tmp_path / "in" / "pipe.txt")
    assert [s.location for s in resolve_inputs([str(tmp_path / "in")])] == [str(tmp_path / "in" / "book.txt")]
    assert "note: 1 pipe(s), socket(s) or device(s) in " in capsys.readouterr().err
    with pytest.raises(UserError, match=r"pipe.txt is not a regular file \(a pipe, socket or device\); inputs are "
                                        r"read from files: save the text to one first"):
        resolve_inputs([str(tmp_path / "in" / "pipe.txt")])
    with pytest.raises(UserError, match=r"input - is standard input; inputs are read from files"):
        resolve_inputs(["-"])


def test_hf_spec_naming_a_dataset_script_is_left_to_datasets(tmp_path, monkeypatch):
    """datasets 2.x loads a dataset script given by its path: not "a file" to read without hf:."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loader.py").write_text("", encoding="utf-8")
    assert [(s.kind, s.location) for s in resolve_inputs(["hf:loader.py"])] == [("hf", "loader.py")]


def test_a_dataset_saved_with_save_to_disk_reads(tmp_path):
    """hf:FOLDER of a `save_to_disk` dataset was refused ("use load_from_disk instead"), with advice
    to check the network connection."""
    import datasets

    news = {"News": ["সংবাদ এক", "সংবাদ দুই"], "id": [1, 2]}
    datasets.Dataset.from_dict(news).save_to_disk(str(tmp_path / "one"))
    assert docs([f"hf:{tmp_path / 'one'}"], text_column="News") == news["News"]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict(news),
                                   "test": datasets.Dataset.from_dict({"News": ["পরীক্ষা"], "id": [3]})})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert docs([f"hf:{tmp_path / 'dict'}"], text_column="News") == news["News"]
    datasets.DatasetDict({"test": splits["test"]}).save_to_disk(str(tmp_path / "test_only"))
    with pytest.raises(UserError, match=r"test_only holds the splits test and no 'train'; name one as hf:.*test_only::SPLIT"):
        docs([f"hf:{tmp_path / 'test_only'}"], text_column="News")
    assert docs([f"hf:{tmp_path / 'test_only' / 'test'}"], text_column="News") == ["পরীক্ষা"]
    assert docs([f"hf:{tmp_path / 'dict'}::test"], text_column="News") == ["পরীক্ষা"]
    with pytest.raises(UserError, match=r"save_to_disk has no configs; name a split as hf:.*dict::SPLIT"):
        docs([f"hf:{tmp_path / 'dict'}:test"], text_column="News")  # read 'train', the config ignored
    # given without hf:, its metadata was read as the data
    with pytest.raises(UserError, match=r"one is a dataset saved with save_to_disk; pass it as hf:.*one$"):
        docs([str(tmp_path / "one")], text_column="News")
    # a saved Dataset has no splits: a split named for it was ignored, and every row read
    with pytest.raises(UserError, match=r"has no splits \(save_to_disk of a Dataset\); drop '::test'"):
        docs([f"hf:{tmp_path / 'one'}::test"], text_column="News")


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "input not found"),
    (lambda p: (p / "x").mkdir(), "holds no"),
    (lambda p: (p / "x").write_bytes(b"\x89PNG\x00\x00\x00binary"), "binary"),
    (lambda p: (p / "x").write_bytes("café".encode("cp1252")), "not UTF-8"),  # (UTF-16 with a BOM is read)
])
def test_bad_inputs(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UserError, match=message):
        docs([tmp_path / "x"])


def test_bad_tables(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:2 is not valid JSON"):
        docs([tmp_path / "bad.jsonl"])
    (tmp_path / "joined.jsonl").write_bytes(b"".join(b"\xef\xbb\xbf" + json.dumps({"text": t}).encode() + b"\n"
                                                     for t in ("এক", "দুই")))  # two files joined by `cat`: two BOMs
    assert docs([tmp_path / "joined.jsonl"]) == ["এক", "দুই"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a\tb"}\n', encoding="utf-8")  # "Invalid control character at at"
    with pytest.raises(UserError, match=r"bad.jsonl:1 is not valid JSON \(Invalid control character at column 12\)"):
        docs([tmp_path / "bad.jsonl"])
    (tmp_path / "cut.jsonl").write_text('{"text": "ok"}\r\n{"text": "কাটা", "id"\r\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"cut.jsonl:2 is not valid JSON \(Expecting ':' delimiter at column 22\)"):
        docs([tmp_path / "cut.jsonl"])  # the line's end, where it was cut (it said column 1, of the line after)
    (tmp_path / "c.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"no column 'text' \(it has: 'a', 'b'\); choose one with `text_column`"):
        docs([tmp_path / "c.csv"])
    # JSON rows need not share keys: a later row without the column is a missing cell, as a null is
    # (it stopped prepare: "news.jsonl:2 has no column 'News' (it has: 'Headline')"); the first row names it
    rows = [{"News": "এক", "Headline": "১"}, {"Headline": "২"}, {"News": None}, {"News": "দুই"}]
    (tmp_path / "news.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "news.json").write_text(json.dumps(rows), encoding="utf-8")
    for name in ("news.jsonl", "news.json"):
        assert [d for d in docs([tmp_path / name], text_column="News") if d] == ["এক", "দুই"]
    # json.dump of a DataFrame's records writes a missing cell as NaN: missing, as pandas' CSV's empty cell
    (tmp_path / "nan.json").write_text(json.dumps([{"News": "এক"}, {"News": float("nan")}, {"News": "দুই"}]),
                                       encoding="utf-8")
    assert [d for d in docs([tmp_path / "nan.json"], text_column="News") if d] == ["এক", "দুই"]
    (tmp_path / "late.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[1:]), encoding="utf-8")
    with pytest.raises(UserError, match=r"late.jsonl:1 has no column 'News' \(it has: 'Headline'\)"):
        docs([tmp_path / "late.jsonl"], text_column="News")
    # A header written by a spreadsheet: a capitalized column and an unnamed index column.
    (tmp_path / "sheet.csv").write_text(",Text\n0,ক\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"\(it has: an unnamed one, 'Text'\); did you mean 'Text'\?"):
        docs([tmp_path / "sheet.csv"])
    assert docs([tmp_path / "sheet.csv"], text_column="Text") == ["ক"]
    # A row whose quoted text spans lines is named by its row number and where it ends.
    (tmp_path / "q.csv").write_text('text\nএক\n"দুই\nতিন"\n7\n', encoding="utf-8")
    rows = list(iter_rows(resolve_inputs([str(tmp_path / "q.csv")])))
    assert [where.split("q.csv ")[1] for where, _ in rows] == [
        "row 1 (ending on line 2)", "row 2 (ending on line 4)", "row 3 (ending on line 5)"]
    with pytest.raises(UserError, match="no file matches"):
        docs([str(tmp_path / "*.nothing")])


def test_a_table_that_names_a_column_twice_is_refused(tmp_path):
    """A CSV read its last 'text' column (prepare trained on the wrong one, silently), a parquet
    file its first in prepare and its last in clean."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "two.csv").write_text("News,id,News\nপ্রথম,1,দ্বিতীয়\n", encoding="utf-8")
    pq.write_table(pa.Table.from_arrays([pa.array(["ক"]), pa.array(["x"])], names=["text", "text"]), tmp_path / "two.parquet")
    for name, column in (("two.csv", "News"), ("two.parquet", "text")):
        for read in (lambda: docs([tmp_path / name], text_column=column), lambda: list(iter_rows(resolve_inputs([str(tmp_path / name)])))):
            with pytest.raises(UserError, match=f"{name} names the column '{column}' more than once; rename them"):
                read()


@pytest.mark.parametrize("table, where", [
    ('id,text\n1,আমি ভাত খাই, তুমি জল খাও\n2,সে বাড়ি যায়\n', "row 1 (ending on line 2) has 3 fields but the header has 2"),
    ('id,text\n1,সে বাড়ি যায়\n2,আমি ভাত খাই, তুমি জল খাও\n', "row 2 (ending on line 3) has 3 fields"),
    ('id,text\n1,"আমি ভাত খাই\n2,সে বাড়ি যায়\n3,তুমি\n', "unexpected end of data, in the row starting on line 2"),
    ('id,text\n1,"খাই"x,তুমি\n', "',' expected after '\"', in the row starting on line 2"),
], ids=["unquoted comma", "unquoted comma later", "open quote", "text after a closing quote"])
def test_a_csv_row_that_would_lose_or_swallow_text_is_refused(tmp_path, table, where):
    """Text with an unquoted separator ran into a nameless column (prepare dropped it, clean
    kept it as metadata); a quote left open swallowed the rows after it. Both are named."""
    path = tmp_path / "r.csv"
    path.write_text(table, encoding="utf-8")
    for read in (lambda: docs([path]), lambda: list(iter_rows(resolve_inputs([str(path)])))):
        with pytest.raises(UserError, match=re.escape(where)):
            read()


def test_csv_rows_that_lose_nothing_still_read(tmp_path):
    """A trailing separator on each row (empty extra fields) loses no text, nor does a row that
    leaves out empty fields after its text; a TSV's error says TSV."""
    (tmp_path / "t.csv").write_text("text,label\nএক,1,\nদুই,2, \n", encoding="utf-8")
    assert docs([tmp_path / "t.csv"]) == ["এক", "দুই"]
    (tmp_path / "ragged.csv").write_text("text,label,source\nএক,pos\nদুই\n", encoding="utf-8")
    assert docs([tmp_path / "ragged.csv"]) == ["এক", "দুই"]
    # but not the text's: the second line of a line break left unquoted was a row of its own, skipped as empty
    (tmp_path / "broken.csv").write_text("id,headline,text\n1,শিরোনাম,প্রথম লাইন\nদ্বিতীয় লাইন\n2,দুই,খবর\n",
                                         encoding="utf-8")
    with pytest.raises(UserError, match=re.escape("row 2 (ending on line 3) has 1 field(s) but the header has 3, "
                                                  "and none for 'text'; in a CSV file a field that holds ',', a "
                                                  "quote or a line break is quoted")):
        docs([tmp_path / "broken.csv"])
    (tmp_path / "t.tsv").write_text('text\tlabel\nএক\t1\tদুই\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"row 1 .* has 3 fields.*in a TSV file a field that holds '\\t'"):
        docs([tmp_path / "t.tsv"])
    (tmp_path / "blank.csv").write_text("\nএক\n", encoding="utf-8")
    with pytest.raises(UserError, match="the first line of .*blank.csv is empty; it must name the columns"):
        docs([tmp_path / "blank.csv"])
    # One column whose name holds a semicolon: its rows do not split alike, so commas still separate.
    (tmp_path / "one.csv").write_text('text; notes\n"হ্যাঁ, না"\nনা\n', encoding="utf-8")
    assert docs([tmp_path / "one.csv"], text_column="text; notes") == ["হ্যাঁ, না", "না"]


def test_a_tsv_whose_text_starts_with_a_quote_reads_as_plain_tsv(tmp_path, capsys):
    """A hand-made TSV (or a database's) has no quoting: a text that opens with a quotation was
    refused as a broken quoted field. Read as plain TSV, with a note; a TSV that pandas or a
    spreadsheet quoted (a field holding a tab or line break) still reads by the CSV rules."""
    plain = tmp_path / "plain.tsv"
    plain.write_text('text\tlabel\n"আমি যাব," সে বলল।\t1\nএক "দুই"\t2\n"তিন"\t3\n', encoding="utf-8")
    assert docs([plain]) == ['"আমি যাব," সে বলল।', 'এক "দুই"', '"তিন"']
    assert [row["label"] for _, row in iter_rows(resolve_inputs([str(plain)]))] == ["1", "2", "3"]
    assert "plain.tsv has a field that starts with a quote and is not a quoted field" in capsys.readouterr().err
    quoted = tmp_path / "quoted.tsv"
    quoted.write_text('text\tlabel\n"এক\tদুই\nতিন"\t1\n"""চার"" পাঁচ"\t2\n', encoding="utf-8")
    assert docs([quoted]) == ["এক\tদুই\nতিন", '"চার" পাঁচ']
    assert "note:" not in capsys.readouterr().err


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_a_csv_with_another_separator_is_read_by_its_header(tmp_path, sep):
    """Spreadsheets in many locales save .csv with semicolons: the header tells."""
    path = tmp_path / "semi.csv"
    path.write_text(f'text{sep}id\n"আমি ভাত খাই";1\nসে, বাড়ি যায়{sep}2\n'.replace(";", sep), encoding="utf-8")
    assert docs([path]) == ["আমি ভাত খাই", "সে, বাড়ি যায়"]
    assert [row["id"] for _, row in iter_rows(resolve_inputs([str(path)]))] == ["1", "2"]
    trailing = tmp_path / "trailing.csv"  # every row ends in the separator: read as "id;text" before
    trailing.write_text(f"id{sep}text\n1{sep}আমি ভাত খাই{sep}\n2{sep}সে বাড়ি যায়{sep}\n", encoding="utf-8")
    assert docs([trailing]) == ["আমি ভাত খাই", "সে বাড়ি যায়"]


def test_hidden_files_and_folders_in_an_input_folder_are_not_read(tmp_path, capsys):
    books = tmp_path / "books"
    (books / ".ipynb_checkpoints").mkdir(parents=True)
    (books / "a.txt").write_text("এক", encoding="utf-8")
    (books / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("এক", encoding="utf-8")
    (books / "._a.txt").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # macOS's AppleDouble
    assert docs([books]) == ["এক"]
    assert "2 hidden file(s) or folder(s)" in capsys.readouterr().err
    with pytest.raises(UserError, match="binary"):  # named itself, a hidden file is read (and judged)
        docs([books / "._a.txt"])


def test_links_in_an_input_folder_are_followed_once_and_broken_ones_named(tmp_path, capsys):
    """A linked folder was skipped without a word, a file linked to itself raised a traceback,
    and a link to nothing stopped the run as "No such file or directory"."""
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "b.txt").write_text("দুই", encoding="utf-8")
    books = tmp_path / "books"
    (books / "deep").mkdir(parents=True)
    (books / "a.txt").write_text("এক", encoding="utf-8")
    (books / "linked").symlink_to(shelf)
    (books / "deep" / "up").symlink_to(books)  # a loop: the folder is read once
    (books / "self.txt").symlink_to(books / "self.txt")
    (books / "gone.txt").symlink_to(tmp_path / "missing.txt")
    (books / "deep" / "root").symlink_to("/")  # a folder above the input: never walked
    assert docs([books]) == ["এক", "দুই"]
    err = capsys.readouterr().err
    assert f"note: 2 broken symbolic link(s) in {books} are not read ({books / 'gone.txt'}, {books / 'self.txt'})" in err
    assert f"note: 1 linked folder(s) in {books} are read too ({books / 'linked'} -> {shelf})" in err
    with pytest.raises(UserError, match=f"input {books / 'gone.txt'} is a broken symbolic link \\(to {tmp_path}"):
        docs([books / "gone.txt"])


def test_files_of_other_kinds_in_an_input_folder_are_named(tmp_path, capsys):
    """A .text, .srt or suffixless file in a folder was left out unseen (the run then stopped at
    "found only 1 document" with no clue)."""
    for name in ("a.txt", "b.text", "c.srt", "d"):
        (tmp_path / name).write_text(f"লেখা {name}", encoding="utf-8")
    assert docs([tmp_path]) == ["লেখা a.txt"]
    assert (f"note: {tmp_path} has files of other kinds, not read (1 .srt, 1 .text, 1 without a suffix); pass one by "
            "name to read it as text") in capsys.readouterr().err
    assert docs([tmp_path / "b.text", tmp_path / "d"]) == ["লেখা b.text", "লেখা d"]


# Corpora are shipped compressed; each compressed file must give exactly its plain file's documents.
COMPRESSORS = {
    ".gz": lambda data: __import__("gzip").compress(data),
    ".bz2": lambda data: __import__("bz2").compress(data),
    ".xz": lambda data: __import__("lzma").compress(data),
    ".zst": lambda data: __import__("zstandard").ZstdCompressor().compress(data),
}
PLAIN = {
    "book.txt": "প্রথম অনুচ্ছেদ।\r\n\r\nদ্বিতীয় অনুচ্ছেদ।\r\n".encode("utf-16"),  # Notepad's "Unicode", CRLF
    "rows.jsonl": "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in ("এক", "দুই")).encode(),
    "rows.json": json.dumps([{"text": "তিন"}, {"text": "চার"}], ensure_ascii=False).encode(),
    "news.csv": '\ufeffDate,text\n1,"শেয়ারবাজারে\nসূচক"\n2,টাকা\n'.encode(),  # Excel's BOM
    "news.tsv": "id\ttext\n1\tপাঁচ\n2\tছয়\n".encode(),
}


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
@pytest.mark.parametrize("name", list(PLAIN))
def test_compressed_inputs_read_as_their_plain_file(tmp_path, name, suffix):
    plain = tmp_path / name
    plain.write_bytes(PLAIN[name])
    packed = tmp_path / "packed" / (name + suffix)
    packed.parent.mkdir()
    packed.write_bytes(COMPRESSORS[suffix](PLAIN[name]))
    expected = docs([plain], doc_split="paragraph")
    assert len(expected) == 2 and all(expected)
    assert docs([packed], doc_split="paragraph") == expected
    assert docs([packed.parent], doc_split="paragraph") == expected  # a folder finds it too


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_a_damaged_compressed_file_is_named(tmp_path, suffix):
    data = "".join(json.dumps({"text": "লেখা" * 50 + str(i)}, ensure_ascii=False) + "\n" for i in range(200)).encode()
    packed = COMPRESSORS[suffix](data)
    (tmp_path / f"cut.jsonl{suffix}").write_bytes(packed[: len(packed) // 2])
    (tmp_path / f"plain.txt{suffix}").write_bytes(data)  # not compressed at all
    for name in (f"cut.jsonl{suffix}", f"plain.txt{suffix}"):
        with pytest.raises(UserError, match=f"{name} could not be decompressed"):
            docs([tmp_path / name])


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl", "empty.csv"])
def test_an_empty_compressed_file_reads_as_its_empty_plain_file(tmp_path, suffix, name):
    """A 0-byte .gz or .zst was empty; a 0-byte .bz2 or .xz was "damaged"."""
    (tmp_path / "book.txt").write_text("লেখা", encoding="utf-8")
    (tmp_path / name).write_bytes(b"")
    (tmp_path / (name + suffix)).write_bytes(b"")
    expected = docs([tmp_path / "book.txt", tmp_path / name])
    assert docs([tmp_path / "book.txt", tmp_path / (name + suffix)]) == expected


def test_json_files_in_the_shapes_datasets_reads(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"text": "ক"}, {"text": "খ"}]), encoding="utf-8")
    (tmp_path / "one.json").write_text(json.dumps({"text": "গ", "id": 3}), encoding="utf-8")
    (tmp_path / "lines.json").write_text('{"text": "ঘ"}\n{"text": "ঙ"}\n', encoding="utf-8")
    assert docs([tmp_path / "list.json", tmp_path / "one.json", tmp_path / "lines.json"]) == ["ক", "খ", "গ", "ঘ", "ঙ"]
    (tmp_path / "strings.json").write_text(json.dumps(["ক", "খ"]), encoding="utf-8")
    with pytest.raises(UserError, match=r"strings.json item 1 is not a JSON object"):
        docs([tmp_path / "strings.json"])
    (tmp_path / "broken.json").write_text('[{"text": "ক"},', encoding="utf-8")
    with pytest.raises(UserError, match=r"broken.json is not valid JSON"):
        docs([tmp_path / "broken.json"])


@pytest.mark.parametrize("name, body", [
    ("a.jsonl", '{"text": "ক"}\n{"text": "আমি \\ud800 তুমি"}\n'), ("a.json", '[{"text": "ক"}, {"text": "আমি \\ud800 তুমি"}]'),
])
def test_a_lone_surrogate_in_a_json_text_is_named(tmp_path, name, body):
    """A JSON "\\ud800" (half of a cut emoji) passed the readers and crashed the shard writers."""
    (tmp_path / name).write_text(body, encoding="utf-8")
    where = f"{tmp_path / name}:2" if name.endswith("l") else f"{tmp_path / name} item 2"
    with pytest.raises(UserError, match=re.escape(f"{where}: the text holds a lone surrogate (U+D800") + ".* at character 4"):
        docs([tmp_path / name])


@pytest.mark.parametrize("name, advice", [
    ("paper.pdf", "pdftotext"), ("letter.docx", "plain text"), ("page.html", "markup"), ("sheet.xlsx", "CSV"),
    ("corpus.zip", "unpack"), ("dump.xml.gz", "extract the text"),
])
def test_files_that_are_not_text_are_refused_with_what_to_do(tmp_path, capsys, name, advice):
    (tmp_path / name).write_bytes(b"PK\x03\x04 not text")
    with pytest.raises(UserError, match=advice) as caught:
        docs([tmp_path / name])
    article = {"page.html": "an HTML", "sheet.xlsx": "an XLSX", "paper.pdf": "a PDF", "corpus.zip": "a ZIP"}.get(name)
    assert article is None or f" is {article} file" in str(caught.value)
    (tmp_path / "keep.txt").write_text("থাকবে", encoding="utf-8")
    assert docs([tmp_path]) == ["থাকবে"]  # in a folder, only the formats it reads are taken, and it says so
    suffix = name.removesuffix(".gz").rsplit(".", 1)[1]
    assert f"not read (1 .{suffix})" in capsys.readouterr().err


def test_a_compressed_parquet_file_is_refused(tmp_path):
    (tmp_path / "t.parquet.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(UserError, match="compressed inside; pass the .parquet file itself"):
        docs([tmp_path / "t.parquet.gz"])


@pytest.mark.parametrize("head, what, fix", [
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\nstream x\x9c+I-.", "a PDF file", "pdftotext"),  # no NUL byte in it
    (b"PK\x03\x04\x14\x00\x06\x00", "a ZIP archive", "extract its text"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office file", "plain text or CSV"),
    (b"{\\rtf1\\ansi Hello}", "an RTF document", "plain text"),
    (b"\x1f\x8b\x08\x00", "a gzip-compressed file", "name it with .gz"),
])
def test_a_file_named_txt_that_is_not_text_is_refused_by_its_content(tmp_path, head, what, fix):
    """What a file holds, not only its name: a PDF or Word file renamed .txt gets the advice for
    what it is, not an encoding error (a PDF's compressed streams need not hold a NUL byte)."""
    path = tmp_path / "book.txt"
    path.write_bytes(head)
    with pytest.raises(UserError, match=f"book.txt is {what}.*{fix}"):
        docs([path])


def fix_command(error) -> str:
    """The shell command an encoding error gives, in its parentheses."""
    return re.search(r"\((?:e\.g\. )?((?:iconv|head|gzip|bzip2|xz|zstd) [^()]*)\)", str(error)).group(1)


def test_a_file_in_another_encoding_gets_a_conversion_that_works(tmp_path):
    """Latin-1/Windows-1252 bytes: the error names iconv with the source encoding and the output
    file (iconv without -f fails on such input)."""
    path = tmp_path / "latin.txt"
    path.write_bytes("café naïve\n".encode("cp1252"))
    with pytest.raises(UserError, match=rf"invalid byte 0xe9 at offset 3.*iconv -f WINDOWS-1252 -t UTF-8 {at(path)} > "
                                        rf"{at(tmp_path / 'latin.utf8.txt')}"):
        docs([path])


@pytest.mark.parametrize("doc_split", ["file", "paragraph"])
def test_bangla_saved_as_question_marks_is_refused(tmp_path, doc_split):
    """Notepad's "ANSI" turns every Bangla letter into '?': such a file trained a model on question
    marks without a word. Text with the odd question mark still reads."""
    (tmp_path / "ansi.txt").write_text("??? ???? ????, ??? ?????\n\n?????? ????? ????\n" * 4, encoding="utf-8")
    with pytest.raises(UserError, match=r"ansi.txt: \d+% of its characters are '\?', as when Bangla text is saved"):
        docs([tmp_path / "ansi.txt"], doc_split=doc_split)
    (tmp_path / "asks.txt").write_text("কে? কী? কেন? কোথায়? " * 40, encoding="utf-8")
    assert len(docs([tmp_path / "asks.txt"], doc_split=doc_split)) == 1


@pytest.mark.parametrize("order", ["UTF-16LE", "UTF-16BE"])
def test_utf16_without_a_byte_order_mark_gets_its_conversion(tmp_path, order):
    """It was called a binary file for its NUL bytes."""
    import subprocess

    path = tmp_path / "plain.txt"
    path.write_bytes("আমি বাংলায় গান গাই, and some English.\n\nতুমি\n".encode(order.lower()))
    with pytest.raises(UserError, match=f"looks like {order} text without a byte-order mark") as caught:
        docs([path])
    subprocess.run(fix_command(caught.value), shell=True, cwd=tmp_path, check=True)
    assert docs([tmp_path / "plain.utf8.txt"]) == ["আমি বাংলায় গান গাই, and some English.\n\nতুমি\n"]


@pytest.mark.parametrize("name, text", [
    ("bangla.csv", "id,text\n1,আমি বাংলায় গান গাই\n2,তুমি\n"),
    ("english.csv", "id,text\n1,hello there\n"),  # its header was read as 'i\\0d\\0', '\\0t\\0e\\0x\\0t\\0'
    ("rows.jsonl", '{"text": "আমি বাংলায় গান গাই"}\n'),
    ("rows.json", '[{"text": "আমি বাংলায় গান গাই"}]'),
])
def test_a_table_in_utf16_without_a_byte_order_mark_gets_its_conversion(tmp_path, name, text):
    """Tables were told to convert from Windows-1252 (garbage), or named columns full of NULs."""
    import subprocess

    path = tmp_path / name
    path.write_bytes(text.encode("utf-16-le"))
    with pytest.raises(UserError, match="looks like UTF-16LE text without a byte-order mark") as caught:
        docs([path])
    subprocess.run(fix_command(caught.value), shell=True, cwd=tmp_path, check=True)
    converted = next(p for p in tmp_path.iterdir() if ".utf8." in p.name)
    assert docs([converted]) == docs([_utf8_copy(tmp_path, name, text)])


def _utf8_copy(folder, name: str, text: str):
    copy = folder / "plain" / name
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(text, encoding="utf-8")
    return copy


def test_utf16_cut_off_or_damaged_is_named_as_utf16(tmp_path):
    """A UTF-16 file one byte short was told to convert from Windows-1252 (which makes garbage):
    its byte-order mark says what it is, and the fix keeps what decodes."""
    import subprocess

    path = tmp_path / "cut.txt"
    path.write_bytes(b"\xff\xfe" + "আমি\n\nতুমি\n".encode("utf-16-le") + b"\n")
    with pytest.raises(UserError, match=r"is marked UTF-16 by its byte-order mark but does not decode as that .*: it is "
                                        rf"cut off or damaged; .*iconv -c -f UTF-16 -t UTF-8 {at(path)}") as caught:
        docs([path])
    fix = fix_command(caught.value)
    subprocess.run(fix, shell=True, cwd=tmp_path, capture_output=True)
    assert docs([tmp_path / "cut.utf8.txt"]) == ["আমি\n\nতুমি\n"]


def test_utf8_cut_off_or_damaged_is_not_called_another_encoding(tmp_path):
    """Bangla UTF-8 cut inside a character, or with a stray byte in the middle, is still UTF-8:
    converting it from Windows-1252 would garble every letter. The advice fits each case, and
    the cut-off one's command gives back a file that reads."""
    text = "আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।\n".encode()
    cut = tmp_path / "cut.txt"
    cut.write_bytes(text + "ক".encode()[:2])  # a last character's first two of three bytes
    start = len(text)
    with pytest.raises(UserError, match=rf"ends in the middle of a UTF-8 character .*head -c {start} {at(cut)} > "
                                        rf"{at(tmp_path / 'cut.fixed.txt')}"):
        docs([cut])
    assert cut.read_bytes()[:start].decode("utf-8")  # what that command keeps
    damaged = tmp_path / "damaged.txt"
    damaged.write_bytes(text + b"\xff" + text)
    with pytest.raises(UserError, match=r"UTF-8 text with damaged bytes \(invalid byte 0xff.*iconv -c -f UTF-8"):
        docs([damaged])


BN = "আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।"


@pytest.mark.parametrize("name, first, row", [
    ("rows.csv", "text\n", f'"{BN}"\n'), ("rows.tsv", "text\n", BN + "\n"),
    ("rows.jsonl", "", f'{{"text": "{BN}"}}\n'), ("rows.json", "[", f'{{"text": "{BN}"}},\n'),
])
def test_a_table_with_damaged_or_cut_utf8_gets_the_advice_text_files_get(tmp_path, name, first, row):
    """Tables are decoded as a stream, line by line: their advice names the same cases as a text
    file's, with the offset in the whole file (not in the chunk being read; 50,000 rows pass
    1 MiB), and a fixed file of the same kind."""
    stem, suffix = name.split(".")
    rows = (first + row * 50_000).encode()
    damaged = tmp_path / name
    damaged.write_bytes(rows + b"\xff" + row.encode())
    with pytest.raises(UserError, match=rf"damaged bytes \(invalid byte 0xff at offset {len(rows)}\).*"
                                        rf"iconv -c -f UTF-8 -t UTF-8 {at(damaged)} > {at(tmp_path / f'{stem}.fixed.{suffix}')}"):
        docs([damaged])
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(rows + "ক".encode()[:1])
    with pytest.raises(UserError, match=rf"ends in the middle of a UTF-8 character \(offset {len(rows)}\).*"
                                        rf"head -c {len(rows)} {at(cut)} > {at(tmp_path / f'cut.fixed.{suffix}')}"):
        docs([cut])


def test_a_jsonl_cut_inside_a_row_is_told_to_drop_that_row(tmp_path):
    """Cut off inside a record, a JSONL file's `head -c` keeps the whole lines before it: the
    fixed file reads (cutting at the broken character would leave half a JSON object)."""
    whole = "".join(json.dumps({"text": f"{BN} {i}"}, ensure_ascii=False) + "\n" for i in range(3)).encode()
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(whole[:-6])  # inside the last row's last Bangla character (।, 3 bytes: 2 kept)
    line_start = whole[:-1].rfind(b"\n") + 1
    fixed = tmp_path / "cut.fixed.jsonl"
    with pytest.raises(UserError, match=rf"drop the broken last line \(head -c {line_start} {at(cut)} > {at(fixed)}\)"):
        docs([cut])
    fixed.write_bytes(cut.read_bytes()[:line_start])
    assert docs([fixed]) == [f"{BN} {i}" for i in range(2)]


def test_encoding_advice_counts_offsets_in_the_whole_file(tmp_path):
    """A byte-order mark the codec skips still counts in the offset (the byte named is the bad
    one), and a compressed file's advice decompresses before it cuts."""
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf" + BN.encode() + b"\xff" + BN.encode())
    with pytest.raises(UserError, match=rf"invalid byte 0xff at offset {3 + len(BN.encode())}\)"):
        docs([bom])
    packed = tmp_path / "book.txt.gz"
    whole = (BN * 3).encode()
    packed.write_bytes(gzip.compress(whole[:-2]))
    with pytest.raises(UserError, match=rf"gzip -dc {at(packed)} \| head -c {len(whole) - 3} > "
                                        rf"{at(tmp_path / 'book.fixed.txt')}"):
        docs([packed])


def test_the_fix_command_works_from_where_banglaslm_ran(tmp_path, monkeypatch):
    """The advice names the file as it was given (here relative, in a folder with a space), so
    that pasted into the same shell it runs and gives a file that reads."""
    import subprocess

    (tmp_path / "my texts").mkdir()
    cut = tmp_path / "my texts" / "cut.txt"
    cut.write_bytes((BN + "\n").encode() + "ক".encode()[:2])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as caught:
        docs(["my texts/cut.txt"])
    command = fix_command(caught.value)
    assert command == f"head -c {len(BN.encode()) + 1} 'my texts/cut.txt' > 'my texts/cut.fixed.txt'"
    subprocess.run(command, shell=True, check=True)
    assert docs(["my texts/cut.fixed.txt"]) == [BN + "\n"]


def test_a_clean_output_inside_a_folder_gives_its_shards_alone(tmp_path, capsys):
    """`clean`'s output one level down (corpus/web/) is read as at the top: its shards, not its
    report.json (which is not a document) nor removed/ (whose documents it took out); a file
    someone added to it is named, not silently dropped."""
    web = tmp_path / "corpus" / "web"
    (web / "removed").mkdir(parents=True)
    (web / "00000.jsonl").write_text(json.dumps({"text": "রাখা লেখা"}, ensure_ascii=False) + "\n", encoding="utf-8")
    (web / "removed" / "exact_dedup.jsonl").write_text(json.dumps({"text": "বাদ"}, ensure_ascii=False) + "\n",
                                                       encoding="utf-8")
    (web / "report.json").write_text(json.dumps({"format": "banglaslm-clean/1", "kept": 1}), encoding="utf-8")
    (web / "report.md").write_text("# report", encoding="utf-8")
    (web / "extra.txt").write_text("যোগ করা", encoding="utf-8")
    (web / "extra.jsonl").write_text(json.dumps({"text": "অপরিষ্কার"}, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "corpus" / "book.txt").write_text("বই", encoding="utf-8")
    assert docs([tmp_path / "corpus"]) == ["বই", "রাখা লেখা"]  # not extra.jsonl's uncleaned row either
    err = capsys.readouterr().err
    assert "2 file(s) added to a folder banglaslm clean wrote are not read" in err
    assert "extra.jsonl" in err and "extra.txt" in err


def test_a_file_named_twice_is_read_once(tmp_path, capsys):
    """A folder and a file in it, or overlapping globs: each file once (twice, its documents would
    silently weigh double), with a note."""
    (tmp_path / "a.txt").write_text("এক", encoding="utf-8")
    (tmp_path / "b.txt").write_text("দুই", encoding="utf-8")
    assert docs([tmp_path, tmp_path / "a.txt", str(tmp_path / "*.txt")]) == ["এক", "দুই"]
    assert "3 input file(s) named more than once" in capsys.readouterr().err


def test_a_data_or_model_folder_is_not_read_as_text(data_dir, tmp_path):
    """Given as an input, a prepared data folder or a model folder (a run, an HF export) would
    feed its metadata and logs (JSON, JSONL) in as documents: refused, naming what it is."""
    with pytest.raises(UserError, match="is a data folder .* pass it to train as --data"):
        resolve_inputs([str(data_dir)])
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}", encoding="utf-8")
    (run / "metrics.jsonl").write_text('{"iter": 0}\n', encoding="utf-8")
    with pytest.raises(UserError, match="is a model folder"):
        resolve_inputs([str(run)])


def test_a_text_to_score_is_a_file(tmp_path):
    """eval, report and lm-eval-task read each text whole; a folder or a missing path gets the fix."""
    with pytest.raises(UserError, match=rf"{tmp_path} is a folder; pass the text files in it \(e.g. {tmp_path}/\*.txt\)"):
        read_whole_text(tmp_path)
    with pytest.raises(UserError, match="text file not found: .*nope.txt; check the path"):
        read_whole_text(tmp_path / "nope.txt")
    (tmp_path / "a.txt").write_text("এক\r\n\r\nদুই", encoding="utf-8")
    assert read_whole_text(tmp_path / "a.txt") == "এক\n\nদুই"


def test_a_small_input_s_rate_is_not_zero_mb_per_s():
    assert text_rate(2_500_000, 1.0) == "2.50 MB/s"
    assert text_rate(4_000, 0.5) == "8.0 kB/s"  # printed as "0.01 MB/s" before, and 1 kB in 1 s as "0.00 MB/s"
    assert text_rate(0, 0.0) == "0.0 kB/s"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_a_text_file_streams_into_the_documents_the_whole_file_gives(tmp_path, monkeypatch, encoding, chunk):
    """A .txt file split into lines, paragraphs or pages was read whole (678 MB of memory for a
    210 MB file): it streams, a few bytes at a time here, and the documents are those of the
    whole text, whatever falls on a chunk's edge (CRLF, a blank-line run, a Bangla letter)."""
    from banglaslm.data import sources
    from banglaslm.text import split_paragraphs, unify_line_breaks

    text = 5000 * "শুরু।\n\n" + ("প্রথম অনুচ্ছেদ।\r\nএকই অনুচ্ছেদ\r\n\r\n\r\n\r\nদ্বিতীয়\u2028লাইন\n \u200b\n\nতৃতীয়\rশেষ\r\n"
            "\n\n" + "লম্বা অনুচ্ছেদ। " * 40 + "\r\n\r\nশেষ কথা")
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode(encoding))
    whole = unify_line_breaks(text)
    kept = lambda pieces: [p for p in pieces if p.strip()]  # noqa: E731 (a blank-line run's gap is no document)
    expected = {"line": kept(whole.split("\n")), "paragraph": kept(split_paragraphs(whole)),
                "page": list(sources.pages(kept(split_paragraphs(whole)))), "file": [whole]}
    monkeypatch.setattr(sources, "TEXT_CHUNK", chunk)  # the first read is 64 KiB: the rest comes in chunks
    assert len(text.encode(encoding)) > (1 << 16) + 1000
    for split, documents in expected.items():
        assert list(sources.read_text_file(str(path), split)) == documents, split


def test_the_first_document_comes_before_the_file_is_read_whole(tmp_path, monkeypatch):
    from banglaslm.data import sources

    path = tmp_path / "big.txt"
    path.write_text("একটি লাইন।\n" * 200_000, encoding="utf-8")  # 6 MB
    opened = []
    real = sources.open_binary
    monkeypatch.setattr(sources, "open_binary", lambda p: opened.append(real(p)) or opened[-1])
    monkeypatch.setattr(sources, "TEXT_CHUNK", 1 << 20)
    documents = sources.read_text_file(str(path), "line")
    assert next(documents) == "একটি লাইন।"
    assert opened and opened[0].tell() <= 2 << 20 < path.stat().st_size


@pytest.mark.parametrize("doc_split", ["line", "paragraph"])
def test_runs_of_blank_lines_are_no_documents(tmp_path, doc_split):
    """Three or more line breaks, or the one a file ends with, were counted as 'skipped N empty
    document(s)' (921 of them for three books of songs)."""
    (tmp_path / "songs.txt").write_text("এক\n\n\n\n\nদুই\n\n\n\n", encoding="utf-8")
    assert [d.strip() for d in docs([tmp_path / "songs.txt"], doc_split=doc_split)] == ["এক", "দুই"]


def test_a_semicolon_csv_whose_first_row_ends_in_an_empty_cell_is_read_by_its_header(tmp_path):
    (tmp_path / "semi.csv").write_text("text;label\nআমার সোনার বাংলা;\nআমি তোমায় ভালোবাসি;pos\n", encoding="utf-8")
    assert docs([tmp_path / "semi.csv"]) == ["আমার সোনার বাংলা", "আমি তোমায় ভালোবাসি"]


@pytest.mark.parametrize("sep, suffix", [(";", "csv"), ("\t", "csv"), ("|", "csv"), ("\t", "tsv")])
def test_a_first_row_whose_quoted_cell_spans_lines_does_not_hide_the_separator(tmp_path, sep, suffix):
    """A news export's first cell of paragraphs spans lines: its first line alone held fewer
    fields than the header, so ';' and tabs were not recognized ("has no column 'News' (it has:
    'id;News;Category')")."""
    rows = ["id", "News", "Category"], ["1", '"প্রথম অনুচ্ছেদ।\r\n\r\nদ্বিতীয় অনুচ্ছেদ।"', "জাতীয়"], ["2", "আরেকটি খবর।", "খেলা"]
    path = tmp_path / f"news.{suffix}"
    path.write_bytes("\ufeff".encode() + "".join(sep.join(r) + "\r\n" for r in rows).encode())
    assert [d.replace("\r", "") for d in docs([path], text_column="News")] == \
        ["প্রথম অনুচ্ছেদ।\n\nদ্বিতীয় অনুচ্ছেদ।", "আরেকটি খবর।"]
    (tmp_path / "odd.csv").write_text("id;News;Category\n1;a;b;c;d\n", encoding="utf-8")  # no row like its header
    with pytest.raises(UserError, match=r"it has: 'id;News;Category'\); its header was read as one column"):
        docs([tmp_path / "odd.csv"], text_column="News")


def test_bangla_in_a_legacy_font_encoding_is_refused(tmp_path):
    """Bijoy/SutonnyMJ text is Latin-1 letters drawn as Bangla glyphs: as text, a file, a table
    or Windows-1252 bytes, it trained a model on Latin gibberish without a word."""
    books = require_literature()
    bangla = (books / "SukumarRay_Prose_PaglaDashu.txt").read_text(encoding="utf-8")[:20000]
    bijoy = to_bijoy(bangla)
    (tmp_path / "news.txt").write_text(bijoy, encoding="utf-8")
    rows = [line for line in bijoy.splitlines() if line.strip()]
    (tmp_path / "news.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "ansi.txt").write_bytes(bijoy.encode("cp1252", errors="replace"))
    for name in ("news.txt", "news.jsonl"):
        for split in ("file", "paragraph"):
            with pytest.raises(UserError, match=rf"{name} looks like Bangla typed in a legacy font encoding "
                                                r"\(Bijoy/SutonnyMJ.*Bijoy-to-Unicode converter"):
                docs([tmp_path / name], doc_split=split)
    with pytest.raises(UserError, match=r"ansi.txt is Bangla typed in a legacy font encoding .*saved as Windows-1252"):
        docs([tmp_path / "ansi.txt"])


def test_unicode_bangla_english_and_footnote_daggers_are_not_taken_for_a_legacy_font(tmp_path):
    books = require_literature()
    for path in [*sorted(books.glob("*.txt")), books.parent / "tinyshakespeare.txt"]:
        assert not looks_like_legacy_font(path.read_text(encoding="utf-8")), path
        assert looks_like_legacy_font(to_bijoy(path.read_text(encoding="utf-8")[:65536])) == (books in path.parents)
    notes = "A claim that needs a source.† Another one‡, and a third.†‡ " * 40
    (tmp_path / "notes.txt").write_text(notes, encoding="utf-8")
    assert docs([tmp_path / "notes.txt"]) == [notes]
    extinct = "Theropoda > Avialae > †Archaeopteryx, †Confuciusornis, †Enantiornithes, Aves.\n" * 10
    genera = "".join(f"†{name}\n" for name in ("Tyrannosaurus", "Velociraptor", "Diplodocus", "Stegosaurus") * 10)
    for text in (extinct, genera):
        (tmp_path / "clade.txt").write_text(text, encoding="utf-8")
        assert docs([tmp_path / "clade.txt"]) == [text]


def test_a_file_name_that_is_not_utf8_is_refused_with_the_rename(tmp_path):
    """A Latin-1 "café.txt" from an old zip reached prepare's plan and clean's report as lone
    surrogates, which UTF-8 cannot write: a traceback, and a half-made work folder left behind.
    Given by itself, by glob or in a folder, it is now named (its odd byte escaped) before any work."""
    import os

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "ok.txt").write_text("আমি\n", encoding="utf-8")
    odd = os.fsdecode(os.fsencode(folder) + b"/caf\xe9.txt")
    with open(odd, "w", encoding="utf-8") as fh:
        fh.write("তুমি\n")
    for given in (folder, odd, folder / "*.txt"):
        with pytest.raises(UserError, match=r"the file name '[^']*/caf\\xe9\.txt' is not UTF-8 .*rename it, e\.g\. convmv"):
            resolve_inputs([str(given)])


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_bangla_saved_as_question_marks_in_a_table_is_refused(tmp_path, suffix):
    """Excel's plain "CSV" on Windows turns Bangla into '?' too; the check that refused such a
    .txt file never looked at tables, which trained on rows such as '??? ???'."""
    import csv

    rows = ["??? ???? ????, ??? ?????", "?????? ????? ????", "কে? কী? কেন?"] * 10
    path = tmp_path / f"ansi.{suffix}"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        if suffix == "csv":
            writer = csv.writer(fh)
            writer.writerows([["id", "text"], *([i, row] for i, row in enumerate(rows))])
        else:
            fh.writelines(json.dumps({"text": row}, ensure_ascii=False) + "\n" for row in rows)
    with pytest.raises(UserError, match=r"ansi\.\w+: \d+% of its characters are '\?'.*Excel: \"CSV UTF-8\""):
        docs([path])
    with pytest.raises(UserError, match="are '?'"):
        list(iter_records(resolve_inputs([str(path)])))


def test_a_fix_command_for_a_file_in_a_folder_says_to_take_the_original_out(tmp_path):
    """The fixed copy lands beside the original, so a folder read again gave the same error (or,
    for a file that was readable, would have read both copies)."""
    import subprocess

    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "latin.txt").write_bytes("café naïve\n".encode("cp1252"))
    with pytest.raises(UserError, match="in place of the original, moving the original out of any input folder") as caught:
        docs([folder])
    subprocess.run(fix_command(caught.value), shell=True, cwd=tmp_path, check=True)
    (folder / "latin.txt").rename(tmp_path / "latin.txt")
    assert docs([folder]) == ["café naïve\n"]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_cell_spelled_as_missing_is_no_document(tmp_path, suffix):
    """A news CSV with literal NaN cells trained documents that say "NaN"; the same table saved
    by pandas as parquet or JSONL (null) had none, so the data depended on the format."""
    texts = ["আমি বাংলায় গান গাই", "NaN", "তুমি", " NULL ", "#N/A", "nan", "<NA>", "NaN রুটি"]
    path = tmp_path / f"news.{suffix}"
    if suffix == "csv":
        path.write_text("id,News\n" + "".join(f"{i},{t}\n" for i, t in enumerate(texts)), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"News": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    kept = [d for d in docs([path], text_column="News") if d]
    assert kept == ["আমি বাংলায় গান গাই", "তুমি", "NaN রুটি"]
    assert [r[0] for r in iter_records(resolve_inputs([str(path)]), text_column="News") if r[0]] == kept


def test_a_spreadsheet_or_archive_named_as_a_table_is_named_for_what_it_is(tmp_path):
    """A table's start went through no signature check: an .xlsx renamed .csv was "a binary file",
    before that "not UTF-8 … iconv -f WINDOWS-1252"."""
    import gzip as gz

    (tmp_path / "book.csv").write_bytes(b"PK\x03\x04" + b"\x00" * 40 + b"xl/workbook.xml")
    with pytest.raises(UserError, match=r"book\.csv is a ZIP archive"):
        docs([tmp_path / "book.csv"])
    (tmp_path / "rows.jsonl").write_bytes(gz.compress(b'{"text": "hello"}\n'))
    with pytest.raises(UserError, match=r"rows\.jsonl is a gzip-compressed file, not text: name it with \.gz"):
        docs([tmp_path / "rows.jsonl"])
