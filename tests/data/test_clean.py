"""`banglaslm clean` on real books with planted duplicates and noise: the planted items go, the
books' paragraphs stay; the same through the CLI and with 2 workers; its output reads back."""

import importlib.util
import json
from pathlib import Path

import pytest

from banglaslm.cli import main
from banglaslm.data.clean import (
    CLEAN_PRESETS,
    BanglaScriptFilter,
    BanglaWordTokenizer,
    CleanOptions,
    clean,
    stop_words,
)
from banglaslm.data.sources import iter_documents, resolve_inputs
from banglaslm.errors import UserError
from banglaslm.text import normalize

ROOT = Path(__file__).resolve().parents[2]
BOOKS = ROOT.parent / "shared" / "data" / "bangla-literature"


def _bench():
    spec = importlib.util.spec_from_file_location("clean_quality", ROOT / "benchmarks" / "clean_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    if not BOOKS.is_dir():
        pytest.skip(f"{BOOKS} is absent (the shared books)")
    bench = _bench()
    originals, items = bench.planted_corpus(books=3, seed=0, exact=40, near=40, junk=24)
    folder = tmp_path_factory.mktemp("corpus")
    return bench, originals, items, bench.write_corpus(folder, originals, items)


def _kept(out: Path) -> list[str]:
    return [json.loads(line)["text"] for path in sorted(out.glob("*.jsonl")) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def cleaned(planted, tmp_path_factory):
    bench, originals, items, inputs = planted
    out = tmp_path_factory.mktemp("clean") / "out"
    result = clean(inputs, out, CleanOptions.preset("literature"), shard_docs=150, keep_removed=True, examples=3)
    return result, out


def test_planted_items_go_and_paragraphs_stay(planted, cleaned):
    bench, originals, items, _ = planted
    result, out = cleaned
    rows = bench.score(originals, items, bench.removed_ids(out))
    assert rows["originals removed"] <= 0.01, rows
    assert rows["all noise steps"]["recall"] == 1.0, rows
    # Each dedup step removes only planted copies of its kind, and every one of them.
    assert rows["exact_dedup"]["recall"] == 1.0 and rows["exact_dedup"]["precision"] == 1.0, rows
    assert rows["near_dedup"]["recall"] == 1.0 and rows["near_dedup"]["precision"] == 1.0, rows
    kept = _kept(out)
    assert len(kept) == len(set(kept)) == result.kept
    assert not {t for kind, t in items if kind == "noise"} & set(kept)
    assert result.documents == len(originals) + len(items)


def test_report_counts_every_step(cleaned):
    result, out = cleaned
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    steps = report["steps"]
    assert [s["step"] for s in steps] == ["script", "gopher_quality", "gopher_repetition", "exact_dedup", "near_dedup"]
    assert steps[0]["docs_in"] == report["documents"] and steps[-1]["kept"] == report["kept"] == result.kept
    for before, after in zip(steps, steps[1:]):
        assert after["docs_in"] == before["kept"]
    for s in steps:
        assert s["removed"] == sum(s["reasons"].values()) == sum(1 for _ in open(out / "removed" / f"{s['step']}.jsonl"))
        assert len(s["examples"]) == min(3, s["removed"]) and all(len(e["text"]) <= 300 for e in s["examples"])
    assert steps[-2]["removed"] >= 40 and steps[-1]["removed"] >= 38 and steps[-1]["chars_removed"] > 0
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| near_dedup |" in markdown and "examples of what was removed" in markdown


def test_prepare_reads_the_shards_back(cleaned):
    result, out = cleaned
    sources = resolve_inputs([str(out)])
    assert {Path(s.location).parent for s in sources} == {out} and all(s.kind == "jsonl" for s in sources)
    assert list(iter_documents(sources)) == _kept(out)


def test_workers_and_cli_give_the_same_kept_set(planted, cleaned, tmp_path, capsys):
    bench, _, _, inputs = planted
    _, out = cleaned
    two = tmp_path / "two"
    clean(inputs, two, CleanOptions.preset("literature"), shard_docs=150, workers=2)
    assert _kept(two) == _kept(out)
    assert main(["clean", *inputs, "--out", str(tmp_path / "cli"), "--shard-docs", "150", "--preset", "literature"]) == 0
    assert "kept" in capsys.readouterr().out
    assert _kept(tmp_path / "cli") == _kept(out)


def cli_clean_options(argv: list[str]) -> CleanOptions:
    from banglaslm.cli import build_parser, picked

    args = build_parser().parse_args(argv)
    preset = CLEAN_PRESETS[args.preset if args.command == "clean" else args.clean_preset]
    return CleanOptions(**picked(args, CleanOptions, preset=preset))


def test_a_preset_sets_the_flags_not_given():
    """`--preset literature` replaces the defaults of the flags not given, and a flag given wins
    even when it names the web default (50 words), on `clean` and `prepare --clean` alike."""
    literature, web = CleanOptions.preset("literature"), CleanOptions()
    assert literature.min_stop_words == 0 and literature.min_words == 10 and literature.dup_line_frac > web.dup_line_frac
    assert cli_clean_options(["clean", "in", "--out", "o"]) == web == CleanOptions.preset("web")
    assert cli_clean_options(["clean", "in", "--out", "o", "--preset", "literature"]) == literature
    given = cli_clean_options(["clean", "in", "--out", "o", "--preset", "literature", "--min-words", "50",
                               "--no-near-dedup"])
    assert given == CleanOptions.preset("literature", min_words=50, near_dedup=False) and given.min_words == web.min_words
    assert cli_clean_options(["prepare", "in", "--out", "o", "--clean", "--clean-preset", "literature",
                              "--min-stop-words", "2"]) == CleanOptions.preset("literature", min_stop_words=2)
    with pytest.raises(UserError, match="preset is 'books'; choose one of web, literature"):
        CleanOptions.preset("books")


def test_a_clean_preset_without_clean_is_named(tmp_path):
    from conftest import run_cli

    (tmp_path / "a.txt").write_text("লেখা।\n\nআরও লেখা।", encoding="utf-8")
    code, err = run_cli(["prepare", tmp_path / "a.txt", "--out", tmp_path / "d", "--clean-preset", "literature"])
    assert code == 2 and "--clean-preset literature sets the thresholds of --clean; add --clean" in err
    assert not (tmp_path / "d").exists()


def test_the_literature_preset_keeps_the_books(tmp_path):
    """FineWeb-2's web-page thresholds remove a quarter of the shared books' pages (sadhu bhasha
    prose without its modern stop words, verse with short words and refrains); the literature
    preset keeps nearly all of them and removes the same junk (test_planted_items_go...)."""
    if not BOOKS.is_dir():
        pytest.skip(f"{BOOKS} is absent (the shared books)")
    books = [str(BOOKS / n) for n in ("AbanindranathTagore_Prose_BuroAngla.txt", "RabindranathTagore_Poetry_Kalpana.txt",
                                      "SukumarRay_Poetry_KhaiKhai.txt")]
    web = clean(books, tmp_path / "web", CleanOptions(), doc_split="page")
    literature = clean(books, tmp_path / "lit", CleanOptions.preset("literature"), doc_split="page")
    assert web.kept < 0.85 * web.documents and literature.kept > 0.95 * literature.documents


def test_bad_inputs_fail_in_one_line_without_output(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["clean", str(tmp_path / "missing.txt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "input not found" in err
    (tmp_path / "a.txt").write_text("কিছু লেখা", encoding="utf-8")
    assert main(["clean", str(tmp_path / "a.txt"), "--out", str(out), "--top-ngrams", "2:high"]) == 2
    assert "--top-ngrams must be N:SHARE pairs" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\u200c \n\n", encoding="utf-8")
    with pytest.raises(UserError, match="hold no text"):
        clean([str(tmp_path / "empty.txt")], out)
    assert not out.exists() and not list(tmp_path.glob(".out.*.tmp"))


def test_stop_words_tokenizer_and_script_share():
    words = stop_words()
    assert "\u09b9\u09df" in words and "\u09b9\u09af\u09bc" not in words  # হয় as normalize writes it
    assert all(normalize(w) == w for w in words)
    tokens = BanglaWordTokenizer().word_tokenize(normalize("সে বোকা ছিল না। লম্বা-লম্বা গুণ, ভাগ॥ ১২৩"))
    assert tokens == ["সে", "বোকা", "ছিল", "না", "লম্বা-লম্বা", "গুণ", "ভাগ", "১২৩"]
    keep = BanglaScriptFilter(0.8)
    from datatrove.data import Document
    assert keep.filter(Document(text="আমার সোনার বাংলা, I love you", id="a")) == (False, "low_bangla_share")
    assert keep.filter(Document(text="আমার সোনার বাংলা আমি তোমায় ভালোবাসি ok", id="b")) is True
    assert keep.filter(Document(text="১২৩ ৪৫৬ --- 789", id="c")) == (False, "no_letters")
    # Vowel signs and hasanta count with their consonants: 85% of this line's letters and signs
    # are Bangla, but only 75% of its letters (a page of verse with one image tag was removed).
    verse = normalize("তোমাকে ভালোবেসেছিলাম, কিছুই চাইনি, শুধু দেখেছি। <img src=x>")
    assert keep.filter(Document(text=verse, id="d")) is True
    # An emoji's variation selector is a combining sign of no script: not a letter against Bangla.
    assert keep.filter(Document(text=normalize("খুব ভালো লাগলো ❤️❤️❤️ ধন্যবাদ ❤️❤️"), id="e")) is True


def test_every_document_removed_gives_a_report_and_a_warning(tmp_path, capsys):
    """Filters that remove everything (English through the Bangla-script filter) end in a report
    naming the step, not a datatrove traceback from the dedup stages finding no shards; prepare on
    the empty output is a one-line error."""
    text = tmp_path / "english.jsonl"
    text.write_text("".join(json.dumps({"text": f"Plain English line number {i} with some words."}) + "\n"
                            for i in range(30)), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["clean", str(text), "--out", str(out), "--shard-docs", "10"]) == 0
    printed = capsys.readouterr().out
    assert "kept 0 of 30 documents" in printed and "every document was removed, the last of them by script" in printed
    assert "check that the text is Unicode Bangla" in printed and "--min-stop-words" not in printed  # not "loosen"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["kept"] == 0 and report["steps"][0]["removed"] == 30
    assert [s["docs_in"] for s in report["steps"][1:]] == [0, 0, 0, 0] and not list(out.glob("*.jsonl"))
    assert main(["prepare", str(out), "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was written by banglaslm clean, which kept none of its documents" in err
    assert main(["prepare", str(text), "--clean", "--out", str(tmp_path / "data")]) == 2  # the same, inside prepare
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cleaning removed every document (30), the last of them by script" in err
    assert "legacy font encoding such as Bijoy/SutonnyMJ must be converted" in err
    assert not (tmp_path / "data").exists() and not list(tmp_path.glob(".data*"))


def test_options_that_would_switch_a_rule_off_silently_are_refused(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("কিছু লেখা", encoding="utf-8")
    for flags, message in ((["--min-avg-word-length", "nan"], "--min-avg-word-length must be a finite number"),
                           (["--max-symbol-word-ratio", "inf"], "--max-symbol-word-ratio must be a finite number"),
                           (["--max-avg-word-length", "-3"], "--max-avg-word-length must be a finite number >= 0"),
                           (["--examples", "-1"], "--examples must be 0 or more")):
        status = main(["clean", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"), *flags])
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1 and message in err, err
        assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="min_avg_word_length must be a finite number"):
        CleanOptions(min_avg_word_length=float("nan")).validate()


def test_kept_and_removed_documents_say_where_they_came_from(planted, tmp_path):
    """Each kept document names its input (file and row) and keeps its row's other fields (a
    crawl's url, ids) under "metadata"; removed ones and the report's examples name their input
    too, so a user can find a removed row in the source."""
    bench, originals, _, _ = planted
    table = tmp_path / "crawl.csv"
    rows = [(f"https://example.com/{i}", text, i * 0.5) for i, text in enumerate(originals[:6])]
    rows.append(("https://example.com/copy", originals[0], 9.0))  # an exact copy of row 1
    import csv
    with open(table, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "text", "score"])
        writer.writerows(rows)
    out = tmp_path / "out"
    clean([str(table)], out, CleanOptions.preset("literature"), keep_removed=True, examples=3)
    kept = [json.loads(line) for path in sorted(out.glob("*.jsonl")) for line in open(path, encoding="utf-8")]
    assert [r["input"].split(" (")[0] for r in kept] == [f"{table} row {i}" for i in range(1, 7)]  # then its line
    assert [r["metadata"] for r in kept] == [{"url": url, "score": str(score)} for url, _, score in rows[:6]]
    removed = [json.loads(line) for line in open(out / "removed" / "exact_dedup.jsonl", encoding="utf-8")]
    assert len(removed) == 1 and removed[0]["input"].startswith(f"{table} row 7 (ending on line ")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["steps"][3]["examples"][0]["input"] == removed[0]["input"]
    assert f"from {table} row 7" in (out / "report.md").read_text(encoding="utf-8")


def test_removed_documents_are_merged_in_id_order_as_they_are_read(tmp_path):
    """--keep-removed held every removed document of a step in memory to sort it (731 MB for a
    77 MB file): the tasks' files, each in id order, are merged as they are read; one that is
    not in order is still sorted whole."""
    from banglaslm.data.clean import StepCount, _gather_removed

    def task_file(step: str, name: str, ids: list[int]) -> None:
        (tmp_path / "removed" / step).mkdir(parents=True, exist_ok=True)
        rows = [{"id": f"{i:010d}", "text": f"লেখা {i}", "metadata": {"input": f"f.txt line {i}"}} for i in ids]
        (tmp_path / "removed" / step / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    task_file("script", "00000.jsonl", [1, 4, 9])
    task_file("script", "00001.jsonl", [2, 3, 10])
    task_file("exact_dedup", "00000.jsonl", [7, 5])  # out of order
    task_file("exact_dedup", "00001.jsonl", [6])
    _gather_removed(tmp_path / "removed", tmp_path / "out", [StepCount("script", 10), StepCount("exact_dedup", 4)])
    for step, ids in (("script", [1, 2, 3, 4, 9, 10]), ("exact_dedup", [5, 6, 7])):
        rows = [json.loads(line) for line in open(tmp_path / "out" / f"{step}.jsonl", encoding="utf-8")]
        assert [int(r["id"]) for r in rows] == ids and rows[0]["reason"] == step
        assert rows[0]["input"] == f"f.txt line {ids[0]}" and rows[0]["text"] == f"লেখা {ids[0]}"


def test_a_lone_surrogate_is_refused_in_the_text_and_kept_escaped_in_other_fields(planted, tmp_path, capsys):
    """JSON's "\\ud800" (half of a cut emoji, common in scraped data) became a UnicodeEncodeError
    traceback when the shards were written, in the text or in any other field."""
    _, originals, _, _ = planted
    table = tmp_path / "crawl.jsonl"
    table.write_text(json.dumps({"text": originals[0], "title": "\ud83d cut"}) + "\n"
                     + json.dumps({"text": originals[1], "title": "whole"}) + "\n", encoding="utf-8")
    clean([str(table)], tmp_path / "out", CleanOptions.preset("literature"))
    kept = [json.loads(line) for path in sorted((tmp_path / "out").glob("*.jsonl")) for line in open(path, encoding="utf-8")]
    assert [r["metadata"]["title"] for r in kept] == ["\ud83d cut", "whole"]  # as it was read
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": originals[0][:40] + "\ud800"}) + "\n", encoding="utf-8")
    assert main(["clean", str(bad), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"banglaslm clean: error: {bad}:1: the text holds a lone surrogate (U+D800, half "
                                        "of a character such as a cut emoji, from a \\u escape) at character 40; remove or "
                                        "repair that escape"]
    assert not (tmp_path / "none").exists()
