import json

import pytest

from banglaslm.data.sources import iter_documents, resolve_inputs
from banglaslm.errors import UserError


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
    (tmp_path / "c.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"no column 'text' \(it has: a, b\)"):
        docs([tmp_path / "c.csv"])
    with pytest.raises(UserError, match="no file matches"):
        docs([str(tmp_path / "*.nothing")])
