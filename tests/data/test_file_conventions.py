"""Files as people have them, read alike by every reader the product has. The table:

| convention \\ reader                  | text (paragraphs) | text (lines) | JSONL | CSV | JSON config | TOML config | prompt file |
|--------------------------------------|---|---|---|---|---|---|---|
| UTF-8                                | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
| UTF-8 with a byte-order mark         | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
| UTF-16 LE with a BOM (Notepad)       | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
| UTF-16 BE with a BOM                 | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
| CRLF line ends (Windows)             | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
| CR line ends (classic Mac)           | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |
| blank lines holding spaces, a tab    | ✓ | - | - | - | - | - | - |
| blank lines holding NBSP, ZWSP       | ✓ | - | - | - | - | - | - |
| a 2 MB line                          | ✓ | ✓ | ✓ | ✓ | - | - | ✓ |
| empty and whitespace-only records    | ✓ | ✓ | ✓ | ✓ | - | - | - |

(- : the convention has no meaning for that format.) Parquet stores typed strings, so only
its empty and null records apply (tests/data/test_sources.py)."""

import csv
import io
import json
import sys

import pytest

from banglaslm.config import load_config_file
from banglaslm.data.sources import iter_documents, resolve_inputs
from banglaslm.text import normalize

RECORDS = ["আমার সোনার বাংলা, আমি তোমায় ভালোবাসি।", "চিরদিন তোমার আকাশ, তোমার বাতাস।"]
LONG = "নদীর ধারে একটি ছোট গ্রাম। " * 80_000  # about 2 MB of UTF-8 on one line
BLANK_RECORDS = ["", "   ", "\t\u00a0", "\u200b"]

CONVENTIONS = {
    "utf-8": {}, "utf-8 with BOM": {"encoding": "utf-8-sig"},
    "UTF-16 LE with BOM": {"bom": b"\xff\xfe", "encoding": "utf-16-le"},
    "UTF-16 BE with BOM": {"bom": b"\xfe\xff", "encoding": "utf-16-be"},
    "CRLF": {"newline": "\r\n"}, "CR": {"newline": "\r"},
    "blank lines with spaces and a tab": {"blank": "\n \t\n", "only": {"paragraphs"}},
    "blank lines with NBSP and ZWSP": {"blank": "\n\u00a0\u200b \n", "only": {"paragraphs"}},
    "a 2 MB line": {"records": [RECORDS[0], LONG], "except": {"json config", "toml config"}},
    "empty and whitespace-only records": {"records": RECORDS[:1] + BLANK_RECORDS + RECORDS[1:],
                                          "except": {"json config", "toml config", "prompt file"}},
}


def render(reader: str, records: list[str], blank: str) -> str:
    if reader == "paragraphs":
        return blank.join(records) + "\n"
    if reader == "lines":
        return "\n".join(records) + "\n"
    if reader == "jsonl":
        return "".join(json.dumps({"text": r, "id": i}, ensure_ascii=False) + "\n" for i, r in enumerate(records))
    if reader == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows([["id", "text"], *[[i, r] for i, r in enumerate(records)]])
        return out.getvalue()
    if reader == "json config":
        return json.dumps({"train": {"learning_rate": 0.002}}, indent=2) + "\n"
    if reader == "toml config":
        return "# a comment\n[train]\nlearning_rate = 0.002\n\n[model]\nn_layer = 3\n"
    return records[0] + "\n"  # prompt file


def write(path, text: str, convention: dict) -> None:
    text = text.replace("\n", convention.get("newline", "\n"))
    data = convention.get("bom", b"") + text.encode(convention.get("encoding", "utf-8"))
    path.write_bytes(data)


def documents(path, reader: str) -> list[str]:
    kind = {"paragraphs": "paragraph", "lines": "line"}.get(reader, "file")
    docs = iter_documents(resolve_inputs([str(path)]), doc_split=kind)
    return [d for d in (normalize(doc) for doc in docs) if d]  # what prepare keeps


@pytest.mark.parametrize("reader", ["paragraphs", "lines", "jsonl", "csv", "json config", "toml config",
                                    "prompt file"])
@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_every_reader_reads_every_convention(tmp_path, reader, name):
    convention = CONVENTIONS[name]
    if reader not in convention.get("only", {reader}) or reader in convention.get("except", set()):
        pytest.skip("the convention has no meaning for this format")
    records = convention.get("records", RECORDS)
    suffix = {"jsonl": ".jsonl", "csv": ".csv", "json config": ".json", "toml config": ".toml"}.get(reader, ".txt")
    path = tmp_path / f"input{suffix}"
    write(path, render(reader, records, convention.get("blank", "\n\n")), convention)
    if reader == "json config":
        assert load_config_file(path) == {"train.learning_rate": 0.002}
    elif reader == "toml config":
        assert load_config_file(path) == {"train.learning_rate": 0.002, "model.n_layer": 3}
    elif reader == "prompt file":
        from banglaslm.cli import read_prompt_file

        assert normalize(read_prompt_file(str(path))) == normalize(records[0])
        assert not read_prompt_file(str(path)).endswith(("\n", "\r"))
    else:
        assert documents(path, reader) == [normalize(r) for r in records if normalize(r)]


def test_the_prompt_file_through_the_cli(trained_run, tmp_path):
    import subprocess

    path = tmp_path / "prompt.txt"
    write(path, "আমি\n", CONVENTIONS["UTF-16 LE with BOM"])
    common = ["--greedy", "--max-new-tokens", "5", "--json"]
    a = subprocess.run([sys.executable, "-m", "banglaslm", "generate", str(trained_run), "--prompt-file", str(path),
                        *common], capture_output=True, text=True, timeout=120)
    b = subprocess.run([sys.executable, "-m", "banglaslm", "generate", str(trained_run), "--prompt", "আমি", *common],
                       capture_output=True, text=True, timeout=120)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["text"] == json.loads(b.stdout)["text"]
