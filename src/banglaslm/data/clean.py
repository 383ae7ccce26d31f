"""Clean a corpus before `prepare`: drop copies, near-copies, non-Bangla text and junk.

A small model learns what it sees most; a paragraph that appears fifty times, a cookie notice
or a page of numbers costs capacity and teaches nothing. The rules are the ones large web
corpora use (Gopher's quality and repetition rules, MinHash near-deduplication), run through
datatrove's own steps, with FineWeb-2's thresholds for Bangla (ben_Beng) as the defaults. Every
rule sees the text after `banglaslm.text.normalize`, as the model will, and so do the word
lists: FineWeb-2's stop words are normalized too, or their nukta letters would never match.

Exact deduplication uses datatrove's exact-dedup steps (a 64-bit xxhash of the normalized
text), with the earliest shard given the highest priority, so of identical documents the first
in input order is kept. MinHash keeps one document of each cluster, usually the first.
Datatrove's word tokenizer for Bangla is Indic NLP's (an extra package); a light tokenizer of
our own, splitting on spaces and punctuation (danda included), takes its place.
"""

from __future__ import annotations

import heapq
import json
import math
import shutil
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated

import regex
from datatrove.data import Document
from datatrove.pipeline.dedup import (
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig
from datatrove.utils.word_tokenizers import WordTokenizer, simple_span_tokenize

from ..config import Opt, checked_arguments, option
from ..errors import UserError, bad_param
from ..fileio import (
    as_path,
    atomic_write_json,
    atomic_write_text,
    json_line,
    staged_folder,
)
from ..text import normalize
from .sources import (
    CLEANED_FORMAT,
    DEFAULT_TEXT_COLUMN,
    DOC_SPLITS,
    check_apart,
    is_cleaned_folder,
    iter_records,
    resolve_inputs,
    text_rate,
)
from .tasks import exit_if_reimported, run_tasks

BENGALI_BLOCK = ("\u0980", "\u09ff")
EXAMPLE_CHARS = 300                   # an example in the report is cut to this many characters
FILTER_STEPS = ("script", "gopher_quality", "gopher_repetition")
DEDUP_STEPS = ("exact_dedup", "near_dedup")

# FineWeb-2's Bangla stop words (configs/ben_Beng.yml in github.com/huggingface/fineweb-2),
# as written there; `stop_words()` normalizes them (হয় arrives as য + nukta, our text has য়).
FINEWEB2_BEN_STOP_WORDS = ("\u098f\u09ac\u0982", "\u0993", "\u09b9\u09af\u09bc", "\u0995\u09b0\u09c7",
                           "\u098f\u0995\u099f\u09bf", "\u09a4\u09bf\u09a8\u09bf", "\u0995\u09b0\u09be",
                           "\u09a5\u09c7\u0995\u09c7")


@dataclass
class CleanOptions:
    """Every threshold of `clean`, with its default; each field is also a command-line flag.

    Sources of the defaults: FineWeb-2's ben_Beng config (configs/ben_Beng.yml) and the way its
    pipeline applies it (fineweb-2-pipeline.py, github.com/huggingface/fineweb-2): min/max
    average word length 4/24, alphabetic-word share 0.8, 2 stop words, duplicate-line share
    0.165, the top and duplicated n-gram shares below; the paragraph and character-share
    repetition rules are off there as here. The other Gopher rules keep datatrove's (Gopher's)
    defaults, which FineWeb-2 kept: 50-100,000 words, 0.1 hash/ellipsis per word, 90% bullet
    lines, 30% lines ending in an ellipsis. FineWeb-2's language-ID score (0.872) has no
    counterpart here; the script share stands in for it."""
    min_bangla_share: float = option(0.8, "least share of Bengali-block letters and signs (U+0980-U+09FF) among all "
                                                    "letters and Bangla signs (vowel signs, hasanta)")
    min_words: int = option(50, "fewest words a document may have (50 suits web pages; lower it for paragraphs)")
    max_words: int = option(100_000, "most words a document may have")
    min_avg_word_length: float = option(4.0, "least mean word length in characters")
    max_avg_word_length: float = option(24.0, "largest mean word length in characters; 0 turns the rule off")
    max_symbol_word_ratio: float = option(0.1, "most '#' or ellipses per word; 0 turns the rule off")
    max_bullet_lines_ratio: float = option(0.9, "largest share of lines starting with a bullet; 0 turns the rule off")
    max_ellipsis_lines_ratio: float = option(0.3, "largest share of lines ending with an ellipsis; 0 turns the rule off")
    min_alpha_words_ratio: float = option(0.8, "least share of words with a letter in them")
    min_stop_words: int = option(2, "fewest distinct stop words (FineWeb-2's Bangla list) a document must have")
    dup_line_frac: float = option(0.165, "largest share of lines that repeat an earlier line; 0 turns the rule off")
    top_ngrams: str = option("2:0.084,3:0.103,4:0.134",
                             "N:SHARE,...: largest share of characters in the most frequent word N-gram")
    dup_ngrams: str = option("5:0.099,6:0.083,7:0.069,8:0.058,9:0.048,10:0.04",
                             "N:SHARE,...: largest share of characters in repeated word N-grams")
    exact_dedup: bool = option(True, "drop documents identical (after normalization) to an earlier one")
    near_dedup: bool = option(True, "drop near-duplicates (MinHash) of an earlier document")
    # MinHash on normalized Bangla: word 3-grams, 48 bands of 4 hashes. Bangla attaches case
    # endings and postpositions to the word (বাড়িতে, তাঁহার), so a word carries more than an
    # English one and 3-grams are about as specific as FineWeb's 5-grams, while a paragraph of
    # 20 words still has 18 shingles and one edited word breaks 3 of them, not 5. The bands put
    # the 50% detection point near Jaccard 0.38 ((1/48)^(1/4)): a pair at 0.5 is found 95% of
    # the time, at 0.6 99.9%, at 0.25 17% (1-(1-s^4)^48). 32 bands missed one planted near copy
    # in two of three seeds of benchmarks/clean_quality.py (a short paragraph with 3 edits); 48
    # found all in each, with no more original paragraphs removed; 64 began to remove originals.
    # datatrove's MinHash does not check the Jaccard of a candidate pair, so the curve is the
    # whole decision.
    minhash_ngrams: int = option(3, "words per MinHash shingle")
    minhash_bands: int = option(48, "MinHash bands (buckets)")
    minhash_rows: int = option(4, "MinHash hashes per band")

    @classmethod
    def preset(cls, name: str, **given) -> "CleanOptions":
        """The thresholds of preset `name` (CLEAN_PRESETS), `given` ones replacing its values."""
        if name not in CLEAN_PRESETS:
            raise bad_param("preset", f"is {name!r}; choose one of {', '.join(CLEAN_PRESETS)}")
        return cls(**{**CLEAN_PRESETS[name], **given})

    def validate(self) -> None:
        shares = ("min_bangla_share", "max_bullet_lines_ratio", "max_ellipsis_lines_ratio", "min_alpha_words_ratio",
                  "dup_line_frac")
        for name in shares:
            if not 0 <= getattr(self, name) <= 1:
                raise bad_param(name, f"must be between 0 and 1, got {getattr(self, name)}")
        for name in ("min_words", "max_words", "min_stop_words", "minhash_ngrams", "minhash_bands", "minhash_rows"):
            if getattr(self, name) < (1 if name.startswith("minhash") else 0):
                raise bad_param(name, f"must be {'at least 1' if name.startswith('minhash') else '>= 0'}, "
                                      f"got {getattr(self, name)}")
        for name, value in vars(self).items():
            if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
                raise bad_param(name, f"must be a finite number >= 0, got {value}")
        if self.min_words > self.max_words:
            raise bad_param("min_words", f"({self.min_words}) must not exceed `max_words` ({self.max_words})")
        parse_ngram_shares(self.top_ngrams, "top_ngrams")
        parse_ngram_shares(self.dup_ngrams, "dup_ngrams")



# Presets (`clean --preset`, `prepare --clean-preset`): values that replace CleanOptions'
# defaults, flags given still winning. "web": FineWeb-2's, for web pages. "literature": books
# and their paragraphs or pages, where FineWeb-2's web-page rules remove good text: 10 words
# make a document; literary (sadhu bhasha) prose uses few of its modern stop words and many
# short words (a mean under 4 characters); datatrove's top-n-gram rule counts an n-gram seen
# once, so in a 20-word paragraph any 2-gram is over 8% of it; and verse repeats its refrains and
# the books' fence lines (a page of a song over 16.5% repeated lines). benchmarks/clean_quality.py
# measures it on planted copies and junk (BENCHMARKS.md, "Cleaning").
CLEAN_PRESETS: dict[str, dict] = {
    "web": {},
    "literature": {"min_words": 10, "min_stop_words": 0, "min_avg_word_length": 3.0, "top_ngrams": "",
                   "dup_line_frac": 0.3},
}
PRESET_HELP = ("thresholds for the text: web (FineWeb-2's, for web pages) or literature (books, paragraphs, "
               "verse: fewer words, no stop words, shorter words, repeated lines); flags given override it")


def parse_ngram_shares(spec: str, name: str) -> tuple[tuple[int, float], ...]:
    """"2:0.084,3:0.103" -> ((2, 0.084), (3, 0.103)); "" -> () (the rule off)."""
    out = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        n, _, share = item.partition(":")
        try:
            pair = int(n), float(share)
        except ValueError:
            pair = (0, -1.0)
        if pair[0] < 1 or not 0 <= pair[1] <= 1:
            raise bad_param(name, f"must be N:SHARE pairs separated by commas (e.g. 2:0.084,3:0.103), got '{item}'")
        out.append(pair)
    return tuple(out)


def stop_words() -> list[str]:
    """FineWeb-2's Bangla stop words in our normalization."""
    return sorted({normalize(word) for word in FINEWEB2_BEN_STOP_WORDS})


# ---- the per-document steps ----------------------------------------------------------------
_WORD = regex.compile(r"[^\s\p{P}\p{S}]+(?:-[^\s\p{P}\p{S}]+)*")
_SENTENCE = regex.compile(r"[^।॥?!.\n]*(?:[।॥?!.]+|\n|$)")


class BanglaWordTokenizer(WordTokenizer):
    """A word is a run of anything but spaces, punctuation and symbols (so vowel signs, hasanta
    and joiners stay inside it), hyphenated compounds (লম্বা-লম্বা) whole. Punctuation (danda
    । and ॥ too) is no word: the Gopher rules then count words as a reader does, and a danda
    after every short Bangla sentence does not push prose under the alphabetic-word share."""

    def __init__(self):
        super().__init__("ben")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return list(simple_span_tokenize(text, self.sent_tokenize(text)))


def _bangla_sign(c: str) -> bool:
    """A combining sign of the Bengali block (a vowel sign, hasanta, chandrabindu); other scripts'
    signs (an emoji's variation selector) are not letters of any script."""
    return BENGALI_BLOCK[0] <= c <= BENGALI_BLOCK[1] and unicodedata.category(c)[0] == "M"


class BanglaScriptFilter(BaseFilter):
    """Keep a document when at least `min_share` of its letters and Bangla signs are in the
    Bengali block. The signs count: Bangla writes its vowel signs and hasanta as combining marks,
    which `str.isalpha` leaves out, so counting letters alone weighed a Latin letter against a
    Bangla syllable's consonant only (a page of verse with one Markdown image tag fell under 0.8)."""
    name = "Bangla script share"

    def __init__(self, min_share: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_share = min_share

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        letters = [c for c in doc.text if c.isalpha() or _bangla_sign(c)]
        bangla = sum(BENGALI_BLOCK[0] <= c <= BENGALI_BLOCK[1] for c in letters)
        if not letters:
            return False, "no_letters"
        return (True if bangla / len(letters) >= self.min_share else (False, "low_bangla_share"))


def document_filters(options: CleanOptions, removed: Callable[[str], object] | None = None) -> list[BaseFilter]:
    """The per-document steps (script share, Gopher quality, Gopher repetition) for documents
    whose `.text` is normalized; `removed(step)` gives each one's exclusion writer."""
    writer = removed or (lambda step: None)
    words = BanglaWordTokenizer()
    o = options
    return [
        BanglaScriptFilter(o.min_bangla_share, exclusion_writer=writer("script")),
        GopherQualityFilter(
            min_doc_words=o.min_words, max_doc_words=o.max_words, min_avg_word_length=o.min_avg_word_length,
            max_avg_word_length=o.max_avg_word_length, max_symbol_word_ratio=o.max_symbol_word_ratio,
            max_bullet_lines_ratio=o.max_bullet_lines_ratio, max_ellipsis_lines_ratio=o.max_ellipsis_lines_ratio,
            max_non_alpha_words_ratio=o.min_alpha_words_ratio, min_stop_words=o.min_stop_words,
            stop_words=stop_words(), exclusion_writer=writer("gopher_quality"), language=words),
        GopherRepetitionFilter(
            dup_line_frac=o.dup_line_frac, dup_para_frac=0, dup_line_char_frac=0, dup_para_char_frac=0,
            top_n_grams=parse_ngram_shares(o.top_ngrams, "top_ngrams"),
            dup_n_grams=parse_ngram_shares(o.dup_ngrams, "dup_ngrams"),
            exclusion_writer=writer("gopher_repetition"), language=words),
    ]


# ---- the dedup stages ----------------------------------------------------------------------
def doc_bytes(doc: Document) -> bytes:
    # Bytes, not str: datatrove picks its hash function from this return annotation, which
    # `from __future__ import annotations` turns into a string it does not recognize.
    return doc.text.encode("utf-8")


def shard_priority(doc: Document) -> int:
    """Earlier shards win among identical documents (datatrove keeps the highest priority, then
    the lowest index within a shard)."""
    return 65535 - min(int(doc.metadata.get("shard", 0)), 65534)


def minhash_config(options: CleanOptions) -> MinhashConfig:
    # SHA-1, not datatrove's default xxhash: its xxhash wrapper passes the shingle as str, which
    # xxhash 4 refuses ("Strings must be encoded before hashing").
    # datatrove's default text simplification strips combining marks (NFD, then every Mn):
    # for Bangla that erases hasanta, nukta and the vowel signs ু ূ ৃ, so কুল and কল would
    # shingle alike. Keep them; the rest (case, digits, spacing, punctuation) stays on.
    return MinhashConfig(n_grams=options.minhash_ngrams, num_buckets=options.minhash_bands,
                         hashes_per_bucket=options.minhash_rows, hash_config=HashConfig(precision=64, hash_fc="sha1"),
                         norm_config=TextNormConfig(norm_unicode_diacritics=False))


@dataclass
class Stage:
    """One datatrove run: its pipeline, how many tasks it takes, and the folder of shards it
    reads (None: it reads no documents)."""
    name: str
    pipeline: list
    tasks: int
    reads: Path | None = None


def dedup_stages(options: CleanOptions, source: Path, work: Path, output: Callable[[Path], object],
                 removed: Callable[[str], object], tasks: int) -> list[Stage]:
    """The exact and MinHash stages, reading the JSONL shards in `source` with `tasks` tasks
    (each stage that reads them must use the same count) and writing the kept documents with
    `output(folder)`; the removed go to `removed(step)`."""
    stages, current = [], source
    if options.exact_dedup:
        sigs, dups = str(work / "exact_sigs"), str(work / "exact_dups")
        config = ExactDedupConfig(content_getter=doc_bytes, document_priority=shard_priority,
                                  hash_config=HashConfig(precision=64, hash_fc="xxhash"))
        after = work / "after_exact" if options.near_dedup else None
        stages += [
            Stage("exact signatures", [_reader(current), ExactDedupSignature(sigs, config)], tasks, current),
            Stage("exact duplicates", [ExactFindDedups(sigs, dups, config)], 1),
            Stage("exact filter", [_reader(current), ExactDedupFilter(dups, config, removed("exact_dedup")),
                                   output(after) if after else output(None)], tasks, current)]
        current = after
    if options.near_dedup:
        config = minhash_config(options)
        sigs, buckets, ids = (str(work / name) for name in ("minhash_sigs", "minhash_buckets", "minhash_remove"))
        stages += [
            Stage("minhash signatures", [_reader(current), MinhashDedupSignature(
                sigs, config, language=BanglaWordTokenizer())], tasks, current),
            Stage("minhash buckets", [MinhashDedupBuckets(sigs, buckets, config=config)], options.minhash_bands),
            Stage("minhash clusters", [MinhashDedupCluster(buckets, ids, config=config)], 1),
            Stage("minhash filter", [_reader(current), MinhashDedupFilter(ids, exclusion_writer=removed("near_dedup")),
                                     output(None)], tasks, current)]
    return stages


class JsonlShardReader(BaseDiskReader):
    """Read JSONL shards with the standard `json` module (datatrove's JsonlReader needs `orjson`)."""
    name = "JSONL shards"

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "r", encoding="utf-8") as fh:
            for number, line in enumerate(fh):
                with self.track_time():
                    document = self.get_document_from_dict(json.loads(line), filepath, number)
                if document:
                    yield document


class JsonlShardWriter(DiskWriter):
    """Write JSONL shards with the standard `json` module (datatrove's JsonlWriter needs `orjson`):
    datatrove's whole record, or with `text_only` the document's text alone (the output)."""
    name = "JSONL shards"

    def __init__(self, folder: Path, text_only: bool = False):
        super().__init__(str(folder), output_filename="${rank}.jsonl", compression=None, mode="wt")
        self.text_only = text_only

    def _write(self, document: dict, file_handler, _filename: str) -> None:
        record = output_record(document) if self.text_only else document
        file_handler.write(json_line(record))


def output_record(document: dict) -> dict:
    """A kept document as `clean` writes it: its normalized text, the input it came from (file
    and line or row) and, under "metadata", its row's other fields (url, id, ...) as they were."""
    metadata = document.get("metadata") or {}
    record = {"text": document["text"], "input": metadata.get("input")}
    return record | ({"metadata": metadata["fields"]} if metadata.get("fields") else {})


def _reader(folder: Path) -> JsonlShardReader:
    return JsonlShardReader(str(folder), glob_pattern="*.jsonl", add_file_path=False)


def run_stages(stages: list[Stage], logs: Path, workers: int, console: str | None) -> None:
    """Each stage in turn, until one finds no documents left to read (the filters removed them
    all); datatrove's messages reach the terminal from level `console` (None: never)."""
    for i, stage in enumerate(stages):
        if stage.reads is not None and not any(stage.reads.glob("*.jsonl")):
            return
        run_tasks(stage.pipeline, stage.tasks, logs / f"{i:02d}-{stage.name.replace(' ', '-')}",
                  range(stage.tasks), min(workers, stage.tasks), "clean", console)


# ---- the command ---------------------------------------------------------------------------
@dataclass
class StepCount:
    step: str
    docs_in: int = 0
    removed: int = 0
    chars_removed: int = 0
    reasons: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)

    @property
    def kept(self) -> int:
        return self.docs_in - self.removed


@dataclass
class CleanResult:
    out_dir: Path
    documents: int          # non-empty documents after normalization
    kept: int
    steps: list[StepCount]
    seconds: float
    input_bytes: int        # UTF-8 bytes of the normalized documents
    empty: int = 0          # documents left empty by normalization: skipped

    def summary(self) -> str:
        lines = [f"cleaned into {self.out_dir} in {self.seconds:.1f} s "
                 f"({text_rate(self.input_bytes, self.seconds)} of normalized text): "
                 f"kept {self.kept:,} of {self.documents:,} documents"
                 + (f" ({self.empty:,} empty ones skipped)" if self.empty else "")]
        lines += [f"{s.step:>18}: removed {s.removed:,} of {s.docs_in:,} ({s.chars_removed:,} characters)"
                  for s in self.steps]
        if self.kept == 0:
            records = step_records(self.steps)
            lines.append(f"warning: every document was removed, the last of them by {emptied_by(records)}"
                         f"; {loosen(records)}, or check that the inputs are the text you meant (examples: "
                         f"{self.out_dir}/report.md)")
        return "\n".join(lines)


def loosen(steps: list[dict]) -> str:
    """What to do when `steps` (report.json's) removed every document: the step's own advice."""
    if _last_step(steps)["step"] == "script":  # no Bangla letters: loosening would keep what is not Bangla
        return ("check that the text is Unicode Bangla (text typed in a legacy font encoding such as Bijoy/SutonnyMJ "
                "must be converted to Unicode first), or lower --min-bangla-share for text in other scripts")
    return "loosen its thresholds (e.g. --min-stop-words 0 for old-style prose; banglaslm clean --help)"


def _last_step(steps: list[dict]) -> dict:
    return next(s for s in steps if s["removed"] and not s["kept"])


def step_records(steps: list[StepCount]) -> list[dict]:
    """The steps as report.json holds them."""
    return [{**asdict(s), "kept": s.kept} for s in steps]


def _reasons(step: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in step["reasons"].items())


def emptied_by(steps: list[dict]) -> str:
    """'STEP (REASON N, ...)': the step that removed the last documents left (report.json's steps)."""
    last = _last_step(steps)
    return f"{last['step']} ({_reasons(last)})"


@checked_arguments
def clean(
    inputs: list[str], out_dir: str | Path, options: CleanOptions | None = None,
    text_column: Annotated[str | None, Opt(f"the column or field holding the text in tables and datasets "
                                           f"(default '{DEFAULT_TEXT_COLUMN}')")] = None,
    doc_split: Annotated[str, Opt("what one document is in .txt/.md files", DOC_SPLITS)] = "file",
    workers: Annotated[int, Opt("processes datatrove runs at once")] = 1,
    shard_docs: Annotated[int, Opt("documents per shard (one datatrove task each); the result does not "
                                   "depend on `workers`, only on this")] = 20_000,
    examples: Annotated[int, Opt("removed documents shown per step in the report")] = 5,
    keep_removed: Annotated[bool, Opt("also write every removed document, with its step's reason, to "
                                      "removed/STEP.jsonl")] = False,
    verbose: Annotated[bool, Opt("show datatrove's messages and progress bars")] = False,
) -> CleanResult:
    """Clean `inputs` (files, folders, globs, tables or hf:NAME; see `sources`) into `out_dir`:
    JSONL shards of the kept documents plus report.json / report.md. Raises UserError, before
    any work and leaving an earlier output untouched, for bad options or inputs."""
    exit_if_reimported()
    out_dir = as_path(out_dir, "out_dir", "an output folder")
    options = options or CleanOptions()
    options.validate()
    if workers < 1:
        raise bad_param("workers", f"must be at least 1, got {workers}")
    if shard_docs < 1:
        raise bad_param("shard_docs", f"must be at least 1, got {shard_docs}")
    if examples < 0:
        raise bad_param("examples", f"must be 0 or more, got {examples}")
    sources = resolve_inputs(inputs)
    check_apart(inputs, sources, Path(out_dir), "cleaned documents")
    start = time.perf_counter()
    with staged_folder(out_dir, "cleaned folder", replaceable=is_cleaned_folder) as stage:
        work = stage / ".work"
        documents, empty, shards, n_bytes = _write_shards(iter_records(sources, text_column, doc_split),
                                                   work / "normalized", shard_docs)
        run_stages(_stages(options, work, stage, shards), work / "logs", workers, "INFO" if verbose else None)
        steps = _count_steps(work / "removed", documents, options, examples)
        kept = sum(1 for path in stage.glob("*.jsonl") for _ in open(path, encoding="utf-8"))
        assert kept == (steps[-1].kept if steps else documents), (kept, steps)
        if keep_removed:
            _gather_removed(work / "removed", stage / "removed", steps)
        shutil.rmtree(work)
        result = CleanResult(Path(out_dir), documents, kept, steps, time.perf_counter() - start, n_bytes, empty)
        _write_report(stage, result, options, sources, doc_split)
    return result


def _stages(options: CleanOptions, work: Path, out: Path, shards: int) -> list[Stage]:
    removed = lambda step: JsonlShardWriter(work / "removed" / step)  # noqa: E731
    dedup = options.exact_dedup or options.near_dedup
    filtered = work / "filtered" if dedup else out
    first = Stage("filters", [_reader(work / "normalized"), *document_filters(options, removed),
                              JsonlShardWriter(filtered, text_only=not dedup)], shards, work / "normalized")
    output = lambda folder: JsonlShardWriter(folder or out, text_only=folder is None)  # noqa: E731
    return [first, *dedup_stages(options, filtered, work, output, removed, shards)] if dedup else [first]


def _write_shards(documents: Iterator[tuple[str, str, dict]], folder: Path, shard_docs: int) -> tuple[int, int, int, int]:
    """Normalize the documents ((text, where, fields) from `iter_records`) and write the non-empty
    ones as JSONL shards of `shard_docs` documents, where they came from and their row's other
    fields in the metadata; (documents, empty documents skipped, shards, UTF-8 bytes)."""
    folder.mkdir(parents=True)
    n, empty, n_bytes, fh = 0, 0, 0, None
    try:
        for raw, where, fields in documents:
            text = normalize(raw)
            if not text:
                empty += 1
                continue
            if n % shard_docs == 0:
                fh and fh.close()
                fh = open(folder / f"{n // shard_docs:05d}.jsonl", "w", encoding="utf-8")
            record = {"text": text, "id": f"{n:010d}",
                      "metadata": {"shard": n // shard_docs, "input": where, "fields": fields}}
            fh.write(json_line(record))
            n += 1
            n_bytes += len(text.encode("utf-8"))
    finally:
        fh and fh.close()
    if n == 0:
        raise UserError("the inputs hold no text (every document is empty after normalization); check the "
                        "inputs, or `text_column` for tables")
    return n, empty, (n - 1) // shard_docs + 1, n_bytes


def _gather_removed(removed: Path, out: Path, steps: list[StepCount]) -> None:
    """One removed/STEP.jsonl per step: {"id", "input", "reason", "text"} per removed document, by
    id. Each task's file is in id order, so they are merged as they are read (holding them all
    to sort took six times the removed text in memory); a file out of order is sorted whole."""
    out.mkdir()
    for step in steps:
        files = sorted((removed / step.step).glob("*.jsonl"))
        try:
            _write_removed(out / f"{step.step}.jsonl", step.step,
                           heapq.merge(*(_removed_records(p) for p in files), key=lambda r: r["id"]))
        except _OutOfOrder:
            records = [r for p in files for r in _removed_records(p, ordered=False)]
            _write_removed(out / f"{step.step}.jsonl", step.step, sorted(records, key=lambda r: r["id"]))


class _OutOfOrder(Exception):
    pass


def _removed_records(path: Path, ordered: bool = True) -> Iterator[dict]:
    last = ""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if ordered and record["id"] < last:
                raise _OutOfOrder(path)
            last = record["id"]
            yield record


def _write_removed(path: Path, step: str, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            reason = r.get("metadata", {}).get("filter_reason") or step
            row = {"id": r["id"], "input": r.get("metadata", {}).get("input"), "reason": reason, "text": r["text"]}
            fh.write(json_line(row))


# ---- the report ----------------------------------------------------------------------------
def _count_steps(removed: Path, documents: int, options: CleanOptions, examples: int) -> list[StepCount]:
    run = [s for s in FILTER_STEPS] + [s for s, on in zip(DEDUP_STEPS, (options.exact_dedup, options.near_dedup)) if on]
    counts, docs_in = [], documents
    for step in run:
        count = StepCount(step, docs_in)
        first: list[tuple[str, str, str, str]] = []
        reasons: Counter = Counter()
        for path in sorted((removed / step).glob("*.jsonl")):
            for line in open(path, encoding="utf-8"):
                record = json.loads(line)
                count.removed += 1
                count.chars_removed += len(record["text"])
                reason = record.get("metadata", {}).get("filter_reason")
                reasons[reason or step] += 1
                item = (record["id"], reason or step, record["text"][:EXAMPLE_CHARS],
                        record.get("metadata", {}).get("input"))
                heapq.heappush(first, _Rev(item)) if len(first) < examples else heapq.heappushpop(first, _Rev(item))
        count.reasons = dict(reasons.most_common())
        count.examples = [{"id": r.item[0], "input": r.item[3], "reason": r.item[1], "text": r.item[2]}
                          for r in sorted(first, reverse=True)]
        counts.append(count)
        docs_in = count.kept
    return counts


@dataclass(order=False)
class _Rev:
    """Reverse order on (id, ...), so a min-heap of these holds the smallest ids."""
    item: tuple

    def __lt__(self, other: "_Rev") -> bool:
        return self.item[0] > other.item[0]


def _write_report(folder: Path, result: CleanResult, options: CleanOptions, sources, doc_split: str) -> None:
    report = {"format": CLEANED_FORMAT, "documents": result.documents, "empty_documents": result.empty,
              "kept": result.kept,
              "seconds": round(result.seconds, 3), "input_bytes": result.input_bytes, "doc_split": doc_split,
              "sources": [s.location for s in sources],
              "options": asdict(options), "stop_words": stop_words(),
              "steps": step_records(result.steps)}
    atomic_write_text(folder / "report.md", _markdown(report))
    atomic_write_json(folder / "report.json", report)


def _markdown(report: dict) -> str:
    lines = [f"# Cleaning report\n\nKept {report['kept']:,} of {report['documents']:,} documents "
             f"(non-empty after normalization; {report['empty_documents']:,} empty skipped) in "
             f"{report['seconds']:.1f} s.\n",
             "| step | documents in | removed | kept | characters removed | reasons |", "|---|---|---|---|---|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {s['docs_in']:,} | {s['removed']:,} | {s['kept']:,} | "
                     f"{s['chars_removed']:,} | {_reasons(s)} |")
    for s in report["steps"]:
        if s["examples"]:
            lines.append(f"\n## {s['step']}: examples of what was removed\n")
            for ex in s["examples"]:
                text = " ".join(ex["text"].split())
                lines.append(f"- `{ex['id']}` from {ex['input']} ({ex['reason']}): {text}")
    lines.append("\n## Options\n")
    lines += [f"- {f.name}: {report['options'][f.name]}" for f in fields(CleanOptions)]
    return "\n".join(lines) + "\n"
