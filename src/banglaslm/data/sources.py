"""Read raw documents from the inputs `prepare` accepts.

An input is a `.txt`/`.md` file, a folder (searched recursively), a glob, a `.jsonl`, `.json`,
`.csv`, `.tsv` or `.parquet` file, or `hf:NAME[:CONFIG[:SPLIT]]`, a dataset loaded through the
`datasets` library (NAME may also be a local folder of data files). Text and table files may
be compressed (`.gz`, `.bz2`, `.xz`, `.zst`: `news.jsonl.gz`). Everything but a `.json` file (one
JSON value, read whole) is read lazily, one document at a time, so a corpus larger than memory
streams through. Formats that are not text (PDF, Word, spreadsheets, archives, HTML) are
refused with the conversion to make, rather than trained on as bytes or markup.

What a "document" is: one record of a table (JSONL line, CSV row, parquet row, dataset row),
and for plain text files, by `doc_split`: the whole file ("file"), a page of consecutive
paragraphs ("page"), each blank-line-separated paragraph ("paragraph"), or each line ("line").
A page keeps its paragraph breaks, which a paragraph split turns into end-of-document tokens.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import difflib
import glob
import json
import math
import os
import re
import shlex
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError, bad_param, shown
from ..fileio import (
    COMPRESSIONS,
    bom_encoding,
    compression,
    decompressing,
    open_binary,
    open_text,
    read_bytes,
    text_encoding,
)
from ..text import split_stream, unify_line_breaks
from .folder import is_data_folder

TEXT_SUFFIXES = {".txt", ".md"}
TABLE_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet"}
INPUTS_HELP = (".txt/.md files, folders, globs, .jsonl/.json/.csv/.tsv/.parquet files (text and tables may be "
               ".gz/.bz2/.xz/.zst), or hf:NAME[:CONFIG[:SPLIT]]")
# Files that hold text but not as text: what to do with each instead.
NOT_TEXT = {
    ".pdf": "extract its text first (e.g. pdftotext FILE.pdf FILE.txt)",
    ".docx": "save it as plain text (.txt, UTF-8) first", ".doc": "save it as plain text (.txt, UTF-8) first",
    ".odt": "save it as plain text (.txt, UTF-8) first", ".rtf": "save it as plain text (.txt, UTF-8) first",
    ".epub": "convert it to plain text first (e.g. pandoc FILE.epub -t plain -o FILE.txt)",
    ".html": "strip the markup first (keep the text as .txt)", ".htm": "strip the markup first (keep the text as .txt)",
    ".xml": "extract the text first (keep it as .txt or .jsonl)",
    ".xlsx": "save the sheet as CSV (UTF-8) first", ".xls": "save the sheet as CSV (UTF-8) first",
    ".ods": "save the sheet as CSV (UTF-8) first",
    ".zip": "unpack it first and pass the folder", ".tar": "unpack it first and pass the folder",
    ".tgz": "unpack it first and pass the folder", ".7z": "unpack it first and pass the folder",
    ".rar": "unpack it first and pass the folder",
}
# Files that are not text whatever their name says, by how they start: (first bytes, what it
# is, what to do with it instead).
MAGIC = [
    (b"%PDF-", "a PDF file", NOT_TEXT[".pdf"]),
    (b"PK\x03\x04", "a ZIP archive (Word, OpenDocument and EPUB files are ZIP archives too)",
     "save or extract its text as a UTF-8 .txt file first"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office file (.doc/.xls)", "save it as plain text or CSV (UTF-8) first"),
    (b"{\\rtf", "an RTF document", NOT_TEXT[".rtf"]),
    (b"\x1f\x8b", "a gzip-compressed file", "name it with .gz, which is read as the text inside"),
]
DOC_SPLITS = ("file", "page", "paragraph", "line")
# A page, as `doc_split` "page" cuts a text file: consecutive paragraphs up to about this many
# characters (a printed page). Many documents per book, so a validation split samples every book,
# with the paragraph breaks inside them, so the model learns to write paragraphs (a model trained
# on single paragraphs never sees a break: it ends the document instead, and a whole text scored
# after such training pays about 9 bits per break; docs/speedrun-log.md, 2026-12-01).
PAGE_CHARS = 2000
DEFAULT_TEXT_COLUMN = "text"
CLEANED_FORMAT = "banglaslm-clean/1"  # report.json's "format" in a folder `clean` wrote
CLEANED_SHARD = re.compile(r"\d{5}\.jsonl")  # the names of its shards (datatrove's task ranks)


@dataclass(frozen=True)
class Source:
    """One resolved input: a file path (with its kind) or a hub dataset name."""

    kind: str  # "text", "jsonl", "csv", "parquet" or "hf"
    location: str


def text_rate(n_bytes: int, seconds: float) -> str:
    """How fast normalized text went through, for a summary line: MB/s, or kB/s below 0.1 MB/s
    (a small input's rate is not "0.00 MB/s")."""
    per_s = n_bytes / max(seconds, 1e-9)
    return f"{per_s / 1e6:.2f} MB/s" if per_s >= 1e5 else f"{per_s / 1e3:.1f} kB/s"


def input_list(inputs) -> list[str]:
    """`inputs` as a list of strings: one path (str or Path) is a list of one (a string was read
    letter by letter, "/" first, which walked the whole disk); UserError for anything else."""
    if isinstance(inputs, (str, os.PathLike)):
        return [os.fspath(inputs)]
    if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, (str, os.PathLike)) for i in inputs):
        raise UserError(f"inputs must be a path or a list of paths (str or Path), e.g. [\"books/\"], "
                        f"got {type(inputs).__name__} {shown(inputs)}")
    return [os.fspath(i) for i in inputs]


def _check_hf_name(spec: str) -> None:
    """Refuse an `hf:` spec that names a file or a missing local folder before `datasets` looks
    for it on the hub (28 s of retries, then "Couldn't reach 'news.csv' on the Hub")."""
    name = spec.partition(":")[0]
    if not name:
        raise UserError("empty dataset name in 'hf:'; write hf:NAME or hf:NAME:CONFIG")
    if Path(name).is_file() and not name.endswith(".py"):  # a dataset script (datasets 2.x) is a dataset
        raise UserError(f"hf:{spec} names a file; 'hf:' is for a dataset (a hub name or a folder): pass {name} "
                        "without 'hf:' to read the file itself")
    if not Path(name).exists() and name in _builders():
        raise UserError(f"hf:{name} is `datasets`' {name} builder, which reads every matching file under the current "
                        f"folder ({Path.cwd()}) and below; give the files themselves (without 'hf:'), or their "
                        "folder as hf:./FOLDER")
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local and not Path(name).is_dir():
        fix = f"write {Path(name).expanduser()} (the shell does not expand ~ after 'hf:')" \
            if Path(name).expanduser().exists() else "check the path (a hub dataset is written hf:USER/NAME)"
        raise UserError(f"dataset folder not found: {name} (from hf:{spec}); {fix}")


def _builders() -> set[str]:
    """`datasets`' packaged builders (json, csv, parquet, text, ...), by name."""
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:  # another version: the ones a text corpus comes in
        return {"json", "csv", "parquet", "text", "arrow", "pandas"}
    return set(_PACKAGED_DATASETS_MODULES)


def resolve_inputs(inputs: list[str]) -> list[Source]:
    """Expand folders and globs, check every input exists; fail before any work is done.
    `inputs`: as `input_list` takes them."""
    inputs = input_list(inputs)
    if not inputs:
        raise UserError(f"no input given: pass {INPUTS_HELP}")
    sources: list[Source] = []
    for item in inputs:
        if item.startswith("hf:"):
            _check_hf_name(item[3:])
            sources.append(Source("hf", item[3:]))
            continue
        path = Path(item)
        if path.is_dir():
            files = _folder_files(path)
            if not files:
                raise UserError(f"folder {item} holds no .txt/.md/.jsonl/.json/.csv/.tsv/.parquet files (plain or "
                                ".gz/.bz2/.xz/.zst)")
            sources.extend(_file_source(p) for p in files)
        elif path.is_file():
            sources.append(_file_source(path))
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise UserError(f"no file matches {item}")
            sources.extend(_file_source(p) for p in matches)
        elif path.exists() or item == "-":  # a pipe (/dev/stdin fed by one), a socket, a device; "-" for stdin
            raise UserError(f"input {item} is {'standard input' if item == '-' else 'not a regular file (a pipe, socket or device)'}"
                            "; inputs are read from files: save the text to one first (... > corpus.txt) and pass "
                            "corpus.txt")
        elif path.is_symlink():
            raise UserError(f"input {item} is a broken symbolic link (to {os.readlink(path)}); point it at a file "
                            "that exists")
        elif "\n" in item or len(item) > 4096:  # text itself, given where a path goes
            raise UserError(f"input not found: {shown(item)} is text, not a path; write it to a .txt file and "
                            "pass that file's path")
        else:
            raise UserError(f"input not found: {item}")
    return _once(sources)


def _once(sources: list[Source]) -> list[Source]:
    """`sources` with a file named twice (a folder and a file in it, overlapping globs) read once,
    and a note saying so: read twice, its documents would silently weigh double."""
    seen: dict = {}
    for source in sources:
        seen.setdefault(source.location if source.kind == "hf" else Path(source.location).resolve(), source)
    if len(seen) < len(sources):
        repeated = Counter(sources) - Counter(seen.values())
        print(f"note: {len(sources) - len(seen)} input file(s) named more than once (e.g. "
              f"{next(iter(repeated)).location}) are read once", file=sys.stderr)
    return list(seen.values())


def _folder_files(folder: Path) -> list[Path]:
    """The files to read in `folder`, at any depth: text and table files, hidden ones (a name
    starting with ".") left out; of a folder `clean` wrote, its shards alone (not its report or
    removed/). Linked folders are followed and named in a note, each real folder read once; a
    link to a folder that holds the input folder (a loop, or "/") is not. A data or model folder
    inside is refused (`_refuse_tool_folder`); files skipped are named on stderr (`_say_unread`,
    and notes for hidden files and broken links)."""
    files, found, passed, hidden, broken, unusual, linked, visited = [], [], [], [], [], [], [], set()
    top = folder.resolve()
    for root, dirs, names in os.walk(folder, followlinks=True):
        here = Path(root)
        real = here.resolve()
        if real in visited or real in top.parents:  # read already, or the folder above the input (a loop)
            dirs[:] = []
            continue
        visited.add(real)
        linked += [here] if here != folder and here.is_symlink() else []
        _refuse_tool_folder(here)
        broken += [here / n for n in names if (here / n).is_symlink() and not os.path.exists(here / n)]  # or a loop
        names = [name for name in names if here / name not in broken]
        unusual += [here / n for n in names if not (here / n).is_file()]  # a pipe would block the read for ever
        names = [name for name in names if here / name not in unusual]
        hidden += [here / name for name in (*dirs, *names) if name.startswith(".")]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .git, .ipynb_checkpoints, ...
        names = [name for name in names if not name.startswith(".")]  # macOS's ._NAME, .DS_Store, ...
        if is_cleaned_folder(here):  # `banglaslm clean`'s output
            shards = sorted(p for p in here.glob("*.jsonl") if CLEANED_SHARD.fullmatch(p.name))
            if not shards:
                raise UserError(f"{here} was written by banglaslm clean, which kept none of its documents ({here / 'report.md'} "
                                "says which step removed them); loosen that step's thresholds and clean again")
            files += shards
            passed += [p for p in here.rglob("*") if p.is_file() and p not in shards and p.parent != here / "removed"
                       and p.name not in ("report.json", "report.md")]
            dirs[:] = []
            continue
        found += [here / name for name in names]
        files += [here / name for name in names if _format(here / name) in TEXT_SUFFIXES | TABLE_SUFFIXES]
    _say_unread(folder, found)
    note_not_read(broken, f"broken symbolic link(s) in {folder} are not read", "point them at files that exist")
    note_not_read(unusual, f"pipe(s), socket(s) or device(s) in {folder} are not read", "save their text to files")
    if linked:
        named = ", ".join(f"{p} -> {os.readlink(p)}" for p in sorted(linked)[:3]) + (", ..." if len(linked) > 3 else "")
        print(f"note: {len(linked)} linked folder(s) in {folder} are read too ({named})", file=sys.stderr)
    note_not_read(hidden, f"hidden file(s) or folder(s) in {folder} are not read", "pass one as an input of its own "
                   "to read it")
    note_not_read(passed, "file(s) added to a folder banglaslm clean wrote are not read", "only its shards are: "
                   "pass them as inputs of their own")
    return sorted(files)


def _refuse_tool_folder(folder: Path) -> None:
    """UserError for a folder of prepared tokens or of a model given as text: read as text, its
    metadata and logs (JSON, JSONL) would become documents."""
    if is_data_folder(folder):
        raise UserError(f"{folder} is a data folder (token shards that prepare wrote), not text or conversations; "
                        "give the text or conversation files themselves (not what prepare made of them), or pass it to "
                        "train as --data")
    if (folder / "config.json").is_file() and ((folder / "checkpoints").is_dir() or any(folder.glob("*.safetensors"))):
        raise UserError(f"{folder} is a model folder (a run or a Hugging Face export), not text or conversations; "
                        "give text or conversation files")
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        raise UserError(f"{folder} is a dataset saved with save_to_disk; pass it as hf:{folder}")


def note_not_read(paths: list[Path], what: str, advice: str) -> None:
    """One line on stderr: how many `paths`, the first three, `what` happened and `advice`."""
    if paths:
        named = ", ".join(str(p) for p in sorted(paths)[:3]) + (", ..." if len(paths) > 3 else "")
        print(f"note: {len(paths)} {what} ({named}); {advice}", file=sys.stderr)


def _say_unread(folder: Path, found: list[Path]) -> None:
    """One line on stderr naming the documents in `folder` that are skipped for not being text
    (a .docx among .txt files would otherwise vanish from the corpus unnoticed)."""
    unread = Counter(_format(p) for p in found if _format(p) in NOT_TEXT)
    if unread:
        kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(unread.items()))
        print(f"note: {folder} has files that are not text, not read ({kinds}); convert them to .txt to include "
              "them", file=sys.stderr)
    other = Counter(_format(p) or "without a suffix" for p in found  # (code beside a corpus is not its text)
                    if _format(p) not in {*NOT_TEXT, *TEXT_SUFFIXES, *TABLE_SUFFIXES, ".py", ".pyc"})
    if other:  # a .text, .srt or suffixless file may well be text: say so rather than drop it unseen
        kinds = ", ".join(f"{n} {suffix}" for suffix, n in sorted(other.items())[:6]) + (", ..." if len(other) > 6 else "")
        print(f"note: {folder} has files of other kinds, not read ({kinds}); pass one by name to read it as text, "
              "or rename it to .txt", file=sys.stderr)


def is_cleaned_folder(folder: Path) -> bool:
    """Whether `folder` was written by `banglaslm clean` (its report.json says so)."""
    try:
        return json.loads((folder / "report.json").read_text(encoding="utf-8")).get("format") == CLEANED_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_apart(inputs: list[str], sources: list[Source], out: Path, what: str) -> None:
    """UserError when the output folder `out` holds an input (it is replaced as a whole), or lies
    inside an input folder (the next run would read it, and its work files, as input)."""
    target = Path(out).resolve()
    for source in sources:
        if source.kind == "hf":
            continue
        path = Path(source.location).resolve()
        if path == target or target in path.parents:
            raise UserError(f"the output folder {out} holds the input {source.location}; write the {what} "
                            "somewhere else")
    for given in input_list(inputs):
        if not str(given).startswith("hf:") and Path(given).is_dir() and Path(given).resolve() in target.parents:
            raise UserError(f"the output folder {out} is inside the input folder {given}, so the next run would read "
                            f"it as input; write the {what} somewhere else")


def _format(path: Path) -> str:
    """The suffix that says what a file holds, under any compression suffix: news.jsonl.gz -> .jsonl."""
    return Path(path.stem).suffix.lower() if compression(path) else path.suffix.lower()


def _file_source(path: Path) -> Source:
    """A file input by its name; one whose content is not text, or whose name is not UTF-8, is
    refused with what to do."""
    _check_name_is_utf8(path)
    suffix = _format(path)
    if suffix in NOT_TEXT:
        name = suffix[1:].upper()
        article = "an" if name[0] in "AEFHILMNORSX" else "a"  # said letter by letter: an HTML, an XLSX, a PDF
        raise UserError(f"{path} is {article} {name} file, not text: {NOT_TEXT[suffix]}")
    if suffix == ".parquet" and compression(path):
        raise UserError(f"{path}: parquet files are compressed inside; pass the .parquet file itself")
    kind = suffix.lstrip(".") if suffix in TABLE_SUFFIXES else "text"
    return Source(kind, str(path))


def is_text_file(path: str | Path) -> bool:
    """Whether `path` is read as plain text (not a table) by its name; UserError for a file that
    is not text at all (a PDF, ...)."""
    return _file_source(Path(path)).kind == "text"


def _check_name_is_utf8(path: Path) -> None:
    """A file name in another encoding (Latin-1 "café" unpacked from an old zip) reaches Python
    as lone surrogates, which no UTF-8 record (meta.json, logs, reports) can hold: refused by
    name, shown with its odd bytes escaped."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise UserError(f"the file name '{shown}' is not UTF-8 (made on a system with another encoding, e.g. unpacked "
                        "from an old zip); rename it, e.g. convmv -f latin1 -t utf-8 --notest -r FOLDER") from None


def _check_doc_split(doc_split: str) -> None:
    if doc_split not in DOC_SPLITS:
        raise bad_param("doc_split", f"'{doc_split}' is unknown; choose one of {', '.join(DOC_SPLITS)}")


def iter_documents(sources: list[Source], text_column: str | None = None,
                   doc_split: str = "file") -> Iterator[str]:
    """Yield the raw (not yet normalized) text of every document, in input order."""
    _check_doc_split(doc_split)
    readers = {"text": lambda s: read_text_file(s, doc_split),
               "jsonl": lambda s: _read_records(_jsonl_rows(s), text_column),
               "json": lambda s: _read_records(_json_rows(s), text_column),
               "csv": lambda s: _read_csv(s, text_column), "tsv": lambda s: _read_csv(s, text_column, "\t"),
               "parquet": lambda s: _read_parquet(s, text_column), "hf": lambda s: _read_hf(s, text_column)}
    for source in sources:
        documents = readers[source.kind](source.location)
        if source.kind != "text":  # a text file is checked where its encoding is
            documents = _sample_checked(source.location, documents)
        yield from _decompressed(source, documents)


def iter_records(sources: list[Source], text_column: str | None = None,
                 doc_split: str = "file") -> Iterator[tuple[str, str, dict]]:
    """`iter_documents` with provenance: (raw text, where it came from, the row's other fields)
    for every document; `where` names the file and line or row (a text file: the file, and the
    number of the page, paragraph or line), the fields are {} for text files. Reads every column
    of a table, so it is for `clean`, which keeps them; `prepare` needs only the text."""
    _check_doc_split(doc_split)
    for source in sources:
        if source.kind == "text":
            texts = read_text_file(source.location, doc_split)
            items = ((text, source.location if doc_split == "file" else f"{source.location} {doc_split} {i}", {})
                     for i, text in enumerate(texts, 1))
        else:
            items = _sample_checked(source.location, _records_with_fields(iter_rows([source]), text_column),
                                    lambda record: record[0])
        yield from _decompressed(source, items)


def _records_with_fields(rows: Iterator[tuple[str, dict]], text_column: str | None) -> Iterator[tuple[str, str, dict]]:
    key: str | None = None
    for where, record in rows:
        key = key or _column(list(record), text_column, where)  # later rows may lack it (`_read_records`)
        yield _as_text(record.get(key), where), where, {k: _json_safe(v) for k, v in record.items() if k != key}


def _json_safe(value: object) -> object:
    """A table cell as JSON can hold it: as it is, or as its text (dates, bytes, decimals)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def _decompressed(source: Source, items: Iterator) -> Iterator:
    """`items`, with a damaged compressed file reported as a user error."""
    with decompressing(source.location):
        yield from items


TEXT_CHUNK = 1 << 23  # bytes of a text file read at a time when it is split into documents


def read_text_file(path: str, doc_split: str) -> Iterator[str]:
    """The documents of a text file: the whole file, its pages, its lines, or its paragraphs (split
    at lines that are blank or only look blank). UTF-8 with or without a byte-order mark, UTF-16/32 with
    one, compressed or not; any line-end convention. A PDF, Word file, ... is refused (`NOT_TEXT`).
    Split into pages, paragraphs or lines, a file streams through, TEXT_CHUNK bytes at a time."""
    if _file_source(Path(path)).kind != "text":  # a table read as prose would score its markup
        raise UserError(f"{path} is a {_format(Path(path))[1:].upper()} table, not plain text; write the text of "
                        "its documents to a .txt file first")
    if doc_split == "file":
        yield _whole_text(path)
        return
    pieces = split_stream(_decoded_chunks(path), "line" if doc_split == "line" else "paragraph")
    documents = (piece for piece in pieces if piece.strip())  # the gap a run of blank lines leaves is no document
    yield from pages(documents) if doc_split == "page" else documents


def _whole_text(path: str) -> str:
    data = read_bytes(path)
    encoding = _checked_encoding(path, data[:65536])
    try:
        return unify_line_breaks(data.decode(encoding))
    except UnicodeDecodeError as exc:
        raise UserError(_undecodable(Path(path), DecodeFailure.of(exc, len(data), encoding), encoding)) from None


def _checked_encoding(path: str, head: bytes) -> str:
    """The encoding of a text file that starts with `head`; UserError for one that is not text."""
    encoding = bom_encoding(head[:4])
    _refuse_not_text(path, head, encoding)
    _refuse_unreadable(path, head[:65536].decode(encoding, errors="ignore"))
    return encoding


def _refuse_not_text(path: str, head: bytes, encoding: str) -> None:
    """UserError for a file whose start `head` is not text: a known format's signature (MAGIC:
    a zip, a spreadsheet, a compressed file without its suffix), or NUL bytes in the first 64 KiB
    of what should be UTF-8: UTF-16 saved without its byte-order mark (named, with the
    conversion), else a binary file."""
    for magic, what, fix in MAGIC:
        if head.startswith(magic):
            raise UserError(f"{path} is {what}, not text: {fix}")
    if encoding == "utf-8" and b"\x00" in head[:65536]:
        if (order := _utf16_without_bom(head[:65536])) is not None:
            raise UserError(f"{path} looks like {order} text without a byte-order mark; convert it to UTF-8 first "
                            f"{_fix_command(Path(path), f'iconv -f {order} -t UTF-8', 'utf8')}")
        raise UserError(f"{path} looks like a binary file (it contains NUL bytes); pass UTF-8 text files")


def _check_table_start(path: str) -> None:
    """Before a table file (CSV, TSV, JSON, JSONL) is read: `_refuse_not_text` on its start
    (UTF-16 without a byte-order mark was told it was Windows-1252, or showed its column names
    with NULs)."""
    head = _head(Path(path))
    _refuse_not_text(path, head, bom_encoding(head[:4]))


def _refuse_question_marks(path: str, text: str) -> None:
    """UserError for text whose letters became "?": what saving Bangla in an encoding that cannot
    hold it does (Notepad's "ANSI"), which would train a model on question marks."""
    visible = sum(1 for ch in text if not ch.isspace())
    marks = text.count("?")
    if marks >= 50 and marks > 0.3 * visible:
        raise UserError(f"{path}: {marks / visible:.0%} of its characters are '?', as when Bangla text is saved in an "
                        "encoding that cannot hold it (Notepad's \"ANSI\", Excel's plain \"CSV\"); save the original "
                        "again as UTF-8 (Excel: \"CSV UTF-8\")")


LEGACY_E_KAR = "\u2021\u2020"  # '‡' and '†': how Bijoy/SutonnyMJ fonts spell the vowel sign ে
LEGACY_FONT_ADVICE = "convert it to Unicode Bangla with a Bijoy-to-Unicode converter first"


def looks_like_legacy_font(text: str) -> bool:
    """Whether `text` is Bangla typed in a legacy font encoding (Bijoy, SutonnyMJ): Latin-1
    letters drawn as Bangla glyphs, which a model would learn as Latin gibberish. Such text spells
    the vowel sign ে, several percent of any Bangla text, as '‡' or '†' typed before its consonant's
    letter (a footnote's dagger follows a word; biology's "†Archaeopteryx" is rarer), and the
    vowel sign া, the commonest of all (over 7% of the characters), as 'v' (about 1% of English)."""
    marks = len(_LEGACY_E_KAR.findall(text))
    visible = len(text) - sum(map(text.count, " \n\t"))
    return (marks >= 20 and marks >= 0.02 * visible and text.count("v") >= 0.04 * visible
            and len(_BANGLA_LETTER.findall(text)) < marks)


_BANGLA_LETTER = re.compile("[\u0980-\u09ff]")
_LEGACY_E_KAR = re.compile(f"[{LEGACY_E_KAR}][A-Za-z`_&]")
CHECKED_SAMPLE = 65536  # characters from the start of each input that `_refuse_unreadable` checks


def _refuse_legacy_font(where: str, text: str) -> None:
    if looks_like_legacy_font(text):
        raise UserError(f"{where} looks like Bangla typed in a legacy font encoding (Bijoy/SutonnyMJ: '‡' "
                        f"stands for the vowel sign ে); {LEGACY_FONT_ADVICE}")


def _refuse_unreadable(where: str, text: str) -> None:
    """UserError for the start of an input whose Bangla did not survive how it was saved: letters
    turned into '?' by an encoding without them, or typed in a legacy font encoding."""
    _refuse_question_marks(where, text)
    _refuse_legacy_font(where, text)


def _sample_checked(where: str, items: Iterator, text=lambda item: item) -> Iterator:
    """`items` (documents, or records whose text `text` gives) as they come, once their first
    CHECKED_SAMPLE characters are checked by `_refuse_unreadable` (a table's texts; a text
    file's start is checked where its encoding is)."""
    head, size = [], 0
    for item in items:
        if size < CHECKED_SAMPLE:
            head.append(text(item)[:CHECKED_SAMPLE])
            size += len(head[-1]) + 1
            if size >= CHECKED_SAMPLE:
                _refuse_unreadable(where, "\n".join(head))
        yield item
    if size < CHECKED_SAMPLE:
        _refuse_unreadable(where, "\n".join(head))


def _utf16_without_bom(head: bytes) -> str | None:
    """"UTF-16LE" or "UTF-16BE" when `head` decodes as that into text that is nearly all ASCII,
    Latin or Bangla (what Windows tools write when told "Unicode" without a mark); else None."""
    def plain(ch: str) -> bool:
        return " " <= ch <= "\u024f" or "\u0980" <= ch <= "\u09ff" or ch in "\n\r\t\u2018\u2019\u201c\u201d\u2013\u2014"

    for order in ("UTF-16LE", "UTF-16BE"):
        text = head[:len(head) // 2 * 2].decode(order, errors="replace")
        if text and sum(map(plain, text)) >= 0.95 * len(text):
            return order
    return None


def _decoded_chunks(path: str) -> Iterator[str]:
    """A text file's characters, TEXT_CHUNK bytes at a time, checked as `_whole_text` checks it."""
    with decompressing(path), open_binary(path) as fh:
        chunk = fh.read(max(TEXT_CHUNK, 1 << 16))  # enough to check what the file is
        decoder = codecs.getincrementaldecoder(_checked_encoding(path, chunk))()
        while True:
            try:
                yield decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError:
                _whole_text(path)  # raises the one-line error naming the byte and where it is in the file
                raise
            if not chunk:
                return
            chunk = fh.read(TEXT_CHUNK)


def read_whole_text(path: str | Path) -> str:
    """A text file as one document to score (`read_text_file` with doc_split "file"); UserError
    for a missing path or a folder."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass the text files in it (e.g. {path}/*.txt)")
    if not path.is_file():
        raise UserError(f"text file not found: {path}; check the path")
    return "\n\n".join(read_text_file(str(path), "file"))


@dataclass(frozen=True)
class DecodeFailure:
    """Where a file first fails to decode: the byte, its offset in the (decompressed) file, whether
    a multi-byte UTF-8 character came before it, whether the file ends inside a character, and
    (tables, whose rows are lines) where its line starts, so that cutting there drops a whole row."""
    byte: int
    offset: int
    after_multibyte: bool
    cut_off: bool
    line_start: int | None = None  # for a table: where the line holding the bad byte starts

    @classmethod
    def of(cls, exc: UnicodeDecodeError, end: int, encoding: str, seen_high: bool = False) -> DecodeFailure:
        """From `exc`, whose bytes (`exc.object`: what was fed, less a byte-order mark the codec
        skipped) end at offset `end` of the file; `seen_high`: bytes over 0x7f came before them."""
        data = exc.object
        high = seen_high or max(data[:exc.start], default=0) >= 0x80
        return cls(data[exc.start], end - len(data) + exc.start, encoding.startswith("utf-8") and high,
                   exc.end == len(data) and exc.reason == "unexpected end of data")


_DECOMPRESS_COMMANDS = {".gz": "gzip -dc", ".bz2": "bzip2 -dc", ".xz": "xz -dc", ".zst": "zstd -dc"}


# After a fix command: its output is a new file, and a folder given as input still holds the original.
IN_ITS_PLACE = ", then read the new file in place of the original, moving the original out of any input folder"


def _fix_command(path: Path, tool: str, tag: str, lead: str = "") -> str:
    """The fix as advice, "(COMMAND), then read the new file in place of ...": COMMAND runs `tool` over
    `path`'s text (decompressed first if it is compressed) into a new file beside it, named with
    `tag`: book.txt.gz → book.{tag}.txt. Paths as given, quoted: the command works from where the
    user ran banglaslm. `lead` goes before COMMAND inside the brackets ("e.g. ")."""
    kind = compression(path)
    plain = Path(path.name[:len(path.name) - len(kind)] if kind else path.name)
    given, out = shlex.quote(str(path)), shlex.quote(str(path.with_name(f"{plain.stem}.{tag}{plain.suffix}")))
    command = f"{_DECOMPRESS_COMMANDS[kind]} {given} | {tool} > {out}" if kind else f"{tool} {given} > {out}"
    return f"({lead}{command}){IN_ITS_PLACE}"


def _encoding_name(encoding: str) -> str:
    return encoding.upper().replace("-SIG", "")  # utf-8-sig: UTF-8 with a byte-order mark


def _undecodable(path: Path, failure: DecodeFailure, encoding: str) -> str:
    """What is wrong with a file that does not decode, and the fix: a UTF-8 file cut off inside a
    character, UTF-8 with damaged bytes (valid multi-byte characters before the bad one: legacy
    8-bit encodings rarely form those), or text saved in another encoding."""
    at = f"invalid byte 0x{failure.byte:02x} at offset {failure.offset}"
    if failure.after_multibyte and failure.cut_off:
        keep, what = (failure.offset, "end") if failure.line_start is None else (failure.line_start, "last line")
        return (f"{path} ends in the middle of a UTF-8 character (offset {failure.offset}): the file was cut off; "
                f"copy it whole again, or drop the broken {what} {_fix_command(path, f'head -c {keep}', 'fixed')}")
    if encoding in ("utf-16", "utf-32"):  # its byte-order mark says so: not another encoding, a damaged file
        return (f"{path} is marked {_encoding_name(encoding)} by its byte-order mark but does not decode as that ({at}): "
                f"it is cut off or damaged; re-export it, or keep what decodes "
                f"{_fix_command(path, f'iconv -c -f {encoding.upper()} -t UTF-8', 'utf8')}")
    if failure.after_multibyte:
        return (f"{path} is UTF-8 text with damaged bytes ({at}); repair or re-export it, or drop the bad bytes "
                f"{_fix_command(path, 'iconv -c -f UTF-8 -t UTF-8', 'fixed')}")
    if looks_like_legacy_font(_head(path).decode("windows-1252", errors="ignore")):
        return (f"{path} is Bangla typed in a legacy font encoding (Bijoy/SutonnyMJ), saved as Windows-1252 text "
                f"({at}); {LEGACY_FONT_ADVICE}")
    return (f"{path} is not {_encoding_name(encoding)} text ({at}); convert it to UTF-8 first, naming "
            f"the encoding it was saved in {_fix_command(path, 'iconv -f WINDOWS-1252 -t UTF-8', 'utf8', 'e.g. ')}")


def _head(path: Path) -> bytes:
    """The first CHECKED_SAMPLE bytes of a (possibly compressed) file."""
    with decompressing(path), open_binary(path) as fh:
        return fh.read(CHECKED_SAMPLE)


def undecodable_stream(path: str | Path) -> str:
    """`_undecodable`'s message for a file read as a stream (a table, line by line) that failed
    to decode: decodes it again in 1 MiB chunks to find the first bad byte's offset in the file,
    so a large file is never held whole."""
    encoding = text_encoding(path)
    decoder = codecs.getincrementaldecoder(encoding)()
    fed, seen_high, line_start = 0, False, 0
    with decompressing(path), open_binary(path) as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                failure = DecodeFailure.of(exc, fed + len(chunk), encoding, seen_high)
                before = chunk[:max(0, failure.offset - fed)].rfind(b"\n")
                line_start = fed + before + 1 if before >= 0 else line_start
                keep = line_start if _file_source(Path(path)).kind in ("jsonl", "csv", "tsv") else None
                return _undecodable(Path(path), dataclasses.replace(failure, line_start=keep), encoding)
            seen_high = seen_high or max(chunk, default=0) >= 0x80
            if (newline := chunk.rfind(b"\n")) >= 0:
                line_start = fed + newline + 1
            fed += len(chunk)
            if not chunk:
                return f"{path} is not {_encoding_name(encoding)} text; convert it to UTF-8 first"


def pages(paragraphs: list[str], max_chars: int = PAGE_CHARS) -> Iterator[str]:
    """Consecutive `paragraphs` joined by blank lines into pages whose paragraphs hold at most
    `max_chars` characters together (a longer paragraph is a page of its own)."""
    page: list[str] = []
    size = 0
    for paragraph in paragraphs:
        if page and size + len(paragraph) > max_chars:
            yield "\n\n".join(page)
            page, size = [], 0
        page.append(paragraph)
        size += len(paragraph)
    if page:
        yield "\n\n".join(page)


def _column(available: list[str], wanted: str | None, where: str) -> str:
    name = wanted or DEFAULT_TEXT_COLUMN
    if name not in available:
        names = [str(n) for n in available]
        same_but_case = [n for n in names if n.casefold() == name.casefold()]
        hint = same_but_case or difflib.get_close_matches(name, names, n=1)
        listed = ", ".join(f"'{n}'" if n else "an unnamed one" for n in names) or "none"
        advice = f"did you mean '{hint[0]}'? choose" if hint else "choose one"
        if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):  # a separator not recognized
            advice = ("its header was read as one column, because its first row does not split by the same separator "
                      "(';', a tab or '|') into as many fields; save the file with commas, or choose one")
        raise UserError(f"{where} has no column '{name}' (it has: {listed}); {advice} with `text_column`",
                        param="text_column")
    return name


# How spreadsheets and pandas write a missing cell as text: a cell holding exactly one of these
# is missing (an empty document, counted and skipped), not a document that says "NaN".
MISSING_CELLS = frozenset({"NaN", "nan", "NA", "N/A", "n/a", "#N/A", "<NA>", "NULL", "null", "None"})


def _as_text(value: object, where: str) -> str:
    """A table cell's text ("" for None, NaN or a MISSING_CELLS spelling); UserError for a cell that
    holds no text, or holds a lone surrogate (`whole_characters`)."""
    if value is None or (isinstance(value, str) and value.strip() in MISSING_CELLS) or \
            (isinstance(value, float) and math.isnan(value)):  # json.dump of a DataFrame's records writes NaN
        return ""
    if not isinstance(value, str):
        raise UserError(f"{where}: the text column holds {type(value).__name__}, not text; pick another with "
                        "`text_column`", param="text_column")
    return whole_characters(value, where)


def whole_characters(text: str, where: str) -> str:
    """`text`, unless it holds a lone surrogate (a JSON "\\ud800" escape: half of a character,
    such as a cut emoji), which no UTF-8 file or tokenizer can take: then a UserError naming it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{where}: the text holds a lone surrogate (U+{ord(text[exc.start]):04X}, half of a character "
                        f"such as a cut emoji, from a \\u escape) at character {exc.start}; remove or repair that "
                        "escape") from None
    return text


def iter_rows(sources: list[Source]) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) for every record of the table inputs (`where` names the file and
    line, or row, for error messages); a plain text file is refused."""
    readers = {"jsonl": _jsonl_rows, "json": _json_rows, "csv": _csv_rows,
               "tsv": lambda path: _csv_rows(path, delimiter="\t"), "parquet": _parquet_rows, "hf": _hf_rows}
    for source in sources:
        if source.kind not in readers:
            raise UserError(f"{source.location} is a text file; records come as .jsonl, .json, .csv, .tsv or "
                            ".parquet rows or hf:NAME")
        yield from _decompressed(source, readers[source.kind](source.location))


def _read_records(rows: Iterator[tuple[str, dict]], text_column: str | None) -> Iterator[str]:
    """Each row's text. The first row must have the column; a later row without it is a missing
    cell (an empty document, counted), as a null there is: rows of JSON need not share keys."""
    key: str | None = None
    for where, record in rows:
        key = key or _column(list(record), text_column, where)
        yield _as_text(record.get(key), where)


# What a JSON row looks like, for text to train on and for a conversation to fine-tune on.
ROW_SHAPES = '{"text": ...} (a document) or {"messages": [{"role": "user", "content": ...}, ...]} (a conversation)'


def _jsonl_rows(path: str) -> Iterator[tuple[str, dict]]:
    _check_table_start(path)
    with open_text(path) as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    # files joined with `cat` keep each one's BOM; without its line end, a cut-off line's
                    # error is placed on it (json placed it at column 1 of the line after)
                    record = json.loads(line.lstrip("\ufeff").rstrip("\r\n"))
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno} is not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno}); each line must "
                                    "be one JSON object") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path}:{lineno} is not a JSON object; each line must be one, such as "
                                    f"{ROW_SHAPES}")
                yield f"{path}:{lineno}", record
        except UnicodeDecodeError:
            raise UserError(undecodable_stream(path)) from None


def _json_rows(path: str) -> Iterator[tuple[str, dict]]:
    """The records of a .json file: a list of objects, one object, or (as `datasets` also
    reads a .json file) one object per line."""
    _check_table_start(path)
    try:
        with open_text(path) as fh:
            text = fh.read()
    except UnicodeDecodeError:
        raise UserError(undecodable_stream(path)) from None
    if not text.strip():  # an empty file: no rows (as an empty JSONL has none)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines under a .json name
            yield from _jsonl_rows(path)
            return
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); a .json input holds a list "
                        "of objects or one object per line") from None
    records = data if isinstance(data, list) else [data]
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise UserError(f"{path} item {i} is not a JSON object; a .json input is a list of them, such as "
                            f"{ROW_SHAPES}")
        yield f"{path} item {i}", record


def _read_csv(path: str, text_column: str | None, delimiter: str = ",") -> Iterator[str]:
    columns: list[str] = []
    on_header = lambda names: columns.append(_column(names, text_column, path))
    for where, row in _csv_rows(path, on_header, delimiter):
        if row.get(columns[0]) is None:  # fewer fields, the text's missing: most often a line break left unquoted
            have = sum(value is not None for value in row.values())
            raise _bad_csv(path, delimiter, f"{where} has {have} field(s) but the header has {len(row)}, and none "
                                            f"for '{columns[0]}'")
        yield _as_text(row.get(columns[0]), where)


def _csv_rows(path: str, on_header=None, delimiter: str = ",") -> Iterator[tuple[str, dict]]:
    """The rows of a CSV (or, with a tab `delimiter`, TSV) file; `on_header` sees the column
    names first (even with no rows). An empty file has neither. A .csv whose header and first
    row split alike by semicolons (tabs, bars) and hold no comma is read with those, as
    spreadsheets in many locales write it. A row with more (non-empty) fields than the header,
    or a quote left open, is a UserError (`_bad_csv`): the text would run into a nameless column
    or the next rows. (A row with fewer, which `_read_csv` refuses when they leave out the text,
    is most often the rest of a line break left unquoted.)"""
    csv.field_size_limit(sys.maxsize)  # news articles easily exceed the 128 KiB default
    reader, ended = None, 0
    _check_table_start(path)
    try:
        delimiter = _sniffed_delimiter(path, delimiter)
        quoting = _tsv_quoting(path) if delimiter == "\t" else csv.QUOTE_MINIMAL
        with open_text(path, newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter, quoting=quoting, strict=True)
            if reader.fieldnames is None:  # an empty file: no header, no rows (as an empty JSONL has none)
                return
            if not any(name.strip() for name in reader.fieldnames):
                raise UserError(f"the first line of {path} is empty; it must name the columns (e.g. text)")
            _check_unique_columns(list(reader.fieldnames), path)
            if on_header is not None:
                on_header(list(reader.fieldnames))
            ended = reader.line_num
            for number, row in enumerate(reader, 1):  # a quoted field may span lines: name the row
                where, ended = f"{path} row {number} (ending on line {reader.line_num})", reader.line_num
                extra = row.pop(None, [])
                if any((field or "").strip() for field in extra):  # empty ones: a trailing separator
                    raise _bad_csv(path, delimiter, f"{where} has {len(reader.fieldnames) + len(extra)} fields but the "
                                                    f"header has {len(reader.fieldnames)}")
                yield where, row
    except UnicodeDecodeError:
        raise UserError(undecodable_stream(path)) from None
    except csv.Error as exc:
        raise _bad_csv(path, delimiter, f"{path} is not readable ({exc}, in the row starting on line {ended + 1})") \
            from None


def _bad_csv(path: str, delimiter: str, problem: str) -> UserError:
    """`problem`, with what a CSV/TSV file's quoting rules ask."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    return UserError(f"{problem}; in a {kind} file a field that holds {delimiter!r}, a quote or a line break is "
                     f"quoted (\"...\", a quote inside doubled: \"\"), and a quoted field ends in a quote")


def _tsv_quoting(path: str) -> int:
    """How to read a tab-separated file: with CSV quoting (what spreadsheets and pandas write)
    when the whole file reads that way, else as plain TSV, where a quote is text and no field
    holds a tab or line break (what hand-made files and most databases write: a text that
    starts with a quotation), said in a note. When neither reads, CSV quoting, whose error
    names the row."""
    if _reads_whole(path, csv.QUOTE_MINIMAL) or not _reads_whole(path, csv.QUOTE_NONE):
        return csv.QUOTE_MINIMAL
    print(f"note: {path} has a field that starts with a quote and is not a quoted field; it is read as plain "
          "TSV: quotes are text, and every line is a row", file=sys.stderr)
    return csv.QUOTE_NONE


def _reads_whole(path: str, quoting: int) -> bool:
    """Whether every row of the tab-separated `path` parses with `quoting` and has no
    non-empty field beyond the header's."""
    with open_text(path, newline="") as fh:
        rows = csv.reader(fh, delimiter="\t", quoting=quoting, strict=True)
        try:
            width = len(next(rows, []))
            return all(not any(field.strip() for field in row[width:]) for row in rows)
        except csv.Error:
            return False


def _first_records(path: str, delimiter: str) -> tuple[list[str], list[str]]:
    """The header's fields and the first row's (empty when there is none or it does not parse)."""
    with open_text(path, newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            return next(reader, []), next(reader, [])
        except csv.Error:
            return [], []


def _sniffed_delimiter(path: str, delimiter: str) -> str:
    """`delimiter`, or ";", a tab or "|" when the header holds no comma and it and the first
    row split by one of those into the same two or more fields (empty trailing ones aside: a
    row may end in a separator, as the reader allows). The first row is a record, not a line:
    a news cell's quoted paragraphs span lines."""
    if delimiter != ",":
        return delimiter
    with open_text(path, newline="") as fh:
        header = fh.readline(1 << 16)
    if "," in header:
        return delimiter
    for candidate in (c for c in (";", "\t", "|") if c in header):  # a row is read only for a likely one
        names, row = _first_records(path, candidate)
        ends_in_separator = len(row) == len(names) + 1 and not row[-1].strip()
        if len(names) >= 2 and (len(row) in (0, len(names)) or ends_in_separator):
            return candidate
    return delimiter


def _parquet_file(path: str):
    import pyarrow.parquet as pq  # installed with `datasets`

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise UserError(f"{path} is not a readable parquet file ({exc})") from None
    _check_unique_columns(pf.schema_arrow.names, path)
    return pf


def _check_unique_columns(names: list[str], where: str) -> None:
    """UserError for a table that names a column twice: read as records, a row keeps one of
    them (a CSV the last, a parquet file the first or the last), and which holds the text is a guess."""
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        listed = ", ".join(f"'{n}'" for n in twice)
        raise UserError(f"{where} names the column{'s' if len(twice) > 1 else ''} {listed} more than once; rename them "
                        "so that each column has its own name")


def _read_parquet(path: str, text_column: str | None) -> Iterator[str]:
    if Path(path).stat().st_size == 0:  # an empty file: no rows (as an empty JSONL has none)
        return
    pf = _parquet_file(path)
    key = _column(pf.schema_arrow.names, text_column, path)
    for batch in pf.iter_batches(columns=[key], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield _as_text(value, path)


def _parquet_rows(path: str) -> Iterator[tuple[str, dict]]:
    if Path(path).stat().st_size == 0:
        return
    row = 0
    for batch in _parquet_file(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield f"{path} row {row}", record


def hf_parts(spec: str, named: bool = False) -> tuple[str, str | None, str | None]:
    """`NAME[:CONFIG[:SPLIT]]` as (name, config or None, split; "train" when not given, or None
    where `named`, for a caller that must know whether one was)."""
    name, config, split = (spec.split(":", 2) + ["", ""])[:3]
    return name, config or None, split or (None if named else "train")


# The data-file kinds `datasets` builds a folder from, by suffix (compressed ones too): it reads
# one kind, the most common, and passes over the rest without a word.
_HF_KINDS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
             ".txt": "text", ".arrow": "arrow"}
_HF_METADATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}  # not data
_said_splits: set[str] = set()


def _hf_dataset(spec: str):
    """`NAME[:CONFIG[:SPLIT]]` through `datasets`, streamed (the "train" split unless SPLIT; a
    note names the splits not read); a local folder of data files works too, and one that
    `Dataset.save_to_disk` wrote."""
    import datasets

    name, config, named = hf_parts(spec, named=True)
    split, folder = named or "train", Path(name)
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        if config:
            raise UserError(f"hf:{spec}: a dataset saved with save_to_disk has no configs; name a split as "
                            f"hf:{name}::SPLIT")
        return _saved_dataset(folder, spec, split, named=named is not None)
    if folder.is_dir():
        _refuse_mixed_kinds(folder, spec)
    try:
        every = datasets.load_dataset(name, config, streaming=True)
        if split not in every and re.fullmatch(r"[\w.-]+", split):
            raise UserError(f"dataset hf:{spec} has no split '{split}' (it has: {', '.join(every)}); name one as "
                            f"hf:{name}:{config or ''}:SPLIT")
        dataset = every[split] if split in every else datasets.load_dataset(name, config, split=split, streaming=True)
    except UserError:
        raise
    except Exception as exc:  # network, missing dataset, bad config: all user-fixable
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        check = "the folder's files" if folder.is_dir() else "the name, CONFIG and your connection"
        raise UserError(f"could not load dataset '{spec}' ({first}); check {check}") from None
    read = {part.split("[")[0].strip() for part in split.split("+")}  # "train+test", "train[:10%]"
    _say_other_splits(spec, [s for s in every if s not in read], f"hf:{name}:{config or ''}:SPLIT")
    return dataset


def _say_other_splits(spec: str, others: list[str], how: str) -> None:
    """A note, once, that the dataset's `others` splits are not read."""
    if others and spec not in _said_splits:
        _said_splits.add(spec)
        print(f"note: hf:{spec} reads the split '{hf_parts(spec)[2]}'; its other splits ({', '.join(others)}) are "
              f"not read: give each as another input, {how}", file=sys.stderr)


def _refuse_mixed_kinds(folder: Path, spec: str) -> None:
    kinds = {}
    for path in folder.rglob("*"):
        suffixes = [s for s in path.suffixes if s.lower() not in COMPRESSIONS]
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts) and suffixes \
                and path.name not in _HF_METADATA:
            kinds.setdefault(_HF_KINDS.get(suffixes[-1].lower()), path.name)
    kinds.pop(None, None)
    if len(kinds) > 1:
        named = ", ".join(f"{kind} ({example})" for kind, example in sorted(kinds.items()))
        raise UserError(f"hf:{spec} holds data files of several kinds: {named}; `datasets` would read only one kind "
                        f"and pass over the rest: give the folder without 'hf:' (banglaslm reads every file in it)")


def _saved_dataset(folder: Path, spec: str, split: str = "train", named: bool = False):
    """The rows of a dataset `save_to_disk` wrote into `folder` (read through memory-mapped Arrow);
    `named`: the split was named in `spec` (a saved Dataset, which has none, is then refused)."""
    import datasets

    try:
        saved = datasets.load_from_disk(str(folder))
    except Exception as exc:
        raise UserError(f"could not read the saved dataset '{spec}' ({str(exc).splitlines()[0]}); save it again "
                        "with save_to_disk") from None
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise UserError(f"hf:{spec} holds the splits {', '.join(saved)} and no '{split}'; name one as "
                            f"hf:{folder}::SPLIT")
        _say_other_splits(spec, [s for s in saved if s != split], f"hf:{folder}::SPLIT")
        saved = saved[split]
    elif named:
        raise UserError(f"hf:{spec}: the dataset saved in {folder} has no splits (save_to_disk of a Dataset); "
                        f"drop '::{split}' and pass hf:{folder}")
    return saved


def _read_hf(spec: str, text_column: str | None) -> Iterator[str]:
    key: str | None = None
    for where, row in _hf_rows(spec):
        key = key or _column(list(row), text_column, f"dataset {spec}")
        yield _as_text(row[key], where)


def _hf_rows(spec: str) -> Iterator[tuple[str, dict]]:
    """The dataset's rows; an error while streaming them (a damaged file) is one line."""
    rows, i = iter(_hf_dataset(spec)), 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # datasets' and pyarrow's errors for a file it cannot parse
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserError(f"could not read dataset '{spec}' ({first}; {i:,} rows read); check its files") from None
        i += 1
        yield f"dataset {spec} row {i}", row
